/**
 * @module A live line chart over uPlot: points are appended as polling brings them, and the chart
 * is redrawn with the whole series. The element carries `data-points` (points drawn so far), which
 * the browser test reads.
 */
import uPlot from 'uplot';
import { h } from './dom.js';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c'];

/**
 * One chart: x = step, one or more named series.
 *
 * @example
 * const chart = new LiveChart(container, 'loss', ['loss:sum']);
 * chart.add(0, { 'loss:sum': 12.5 });
 */
export class LiveChart {
  readonly element: HTMLElement;
  readonly #plot: uPlot;
  readonly #series: string[];
  /** step → value per series; a step seen again replaces its value. */
  readonly #values = new Map<number, (number | null)[]>();

  constructor(parent: Element, readonly title: string, series: string[]) {
    this.#series = series;
    this.element = h('div', { class: 'chart', 'data-chart': title, 'data-points': 0 });
    parent.append(this.element);
    const width = Math.max(320, Math.min(560, (parent as HTMLElement).clientWidth - 16));
    this.#plot = new uPlot(
      {
        title,
        width,
        height: 220,
        // Steps, not times (uPlot's default x axis is a time axis).
        scales: { x: { time: false } },
        series: [{ label: 'step' }, ...series.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length]!, width: 1.5, points: { show: false } }))],
        axes: [{ label: 'step' }, {}],
      },
      [[], ...series.map(() => [])],
      this.element,
    );
  }

  /** Adds (or replaces) the values at `step`; names not in the chart are ignored. */
  add(step: number, values: Record<string, number>): void {
    const row = this.#values.get(step) ?? this.#series.map(() => null);
    this.#series.forEach((name, i) => {
      if (values[name] !== undefined) row[i] = values[name]!;
    });
    this.#values.set(step, row);
  }

  /** Redraws with everything added so far. */
  draw(): void {
    const steps = [...this.#values.keys()].sort((a, b) => a - b);
    const data: uPlot.AlignedData = [steps, ...this.#series.map((_, i) => steps.map((s) => this.#values.get(s)![i] ?? null))];
    this.#plot.setData(data);
    this.element.dataset['points'] = String(steps.length);
  }

  destroy(): void {
    this.#plot.destroy();
    this.element.remove();
  }
}
