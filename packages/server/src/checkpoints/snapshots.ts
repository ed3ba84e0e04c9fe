/**
 * @module A run's snapshot on disk: its adapter and optimizer state as of one `seq_id`, the point
 * recovery starts from. Each run keeps one, under `<dataDir>/snapshots/<model_id>/seq-<seq>`, and
 * `latest.json` names it; the pointer is replaced atomically, so a crash while a snapshot is written
 * leaves the previous one in force.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** A run's latest snapshot: taken after request `seq`, in folder `path`. */
export interface Snapshot {
  seq: number;
  path: string;
}

/**
 * The snapshot folders of a data directory.
 *
 * @example
 * const snapshots = new SnapshotFiles('.lathe');
 * await snapshots.replace('S:train:0', 41, (dir) => client.request('snapshot', { adapter: 'S:train:0', path: dir }));
 * snapshots.latest('S:train:0'); // { seq: 41, path: '.lathe/snapshots/S%3Atrain%3A0/seq-41' }
 */
export class SnapshotFiles {
  constructor(private readonly dataDir: string) {}

  /** The run's current snapshot, if it has one. */
  latest(modelId: string): Snapshot | undefined {
    const file = path.join(this.dir(modelId), 'latest.json');
    return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Snapshot) : undefined;
  }

  /**
   * Makes the state as of `seq` the run's snapshot: `write` fills a new folder (the worker does),
   * then the pointer moves to it and the previous folder is deleted.
   */
  async replace(modelId: string, seq: number, write: (folder: string) => Promise<unknown>): Promise<void> {
    const dir = this.dir(modelId);
    mkdirSync(dir, { recursive: true });
    const previous = this.latest(modelId);
    const target = path.join(dir, `seq-${seq}`);
    await write(target);
    writeFileSync(path.join(dir, 'latest.json.tmp'), JSON.stringify({ seq, path: target } satisfies Snapshot));
    renameSync(path.join(dir, 'latest.json.tmp'), path.join(dir, 'latest.json'));
    if (previous && previous.path !== target) rmSync(previous.path, { recursive: true, force: true });
  }

  private dir(modelId: string): string {
    return path.join(this.dataDir, 'snapshots', encodeURIComponent(modelId));
  }
}

/** Bytes of the files directly in a folder (a checkpoint is one flat folder). */
export function folderBytes(dir: string): number {
  return readdirSync(dir, { withFileTypes: true }).reduce((sum, entry) => sum + (entry.isFile() ? statSync(path.join(dir, entry.name)).size : 0), 0);
}
