/**
 * @module The key's checkpoints: download as a PEFT adapter archive (a signed link the browser
 * downloads), delete, set a TTL, publish / unpublish.
 */
import type { Checkpoint } from '@lathe/sdk';
import { compact, guarded, h, show } from '../dom.js';
import type { Session } from '../session.js';

/** `tinker://RUN/KIND/NAME` → the run id and `KIND/NAME`. */
function splitPath(tinkerPath: string): { runId: string; checkpointId: string } {
  const [runId = '', ...rest] = tinkerPath.replace(/^tinker:\/\//, '').split('/');
  return { runId, checkpointId: rest.join('/') };
}

/** Renders the checkpoints page into `root`. */
export function checkpointsPage(root: Element, session: Session): () => void {
  const status = h('p', { class: 'status' });
  const body = h('tbody');
  show(root, h('h2', {}, 'Checkpoints'), status, h('table', { class: 'checkpoints' }, h('thead', {}, h('tr', {}, ...['Path', 'Type', 'Size', 'Created', 'Expires', 'Public', ''].map((c) => h('th', {}, c)))), body));

  const row = (c: Checkpoint): HTMLTableRowElement => {
    const ttl = h('input', { type: 'number', min: 1, placeholder: 'TTL seconds', class: 'ttl' });
    const act = (action: () => Promise<void>) => () => void guarded(status, async () => {
      await action();
      await refresh();
    });
    const download = () =>
      void guarded(status, async () => {
        const { runId, checkpointId } = splitPath(c.tinkerPath);
        const { url } = await session.rest.getCheckpointArchiveUrl(runId, checkpointId);
        // The link is signed: the browser fetches it without the key, as a download.
        h('a', { href: url, download: `${checkpointId.replace('/', '-')}.tar` }).click();
      });
    return h(
      'tr',
      { 'data-checkpoint': c.tinkerPath },
      h('td', {}, h('code', {}, c.tinkerPath)),
      h('td', {}, c.checkpointType),
      h('td', {}, c.sizeBytes === undefined ? '' : `${compact(c.sizeBytes)}B`),
      h('td', {}, new Date(c.time).toLocaleString()),
      h('td', {}, c.expiresAt ? new Date(c.expiresAt).toLocaleString() : 'never'),
      h('td', {}, c.public ? 'yes' : 'no'),
      h(
        'td',
        { class: 'actions' },
        h('button', { onclick: download, class: 'download' }, 'Download'),
        c.public
          ? h('button', { onclick: act(() => session.rest.unpublishCheckpointFromTinkerPath(c.tinkerPath)) }, 'Unpublish')
          : h('button', { onclick: act(() => session.rest.publishCheckpointFromTinkerPath(c.tinkerPath)) }, 'Publish'),
        ttl,
        h('button', { onclick: act(() => session.rest.setCheckpointTtlFromTinkerPath(c.tinkerPath, ttl.value === '' ? null : Number(ttl.value))) }, 'Set TTL'),
        h('button', { class: 'danger', onclick: act(async () => (confirm(`Delete ${c.tinkerPath}?`) ? session.rest.deleteCheckpointFromTinkerPath(c.tinkerPath) : undefined)) }, 'Delete'),
      ),
    );
  };

  const refresh = async (): Promise<void> => {
    const { checkpoints } = await session.rest.listUserCheckpoints({ limit: 1000 });
    if (checkpoints.length === 0) status.textContent = 'No checkpoints yet.';
    show(body, ...checkpoints.map(row));
  };
  void guarded(status, refresh);
  return () => {};
}
