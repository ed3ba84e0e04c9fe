/**
 * @module The workers of a server: one per base model in use. A base model goes to a connected
 * remote worker that announced it (see remote.ts) when one is free, else to a local worker process
 * started for it (unless local workers are turned off). A worker that dies (a local process exits,
 * a remote connection closes) is retired and reported, so its runs get rebuilt on the next one.
 * Callers get a live client or an error; they never see a half-dead worker.
 */
import { WorkerConnectionError, type WorkerClient } from './client.js';
import { startLocalWorker } from './process.js';
import type { RemoteRegistration, WorkerDevice } from './remote.js';

/** Options for {@link WorkerPool}. */
export interface WorkerPoolOptions {
  modelsDir: string;
  /** Extra environment for worker processes. */
  env?: NodeJS.ProcessEnv;
  /** Extra command-line flags for worker processes (e.g. `--max-resident-adapters 8`). */
  workerArgs?: string[];
  /** What a worker loads for a base model (a folder for an alias); default the name itself. */
  source?: (baseModel: string) => string;
  /** Start local worker processes for models no remote worker serves; default true. */
  localWorkers?: boolean;
  /**
   * Without local workers: how long a request waits for a remote worker that can load its model
   * to connect before it fails (ms); default 60 000.
   */
  remoteWaitMs?: number;
}

/** No worker can serve a base model now (local workers are off and no remote one announced it). */
export class WorkerUnavailableError extends WorkerConnectionError {
  override name = 'WorkerUnavailableError';
}

/** Told when a worker dies without being asked to (its in-memory adapters are gone); `code` is null for a closed connection. */
export type CrashListener = (baseModel: string, code: number | null) => void;

/** One worker as {@link WorkerPool.workers} lists it. */
export interface WorkerInfo {
  id: string;
  kind: 'local' | 'remote';
  /** `unix:<path>` for a local worker, the peer's `host:port` for a remote one. */
  address: string;
  pid: number | undefined;
  devices: WorkerDevice[];
  /** The base models it holds now (at most one). */
  models_loaded: string[];
  /** The models a remote worker announced it can load. */
  models_available?: string[];
}

/** A worker the pool can place a base model on. */
interface PooledWorker {
  id: string;
  kind: 'local' | 'remote';
  client: WorkerClient;
  address: string;
  pid: number | undefined;
  devices: WorkerDevice[];
  /** What `load_model` names a remote worker can load (announced), and what its engine holds. */
  available: Set<string>;
  engineModel: string | null;
  /** The base model it serves for this pool, once placed. */
  baseModel: string | null;
  /** Resolves with the exit code (null for a closed connection) once the worker is gone. */
  gone: Promise<number | null>;
  /** Asks a local worker to shut down; closes a remote worker's connection (it may reconnect). */
  stop(): Promise<void>;
  /** Makes sure a dead worker's remains are gone (kills a local process). */
  kill(): void;
}

/**
 * @example
 * const pool = new WorkerPool({ modelsDir: '.lathe/models' });
 * pool.onCrash((baseModel) => rebuildRunsOf(baseModel));
 * const client = await pool.client('lathe/tiny-qwen3');
 * // with a worker port: listener's onWorker → pool.attach(registration)
 */
export class WorkerPool {
  /** The worker serving each base model (being placed, or placed). */
  private readonly workers = new Map<string, Promise<PooledWorker>>();
  /** Connected remote workers, placed or free. */
  private readonly remotes = new Map<string, PooledWorker>();
  private readonly waiters = new Set<() => void>();
  private readonly crashListeners: CrashListener[] = [];
  private nextLocalId = 1;
  private stopping = false;

  constructor(private readonly options: WorkerPoolOptions) {}

  /** Calls `listener` whenever a worker dies without being asked to (not while the pool closes). */
  onCrash(listener: CrashListener): void {
    this.crashListeners.push(listener);
  }

  /** The worker for `baseModel`, placing it (and loading the model) if needed. */
  async client(baseModel: string): Promise<WorkerClient> {
    return (await this.worker(baseModel)).client;
  }

  /** True when a live worker holds `baseModel`. */
  has(baseModel: string): boolean {
    return this.workers.has(baseModel);
  }

  /**
   * Why no worker can serve `baseModel`, or undefined when one can (a local one can be started, a
   * worker holds it, or a connected remote worker announced it).
   */
  unavailable(baseModel: string): string | undefined {
    if (this.options.localWorkers !== false || this.workers.has(baseModel)) return undefined;
    const source = this.source(baseModel);
    if ([...this.remotes.values()].some((w) => w.baseModel === null && canLoad(w, source))) return undefined;
    return `no worker can serve ${baseModel} now: this server starts no local workers (--no-local-workers) and no connected remote worker has announced that model; start one with \`lathe worker --connect HOST:PORT\``;
  }

  /** Adds a remote worker that registered; it waits, free, until a base model it announced is needed. */
  attach(registration: RemoteRegistration): void {
    const { client } = registration;
    if (this.stopping) {
      client.destroy();
      return;
    }
    const worker: PooledWorker = {
      id: registration.id,
      kind: 'remote',
      client,
      address: registration.address,
      pid: registration.pid,
      devices: registration.devices,
      available: new Set(registration.models.map((m) => m.model_name)),
      engineModel: registration.loaded,
      baseModel: null,
      gone: new Promise((resolve) => client.onClose(() => resolve(null))),
      async stop() {
        // Not a graceful end: a stalled worker must not hold up the server's stop (the calls in flight
        // are finished by then), and the worker reconnects either way.
        client.destroy();
      },
      kill() {
        client.destroy();
      },
    };
    this.remotes.set(worker.id, worker);
    void worker.gone.then(() => this.remotes.delete(worker.id));
    for (const wake of [...this.waiters]) wake();
  }

  private source(baseModel: string): string {
    return this.options.source?.(baseModel) ?? baseModel;
  }

  private async worker(baseModel: string): Promise<PooledWorker> {
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
      const placed = this.place(baseModel);
      pending = placed;
      this.workers.set(baseModel, placed);
      placed.then(
        (worker) => worker.gone.then((code) => this.retire(baseModel, placed, code)),
        () => {
          if (this.workers.get(baseModel) === placed) this.workers.delete(baseModel);
        },
      );
    }
    return pending;
  }

  /** A free remote worker that announced the model (one already holding it first), else a local one. */
  private async place(baseModel: string): Promise<PooledWorker> {
    const source = this.source(baseModel);
    const deadline = Date.now() + (this.options.remoteWaitMs ?? 60_000);
    for (;;) {
      const candidates = [...this.remotes.values()].filter((w) => w.baseModel === null && !w.client.closed && canLoad(w, source));
      const remote = candidates.find((w) => w.engineModel === source) ?? candidates[0];
      if (remote) {
        remote.baseModel = baseModel; // taken before the await: no other model is placed on it meanwhile
        try {
          await remote.client.request('load_model', { model: source });
          remote.engineModel = source;
          return remote;
        } catch (error) {
          remote.baseModel = null;
          // A worker that cannot load what it announced is not offered this model again.
          if (!(error instanceof WorkerConnectionError)) remote.available.delete(source);
          continue;
        }
      }
      if (this.options.localWorkers !== false) return this.startLocal(baseModel, source);
      if (this.stopping) throw new Error(`the worker pool is closed; not placing ${baseModel}`);
      if (!(await this.registration(deadline))) {
        throw new WorkerUnavailableError(`${this.unavailable(baseModel) ?? `no worker could load ${baseModel}`} (waited ${this.options.remoteWaitMs ?? 60_000} ms)`);
      }
    }
  }

  /** Waits for the next remote worker to register; false once `deadline` passes. */
  private registration(deadline: number): Promise<boolean> {
    return new Promise((resolve) => {
      const wake = (registered: boolean): void => {
        clearTimeout(timer);
        this.waiters.delete(onRegister);
        resolve(registered);
      };
      const onRegister = (): void => wake(true);
      const timer = setTimeout(() => wake(false), Math.max(0, deadline - Date.now()));
      this.waiters.add(onRegister);
    });
  }

  private async startLocal(baseModel: string, source: string): Promise<PooledWorker> {
    const local = await startLocalWorker({ modelsDir: this.options.modelsDir, model: source, ...(this.options.env ? { env: this.options.env } : {}), ...(this.options.workerArgs ? { args: this.options.workerArgs } : {}) });
    const hello = await local.client.request<{ devices?: WorkerDevice[] }>('hello').catch(() => ({ devices: [] as WorkerDevice[] }));
    return {
      id: `local-${this.nextLocalId++}`,
      kind: 'local',
      client: local.client,
      address: `unix:${local.socketPath}`,
      pid: local.child.pid,
      devices: hello.devices ?? [],
      available: new Set([source]),
      engineModel: source,
      baseModel,
      gone: new Promise((resolve) => {
        if (local.child.exitCode !== null) resolve(local.child.exitCode);
        else local.child.once('exit', (code) => resolve(code));
      }),
      stop: () => local.stop(),
      kill() {
        if (local.child.exitCode === null) local.child.kill('SIGKILL');
      },
    };
  }

  /**
   * Forgets a dead worker once, whichever sign of its death comes first (a closed connection or the
   * process's exit), kills what is left of it, and reports the crash so its adapters get rebuilt.
   */
  private retire(baseModel: string, pending: Promise<PooledWorker>, code: number | null): void {
    if (this.workers.get(baseModel) !== pending) return;
    this.workers.delete(baseModel);
    void pending.then((worker) => {
      worker.kill();
      this.remotes.delete(worker.id);
    });
    if (!this.stopping) for (const listener of this.crashListeners) listener(baseModel, code);
  }

  /** Process ids of live workers, by base model (for stats and crash tests). */
  async pids(): Promise<Record<string, number | undefined>> {
    const out: Record<string, number | undefined> = {};
    for (const [model, pending] of this.workers) out[model] = (await pending.catch(() => undefined))?.pid;
    return out;
  }

  /** Every live worker: those placed on a base model, then free remote ones. */
  async workersInfo(): Promise<WorkerInfo[]> {
    const placed = (await Promise.all([...this.workers.values()].map((p) => p.catch(() => undefined)))).filter((w): w is PooledWorker => w !== undefined);
    const free = [...this.remotes.values()].filter((w) => !placed.includes(w));
    return [...placed, ...free].map((w) => ({
      id: w.id,
      kind: w.kind,
      address: w.address,
      pid: w.pid,
      devices: w.devices,
      models_loaded: w.baseModel !== null && this.workers.has(w.baseModel) ? [w.baseModel] : [],
      ...(w.kind === 'remote' ? { models_available: [...w.available] } : {}),
    }));
  }

  /**
   * Stops every local worker and closes every remote worker's connection (remote workers outlive
   * the server and reconnect to the next one); afterwards the pool places nothing.
   */
  async close(): Promise<void> {
    this.stopping = true;
    for (const wake of [...this.waiters]) wake();
    const all = [...this.workers.values()];
    this.workers.clear();
    const remotes = [...this.remotes.values()];
    this.remotes.clear();
    await Promise.all([...all.map(async (pending) => (await pending.catch(() => undefined))?.stop()), ...remotes.map((w) => w.stop())]);
  }
}

/** Whether a worker can load `source`: announced it and holds no other model (a worker holds one). */
function canLoad(worker: PooledWorker, source: string): boolean {
  return worker.available.has(source) && (worker.engineModel === null || worker.engineModel === source);
}
