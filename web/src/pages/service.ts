/**
 * @module The service view: workers and the models they hold, each base model's queues and loaded
 * adapters (the key's own named), and trained tokens per second over the last minutes.
 */
import { compact, guarded, h, show } from '../dom.js';
import type { Session } from '../session.js';

const POLL_MS = 3000;

/** Workers describe devices as `{type, name, memory_bytes}` objects; anything else is shown as JSON. */
function deviceNames(devices: unknown): string {
  if (!Array.isArray(devices)) return JSON.stringify(devices);
  return devices
    .map((d: { name?: unknown; memory_bytes?: unknown }) => (typeof d?.memory_bytes === 'number' ? `${String(d.name)} (${compact(d.memory_bytes)}B)` : String(d?.name ?? JSON.stringify(d))))
    .join(', ');
}

/** Renders the service view into `root`; returns a function that stops its polling. */
export function servicePage(root: Element, session: Session): () => void {
  const status = h('p', { class: 'status' });
  const content = h('div');
  show(root, h('h2', {}, 'Service'), status, content);
  const refresh = () =>
    guarded(status, async () => {
      const s = await session.lathe.serviceStatus();
      // A worker holds one base model, and with it that model's adapters.
      const adapters = new Map(s.models.map((m) => [m.modelName, m.adapters]));
      show(
        content,
        h('p', { class: 'throughput' }, `Training throughput: ${s.throughput.tokensPerSecond.toFixed(2)} tokens/s over the last ${s.throughput.windowSeconds / 60} min`),
        h('p', { class: 'per-minute' }, 'Per minute, oldest first: ', ...s.throughput.perMinute.map((b) => h('span', { title: new Date(b.start).toLocaleTimeString() }, `${b.tokensPerSecond.toFixed(1)} `)), 'tokens/s'),
        h('h3', {}, 'Workers'),
        h(
          'table',
          { class: 'workers' },
          h('thead', {}, h('tr', {}, ...['Worker', 'Kind', 'Address', 'Devices', 'Models loaded', 'Adapters'].map((c) => h('th', {}, c)))),
          h('tbody', {}, ...s.workers.map((w) => h('tr', {}, h('td', {}, w.id), h('td', {}, w.kind), h('td', {}, w.address ?? (w.pid !== null ? `pid ${w.pid}` : '')), h('td', {}, deviceNames(w.devices)), h('td', {}, w.modelsLoaded.join(', ')), h('td', {}, w.modelsLoaded.reduce((n, m) => n + (adapters.get(m) ?? 0), 0))))),
        ),
        h('h3', {}, 'Models'),
        h(
          'table',
          { class: 'models' },
          h('thead', {}, h('tr', {}, ...['Base model', 'Queued training', 'Queued sampling', 'Adapters loaded', 'Yours'].map((c) => h('th', {}, c)))),
          h('tbody', {}, ...s.models.map((m) => h('tr', { 'data-model': m.modelName }, h('td', {}, m.modelName), h('td', {}, m.queue.training), h('td', {}, m.queue.sampling), h('td', {}, compact(m.adapters)), h('td', {}, m.yourAdapters.join(', '))))),
        ),
      );
    });
  void refresh();
  const timer = setInterval(() => void refresh(), POLL_MS);
  return () => clearInterval(timer);
}
