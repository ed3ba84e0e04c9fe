/**
 * @module One local worker process per base model, started on first use and restarted after a
 * crash. Callers get a live client or an error; they never see a half-dead process.
 */
import { startLocalWorker, type LocalWorker } from './process.js';
import type { WorkerClient } from './client.js';

/** Options for {@link WorkerPool}. */
export interface WorkerPoolOptions {
  modelsDir: string;
  /** Extra environment for worker processes. */
  env?: NodeJS.ProcessEnv;
  /** Extra command-line flags for worker processes (e.g. `--max-resident-adapters 8`). */
  workerArgs?: string[];
  /** What a worker loads for a base model (a folder for an alias); default the name itself. */
  source?: (baseModel: string) => string;
  /** Called when a worker exits without being asked to (its in-memory adapters are gone). */
  onCrash?: (baseModel: string, code: number | null) => void;
}

/**
 * @example
 * const pool = new WorkerPool({ modelsDir: '.lathe/models' });
 * const client = await pool.client('lathe/tiny-qwen3');
 */
export class WorkerPool {
  private readonly workers = new Map<string, Promise<LocalWorker>>();
  private stopping = false;

  constructor(private readonly options: WorkerPoolOptions) {}

  /** The worker for `baseModel`, starting it (and loading the model) if needed. */
  async client(baseModel: string): Promise<WorkerClient> {
    return (await this.worker(baseModel)).client;
  }

  /** True when a live worker holds `baseModel`. */
  has(baseModel: string): boolean {
    return this.workers.has(baseModel);
  }

  private async worker(baseModel: string): Promise<LocalWorker> {
    // A closed pool starts nothing: a process spawned now would outlive the server.
    if (this.stopping) throw new Error(`the worker pool is closed; not starting a worker for ${baseModel}`);
    const current = this.workers.get(baseModel);
    const live = current && (await current.catch(() => undefined));
    // The socket can close before the process's exit event arrives: that worker is already dead, and
    // handing out its client would burn the caller's retries in a few milliseconds.
    if (current && live?.client.closed) this.retire(baseModel, current, null);
    let pending = this.workers.get(baseModel);
    if (!pending) {
      if (this.stopping) throw new Error(`the worker pool is closed; not starting a worker for ${baseModel}`);
      const started = startLocalWorker({ modelsDir: this.options.modelsDir, model: this.options.source?.(baseModel) ?? baseModel, ...(this.options.env ? { env: this.options.env } : {}), ...(this.options.workerArgs ? { args: this.options.workerArgs } : {}) });
      pending = started;
      this.workers.set(baseModel, started);
      started.then(
        (worker) => worker.child.once('exit', (code) => this.retire(baseModel, started, code)),
        () => {
          if (this.workers.get(baseModel) === started) this.workers.delete(baseModel);
        },
      );
    }
    return pending;
  }

  /**
   * Forgets a dead worker once, whichever sign of its death comes first (a closed connection or the
   * process's exit), kills what is left of it, and reports the crash so its adapters get rebuilt.
   */
  private retire(baseModel: string, pending: Promise<LocalWorker>, code: number | null): void {
    if (this.workers.get(baseModel) !== pending) return;
    this.workers.delete(baseModel);
    void pending.then((worker) => {
      if (worker.child.exitCode === null) worker.child.kill('SIGKILL');
    });
    if (!this.stopping) this.options.onCrash?.(baseModel, code);
  }

  /** Process ids of live workers, by base model (for stats and crash tests). */
  async pids(): Promise<Record<string, number | undefined>> {
    const out: Record<string, number | undefined> = {};
    for (const [model, pending] of this.workers) out[model] = (await pending.catch(() => undefined))?.child.pid;
    return out;
  }

  /** Stops every worker; afterwards the pool refuses to start new ones. */
  async close(): Promise<void> {
    this.stopping = true;
    const all = [...this.workers.values()];
    this.workers.clear();
    await Promise.all(all.map(async (pending) => (await pending.catch(() => undefined))?.stop()));
  }
}
