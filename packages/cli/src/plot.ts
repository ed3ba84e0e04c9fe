/**
 * @module Terminal line plots of training curves (loss, reward): a pure function from a series to
 * lines of text, drawn with box-drawing characters, so the CLI prints it and tests read it.
 */

/** Options of {@link linePlot}. */
export interface PlotOptions {
  /** Columns of the plotting area (default 60); a longer series is sampled, a shorter one stretched. */
  width?: number;
  /** Rows of the plotting area (default 10). */
  height?: number;
  /** A heading printed above the plot. */
  title?: string;
  /** The x value of the series' first point (default 0, e.g. the first step). */
  xStart?: number;
  /** The x axis' name, printed after its last label (default `step`). */
  xLabel?: string;
}

/**
 * Draws `values` (one per x step) as a line: the y axis is labelled with the maximum at the top row
 * and the minimum at the bottom row, the x axis with the first and last x. Non-finite values (NaN,
 * ±Infinity: a metric missing at a step) are left out, the line bridges them, and the title says how
 * many were skipped. A constant series is a flat line on the middle row, labelled once; a series
 * with one finite value is a single `●`; one with none prints `(no data)`.
 *
 * @example
 * linePlot([2.3, 1.1, 0.6, 0.5], { width: 8, height: 3, title: 'loss' }).join('\n');
 * // loss
 * // 2.3 ┤─╮
 * //     │ ╰──╮
 * // 0.5 ┤    ╰───
 * //     └────────
 * //      0      3 step
 */
export function linePlot(values: readonly number[], options: PlotOptions = {}): string[] {
  const width = options.width ?? 60;
  const height = options.height ?? 10;
  for (const [name, value] of Object.entries({ width, height })) {
    if (!Number.isInteger(value) || value < 2) throw new RangeError(`${name} must be an integer >= 2, got ${value}`);
  }
  const points = values.flatMap((y, x) => (Number.isFinite(y) ? [{ x, y }] : []));
  const skipped = values.length - points.length;
  const heading = options.title === undefined && skipped === 0 ? [] : [[options.title, skipped > 0 ? `(${skipped} non-finite value${skipped === 1 ? '' : 's'} skipped)` : undefined].filter((s) => s !== undefined).join(' ')];
  if (points.length === 0) return [...heading, '(no data)'];

  const ys = points.map((p) => p.y);
  const [min, max] = [Math.min(...ys), Math.max(...ys)];
  const rowOf = (y: number): number => (max === min ? Math.floor((height - 1) / 2) : Math.round(((max - y) / (max - min)) * (height - 1)));
  const columnRows = sampleColumns(points, values.length, width).map((y) => (y === undefined ? undefined : rowOf(y)));
  const grid = drawLine(columnRows, width, height);

  const [maxLabel, minLabel] = axisLabels(min, max);
  const labels = new Map<number, string>([[rowOf(max), maxLabel], [rowOf(min), minLabel]]);
  const labelWidth = Math.max(maxLabel.length, minLabel.length);
  const rows = grid.map((cells, row) => {
    const label = labels.get(row);
    return `${(label ?? '').padStart(labelWidth)} ${label === undefined ? '│' : '┤'}${cells.join('')}`;
  });
  const indent = ' '.repeat(labelWidth + 2);
  const [first, last] = [String(options.xStart ?? 0), String((options.xStart ?? 0) + values.length - 1)];
  const xLabels = `${first}${' '.repeat(Math.max(1, width - first.length - last.length))}${last} ${options.xLabel ?? 'step'}`;
  return [...heading, ...rows, `${' '.repeat(labelWidth)} └${'─'.repeat(width)}`, `${indent}${xLabels}`];
}

/**
 * The series' value at each plot column (linear between the finite points around it), or undefined
 * left of the first and right of the last finite point.
 */
function sampleColumns(points: readonly { x: number; y: number }[], length: number, width: number): (number | undefined)[] {
  const columns: (number | undefined)[] = Array.from({ length: width }, () => undefined);
  if (length === 1) {
    columns[0] = points[0]!.y;
    return columns;
  }
  const scale = (width - 1) / (length - 1);
  const [firstColumn, lastColumn] = [Math.round(points[0]!.x * scale), Math.round(points.at(-1)!.x * scale)];
  let right = 0;
  for (let column = firstColumn; column <= lastColumn; column++) {
    const x = column / scale;
    while (right < points.length - 1 && points[right]!.x < x) right++;
    const after = points[right]!;
    const before = points[Math.max(0, right - 1)]!;
    columns[column] = after.x === before.x || x >= after.x ? after.y : before.y + ((after.y - before.y) * (x - before.x)) / (after.x - before.x);
  }
  return columns;
}

/** A grid of cells with the line through each column's row; a lone column gets a `●`. */
function drawLine(columnRows: readonly (number | undefined)[], width: number, height: number): string[][] {
  const grid = Array.from({ length: height }, () => Array.from({ length: width }, () => ' '));
  const drawn = columnRows.filter((r) => r !== undefined).length;
  let previous: number | undefined;
  columnRows.forEach((row, column) => {
    if (row === undefined) return;
    if (previous === undefined || row === previous) {
      grid[row]![column] = drawn === 1 ? '●' : '─';
    } else {
      // A step between rows: a corner leaving the previous row, a vertical run, a corner arriving.
      const up = row < previous;
      grid[previous]![column] = up ? '╯' : '╮';
      grid[row]![column] = up ? '╭' : '╰';
      for (let r = Math.min(row, previous) + 1; r < Math.max(row, previous); r++) grid[r]![column] = '│';
    }
    previous = row;
  });
  return grid;
}

/** Labels of the minimum and maximum with the fewest significant digits (at least 4) that tell them apart. */
function axisLabels(min: number, max: number): [string, string] {
  const format = (value: number, digits: number): string => String(Number(value.toPrecision(digits)));
  let digits = 4;
  while (digits < 12 && min !== max && format(min, digits) === format(max, digits)) digits++;
  return [format(max, digits), format(min, digits)];
}
