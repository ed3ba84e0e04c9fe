/**
 * @module The runs list and a run's page with live curves: the server's loss per forward_backward
 * and learning rate / gradient norm per optim_step, plus every metric the client reported (the
 * cookbook's metrics.jsonl rows: NLL, reward, KL, …). Both pages poll.
 */
import type { MetricPoint } from '@lathe/sdk';
import { LiveChart } from '../chart.js';
import { ago, compact, guarded, h, show } from '../dom.js';
import type { Session } from '../session.js';

const POLL_MS = 2000;
/** Reported metrics not worth a curve. */
const SKIPPED_PREFIXES = ['progress/', 'time/'];

/** Renders the runs list into `root`; returns a function that stops its polling. */
export function runsPage(root: Element, session: Session): () => void {
  const status = h('p', { class: 'status' });
  const body = h('tbody');
  show(root, h('h2', {}, 'Runs'), status, h('table', { class: 'runs' }, h('thead', {}, h('tr', {}, ...['Run', 'Base model', 'Rank', 'Steps', 'Tokens trained', 'Last activity', 'Status'].map((c) => h('th', {}, c)))), body));
  const refresh = () =>
    guarded(status, async () => {
      const { runs } = await session.lathe.listRuns();
      if (runs.length === 0) status.textContent = 'No runs yet: train one with the SDK, the cookbook or `lathe train sft`.';
      show(
        body,
        ...runs.map((run) =>
          h(
            'tr',
            { 'data-run': run.modelId },
            h('td', {}, h('a', { href: `#/runs/${encodeURIComponent(run.modelId)}` }, run.modelId)),
            h('td', {}, run.baseModel),
            h('td', {}, run.loraRank),
            h('td', {}, run.steps),
            h('td', {}, compact(run.tokensTrained)),
            h('td', { title: new Date(run.lastActivity).toISOString() }, ago(run.lastActivity)),
            h('td', { class: `status-${run.status}` }, run.status),
          ),
        ),
      );
    });
  void refresh();
  const timer = setInterval(() => void refresh(), POLL_MS);
  return () => clearInterval(timer);
}

/** Renders one run's live curves into `root`; returns a function that stops its polling. */
export function runPage(root: Element, session: Session, modelId: string): () => void {
  const status = h('p', { class: 'status' });
  const summary = h('p', { class: 'summary' });
  const charts = h('div', { class: 'charts' });
  show(root, h('h2', {}, h('a', { href: '#/runs' }, 'Runs'), ' / ', modelId), summary, status, charts);
  const byName = new Map<string, LiveChart>();
  const chart = (title: string, series: string[]): LiveChart => {
    let found = byName.get(title);
    if (!found) byName.set(title, (found = new LiveChart(charts, title, series)));
    return found;
  };
  // The server's curves first, whatever arrives first.
  chart('loss (server)', ['loss:sum']);
  chart('learning rate (server)', ['learning_rate:mean']);
  let cursor = 0;
  let stopped = false;
  const counts = { forward_backward: 0, optim_step: 0, client: 0 };

  const place = (point: MetricPoint): void => {
    counts[point.kind] += 1;
    if (point.kind === 'forward_backward') {
      chart('loss (server)', ['loss:sum']).add(point.step, point.values);
    } else if (point.kind === 'optim_step') {
      chart('learning rate (server)', ['learning_rate:mean']).add(point.step, point.values);
      if (point.values['grad_norm:mean'] !== undefined) chart('grad norm (server)', ['grad_norm:mean']).add(point.step, point.values);
    } else {
      for (const [name, value] of Object.entries(point.values)) {
        if (SKIPPED_PREFIXES.some((p) => name.startsWith(p))) continue;
        chart(name, [name]).add(point.step, { [name]: value });
      }
    }
  };

  const poll = async (): Promise<void> => {
    await guarded(status, async () => {
      // Drain: a long run arrives over several pages.
      for (;;) {
        const page = await session.lathe.runMetrics(modelId, { after: cursor });
        page.points.forEach(place);
        cursor = page.cursor;
        if (page.points.length === 0) break;
      }
      for (const c of byName.values()) c.draw();
      summary.textContent = `${counts.forward_backward} forward_backward, ${counts.optim_step} optim steps, ${counts.client} reported rows`;
      if (cursor === 0) status.textContent = 'No points yet: they appear as the run trains.';
    });
    if (!stopped) timer = setTimeout(() => void poll(), POLL_MS);
  };
  let timer = setTimeout(() => void poll(), 0);
  return () => {
    stopped = true;
    clearTimeout(timer);
    for (const c of byName.values()) c.destroy();
  };
}
