/**
 * @module One lane per base model: it owns that model's worker and decides what runs next.
 *
 * Training requests of one run execute strictly in `seq_id` order; later ones wait in a buffer
 * until the gap is filled. Whatever is ready across all runs is packed into one worker call per
 * kind ("clock cycle"): every ready `forward_backward` of every adapter goes into a single batch.
 * Sampling requests of all samplers on this base model are batched the same way.
 */
import type { WorkerClient } from '../worker/client.js';
import { WorkerConnectionError, WorkerRequestError } from '../worker/client.js';
import type { WireTensor } from '../worker/tensor.js';

/** A datum as the worker takes it. */
export interface WorkerDatum {
  tokens: WireTensor;
  loss_fn_inputs: Record<string, WireTensor>;
}

/** What a training request asks the worker to do. */
export type TrainingOp =
  | { kind: 'create_adapter'; lora: Record<string, unknown> }
  | { kind: 'forward_backward' | 'forward'; lossFn: string; lossFnConfig: Record<string, number>; data: WorkerDatum[] }
  | { kind: 'optim_step'; adamParams: Record<string, number> }
  | { kind: 'save_adapter'; path: string; includeOptimizer: boolean }
  | { kind: 'load_adapter'; path: string; includeOptimizer: boolean }
  | { kind: 'drop_adapter' };

/** A failure delivered through a future. */
export interface JobError {
  message: string;
  category: 'user' | 'server' | 'unknown';
}

/** Where finished jobs go (the request log + future notification). */
export interface Completion {
  complete(requestId: string, result: unknown): Promise<void>;
  fail(requestId: string, error: JobError): Promise<void>;
}

/** A training request, queued for its run. `finalize` turns the worker's reply into the future's result. */
export interface TrainingJob {
  requestId: string;
  modelId: string;
  seqId: number;
  op: TrainingOp;
  finalize: (reply: Record<string, unknown>) => Promise<unknown>;
}

/** A sampling request. `load` names a checkpoint to load into `adapter` first (once). */
export interface SampleJob {
  requestId: string;
  adapter: string | null;
  load: { path: string } | null;
  item: Record<string, unknown>;
  finalize: (reply: Record<string, unknown>) => Promise<unknown>;
}

interface RunQueue {
  nextSeq: number;
  buffered: Map<number, TrainingJob>;
  running: boolean;
  /** The worker lost this run's adapter; rebuild it (snapshot + replay) before its next job. */
  needsRecovery: boolean;
  /** Why the adapter could not be rebuilt, if that failed. */
  lost: string | null;
}

/** A job interrupted by a worker crash is retried this many times before it fails. */
const MAX_ATTEMPTS = 3;

/** Options for {@link Lane}. */
export interface LaneOptions {
  baseModel: string;
  worker: () => Promise<WorkerClient>;
  completion: Completion;
  /** Most sampling requests waiting at once before submits get 429. */
  maxQueuedSamples?: number;
  /** Rebuilds a run's adapter in a fresh worker (from its snapshot and the request log). */
  recover: (modelId: string, client: WorkerClient) => Promise<void>;
  /** Where errors the lane survives are reported (a result that could not be recorded…); default stderr. */
  logError?: (message: string, error: unknown) => void;
}

/**
 * @example
 * const lane = new Lane({ baseModel, worker: () => pool.client(baseModel), completion });
 * lane.registerRun('S:train:0');
 * lane.submitTraining({ requestId, modelId: 'S:train:0', seqId: 0, op: { kind: 'create_adapter', lora }, finalize });
 */
export class Lane {
  private readonly runs = new Map<string, RunQueue>();
  private readonly samples: SampleJob[] = [];
  /** Queue places taken by {@link reserveSample} and not yet filled or released. */
  private reservedSamples = 0;
  private readonly loadedAdapters = new Set<string>();
  private readonly attempts = new Map<string, number>();
  private pumping = false;
  /** Set by {@link stop}: no new batch starts. */
  private stopping = false;
  /** The pump's run (batches until nothing is ready), settled when it is done. */
  private pumped: Promise<void> = Promise.resolve();
  private preferSampling = false;
  readonly maxQueuedSamples: number;

  constructor(private readonly options: LaneOptions) {
    this.maxQueuedSamples = options.maxQueuedSamples ?? 4096;
  }

  /** Starts tracking a new run; its first request must be seq 0 (create). */
  registerRun(modelId: string, nextSeq = 0, needsRecovery = false): void {
    if (!this.runs.has(modelId)) this.runs.set(modelId, { nextSeq, buffered: new Map(), running: false, needsRecovery, lost: null });
  }

  /** The seq id the run expects next (for rejecting stale ids). */
  expectedSeq(modelId: string): number | undefined {
    return this.runs.get(modelId)?.nextSeq;
  }

  /** Queues a training request; it runs once every earlier seq of its run has run. */
  submitTraining(job: TrainingJob): void {
    const run = this.runs.get(job.modelId);
    if (!run) throw new Error(`lane ${this.options.baseModel} has no run ${job.modelId}`);
    run.buffered.set(job.seqId, job);
    this.pump();
  }

  /** Requests waiting (buffered or ready) across runs and samplers. */
  get queued(): { training: number; sampling: number } {
    let training = 0;
    for (const run of this.runs.values()) training += run.buffered.size;
    return { training, sampling: this.samples.length };
  }

  /**
   * Takes a place in the sampling queue, synchronously, so concurrent submits cannot overshoot
   * the limit; false when it is full (the caller answers 429). Fill the place with
   * {@link submitSample}`(job, true)` or give it back with {@link releaseSample}.
   */
  reserveSample(): boolean {
    if (this.samples.length + this.reservedSamples >= this.maxQueuedSamples) return false;
    this.reservedSamples++;
    return true;
  }

  /** Gives back a place taken by {@link reserveSample} that will not be filled. */
  releaseSample(): void {
    if (this.reservedSamples > 0) this.reservedSamples--;
  }

  /**
   * Queues a sampling request, always: into the place `reserved` by {@link reserveSample}, or
   * beyond the limit (requests resumed after a restart were acknowledged already).
   */
  submitSample(job: SampleJob, reserved = false): void {
    if (reserved) this.releaseSample();
    this.samples.push(job);
    this.pump();
  }

  /** Takes a sampling request out of the queue if it has not started; false if it is not queued here. */
  cancelSample(requestId: string): boolean {
    const i = this.samples.findIndex((job) => job.requestId === requestId);
    if (i < 0) return false;
    this.samples.splice(i, 1);
    this.attempts.delete(requestId);
    return true;
  }

  /** The worker died: every run's adapter must be rebuilt and sampler adapters reloaded. */
  workerLost(): void {
    for (const run of this.runs.values()) run.needsRecovery = true;
    this.loadedAdapters.clear();
    this.pump();
  }

  private readyTraining(): TrainingJob[] {
    const ready: TrainingJob[] = [];
    for (const run of this.runs.values()) {
      const job = run.running ? undefined : run.buffered.get(run.nextSeq);
      if (job) ready.push(job);
    }
    return ready;
  }

  /**
   * Runs batches until nothing is ready. Only one batch is in flight per lane. Job outcomes are
   * contained in {@link settle}; anything else that escapes is logged, and the lane tries again
   * a little later rather than spinning on a persistent fault.
   */
  private pump(): void {
    if (this.pumping || this.stopping) return;
    this.pumping = true;
    let failed = false;
    this.pumped = this.drain()
      .catch((error: unknown) => {
        failed = true;
        this.logError(`lane ${this.options.baseModel}: scheduling failed`, error);
      })
      .finally(() => {
        this.pumping = false;
        if (this.readyTraining().length === 0 && this.samples.length === 0) return;
        if (failed) setTimeout(() => this.pump(), 1000).unref();
        else this.pump();
      });
  }

  private logError(message: string, error: unknown): void {
    if (this.options.logError) this.options.logError(message, error);
    else console.error(message, error);
  }

  /**
   * Records a job's failure. A store that cannot record it must not stop the lane: the error is
   * logged and the lane goes on with the next job (that future stays pending).
   */
  private async failJob(requestId: string, error: JobError): Promise<void> {
    try {
      await this.options.completion.fail(requestId, error);
    } catch (storeError) {
      this.logError(`lane ${this.options.baseModel}: could not record the failure of ${requestId}`, storeError);
    }
  }

  /**
   * Starts no further batch and resolves once the one in flight has finished and its outcomes are
   * recorded. What is still queued stays unfinished in the request log for the next server.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.pumped;
  }

  private async drain(): Promise<void> {
    for (;;) {
      if (this.stopping) return;
      const training = this.readyTraining();
      const sampling = this.samples.length > 0;
      if (training.length === 0 && !sampling) return;
      // Alternate between training and sampling so neither starves the other.
      if (sampling && (training.length === 0 || this.preferSampling)) {
        this.preferSampling = false;
        await this.runSamples(this.samples.splice(0, this.samples.length));
      } else {
        this.preferSampling = true;
        await this.runTraining(training);
      }
    }
  }

  private async runTraining(ready: TrainingJob[]): Promise<void> {
    // One kind per cycle: all ready forward_backward jobs together, else all forward jobs, else the
    // first other job (optimizer steps and checkpoints are cheap and per-adapter).
    const kind = ready.some((j) => j.op.kind === 'forward_backward') ? 'forward_backward' : ready.some((j) => j.op.kind === 'forward') ? 'forward' : null;
    const batch = kind ? ready.filter((j) => j.op.kind === kind) : ready.slice(0, 1);
    for (const job of batch) this.runs.get(job.modelId)!.running = true;
    let retry = new Set<TrainingJob>();
    try {
      const client = await this.options.worker();
      const live: TrainingJob[] = [];
      for (const job of batch) if (await this.ready(job, client)) live.push(job);
      if (live.length > 0) retry = kind ? await this.runForward(client, kind, live) : await this.runSingle(client, live[0]!);
    } catch (error) {
      // The worker could not be started or reached: the whole batch waits for the next attempt.
      retry = new Set(batch);
      if (!(error instanceof WorkerConnectionError)) for (const job of batch) this.attempts.set(job.requestId, MAX_ATTEMPTS);
    } finally {
      for (const job of batch) {
        const run = this.runs.get(job.modelId)!;
        run.running = false;
        if (retry.has(job) && this.retryable(job)) continue; // stays buffered at the same seq
        if (retry.has(job)) await this.failJob(job.requestId, { message: 'the worker failed repeatedly while running this request', category: 'server' });
        this.attempts.delete(job.requestId);
        run.buffered.delete(job.seqId);
        run.nextSeq = job.seqId + 1;
      }
    }
  }

  private retryable(job: { requestId: string }): boolean {
    const attempts = (this.attempts.get(job.requestId) ?? 0) + 1;
    this.attempts.set(job.requestId, attempts);
    return attempts < MAX_ATTEMPTS;
  }

  /** Rebuilds the job's run if the worker lost it; false (and the job failed) if that is impossible. */
  private async ready(job: TrainingJob, client: WorkerClient): Promise<boolean> {
    const run = this.runs.get(job.modelId)!;
    if (run.needsRecovery && run.lost === null) {
      try {
        await this.options.recover(job.modelId, client);
        run.needsRecovery = false;
      } catch (error) {
        if (error instanceof WorkerConnectionError) throw error;
        run.lost = `this run's weights were lost when its worker stopped and could not be rebuilt (${(error as Error).message}); load a checkpoint to continue`;
      }
    }
    if (run.lost !== null && job.op.kind !== 'load_adapter') {
      await this.failJob(job.requestId, { message: run.lost, category: 'server' });
      return false;
    }
    return true;
  }

  /** Runs one batched forward(_backward); returns the jobs to retry after a worker crash. */
  private async runForward(client: WorkerClient, kind: 'forward_backward' | 'forward', jobs: TrainingJob[]): Promise<Set<TrainingJob>> {
    const items = jobs.map((job) => {
      const op = job.op as Extract<TrainingOp, { lossFn: string }>;
      return { adapter: job.modelId, loss_fn: op.lossFn, loss_fn_config: op.lossFnConfig, data: op.data };
    });
    let reply: { results: Record<string, unknown>[] };
    try {
      reply = await client.request<{ results: Record<string, unknown>[] }>(kind, { items });
    } catch (error) {
      if (error instanceof WorkerConnectionError) return new Set(jobs);
      await Promise.all(jobs.map((job) => this.failJob(job.requestId, asJobError(error))));
      return new Set();
    }
    await Promise.all(jobs.map((job, i) => this.finish(job, reply.results[i] ?? { ok: false, error: { message: 'missing result', category: 'server' } })));
    return new Set();
  }

  private async runSingle(client: WorkerClient, job: TrainingJob): Promise<Set<TrainingJob>> {
    const op = job.op;
    const fields: Record<string, unknown> = { adapter: job.modelId };
    let name: string;
    switch (op.kind) {
      case 'create_adapter':
        name = 'create_adapter';
        fields['lora'] = op.lora;
        break;
      case 'optim_step':
        name = 'optim_step';
        fields['adam_params'] = op.adamParams;
        break;
      case 'save_adapter':
      case 'load_adapter':
        name = op.kind;
        fields['path'] = op.path;
        fields['include_optimizer'] = op.includeOptimizer;
        break;
      case 'drop_adapter':
        name = 'drop_adapter';
        break;
      default:
        throw new Error(`unexpected op ${(op as TrainingOp).kind}`);
    }
    try {
      const reply = await client.request(name, fields);
      if (op.kind === 'load_adapter') {
        // The loaded weights replace whatever was lost: nothing is left to rebuild.
        const run = this.runs.get(job.modelId)!;
        run.lost = null;
        run.needsRecovery = false;
      }
      await this.finish(job, { ok: true, ...reply });
    } catch (error) {
      if (error instanceof WorkerConnectionError) return new Set([job]);
      await this.failJob(job.requestId, asJobError(error));
    }
    return new Set();
  }

  private async runSamples(jobs: SampleJob[]): Promise<void> {
    let client: WorkerClient;
    try {
      client = await this.options.worker();
    } catch (error) {
      await Promise.all(jobs.map((job) => this.failJob(job.requestId, asJobError(error))));
      return;
    }
    const requeue = (failed: SampleJob[], error: unknown): Promise<unknown> =>
      Promise.all(
        failed.map((job) => {
          if (error instanceof WorkerConnectionError && this.retryable(job)) return this.samples.push(job);
          this.attempts.delete(job.requestId);
          return this.failJob(job.requestId, asJobError(error));
        }),
      );
    const live: SampleJob[] = [];
    for (const job of jobs) {
      if (job.load && job.adapter && !this.loadedAdapters.has(job.adapter)) {
        try {
          await client.request('load_adapter', { adapter: job.adapter, path: job.load.path, include_optimizer: false });
          this.loadedAdapters.add(job.adapter);
        } catch (error) {
          await requeue([job], error);
          continue;
        }
      }
      live.push(job);
    }
    if (live.length === 0) return;
    try {
      const reply = await client.request<{ results: Record<string, unknown>[] }>('sample', { items: live.map((job) => ({ ...job.item, adapter: job.adapter })) });
      for (const job of live) this.attempts.delete(job.requestId);
      await Promise.all(live.map((job, i) => this.finish(job, reply.results[i] ?? { ok: false })));
    } catch (error) {
      await requeue(live, error);
    }
  }

  /** Forgets a sampler adapter so the next use reloads it (after its checkpoint was replaced). */
  forgetAdapter(adapter: string): void {
    this.loadedAdapters.delete(adapter);
  }

  private async finish(job: TrainingJob | SampleJob, result: Record<string, unknown>): Promise<void> {
    if (result['ok'] !== true) {
      const error = (result['error'] ?? {}) as { message?: string; category?: string };
      await this.failJob(job.requestId, {
        message: error.message ?? 'the worker failed this request',
        category: error.category === 'user' ? 'user' : 'server',
      });
      return;
    }
    try {
      await this.options.completion.complete(job.requestId, await job.finalize(result));
    } catch (error) {
      await this.failJob(job.requestId, asJobError(error));
    }
  }
}

function asJobError(error: unknown): JobError {
  if (error instanceof WorkerRequestError) return { message: error.message, category: error.category };
  const category = (error as { category?: unknown } | undefined)?.category;
  return { message: error instanceof Error ? error.message : String(error), category: category === 'user' ? 'user' : 'server' };
}
