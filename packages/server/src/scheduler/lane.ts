/**
 * @module One lane per base model: it owns that model's worker and decides what runs next.
 *
 * Training requests of one run execute strictly in `seq_id` order; later ones wait in a buffer
 * until the gap is filled. Whatever is ready across all runs is packed into one worker call per
 * kind ("clock cycle"): every ready `forward_backward` of every adapter goes into a single batch.
 * Sampling requests of all samplers on this base model are batched the same way.
 *
 * Waiting for a missing `seq_id` is bounded: a request may wait only within
 * `maxWaitingRequests` seq ids of the missing one and while the run's waiting requests hold at
 * most `maxWaitingBytes` (the caller answers 429, and the SDK sends it again later); and a gap
 * not filled within `gapTimeoutMs` is given up: every request waiting behind it fails with a
 * user error naming the missing seq id, the missing seq ids are recorded as failed (so one that
 * arrives late gets that answer instead of running out of order), and the run goes on with the
 * seq id after the last request that waited. A user whose client lost a request thus sees the
 * requests that depended on it fail, and can go on training.
 */
import type { WorkerClient } from '../worker/client.js';
import { WorkerConnectionError, WorkerRequestError } from '../worker/client.js';
import type { WireTensor } from '../worker/tensor.js';

/** A datum as the worker takes it. */
export interface WorkerDatum {
  tokens: WireTensor;
  loss_fn_inputs: Record<string, WireTensor>;
}

/**
 * What a training request asks the worker to do. `optimizer` is the run's optimizer config (absent
 * in requests logged before optimizers could be chosen: AdamW); an optimizer step carries the
 * parameters of exactly one family.
 */
export type TrainingOp =
  | { kind: 'create_adapter'; lora: Record<string, unknown>; optimizer?: Record<string, unknown> }
  | { kind: 'forward_backward' | 'forward'; lossFn: string; lossFnConfig: Record<string, number>; data: WorkerDatum[] }
  | { kind: 'optim_step'; adamParams?: Record<string, number>; optimizerParams?: Record<string, unknown> }
  | { kind: 'save_adapter'; path: string; includeOptimizer: boolean }
  | { kind: 'load_adapter'; path: string; includeOptimizer: boolean; optimizer?: Record<string, unknown> }
  | { kind: 'export_peft'; path: string; naming: 'peft' | 'tinker' }
  | { kind: 'drop_adapter' };

/**
 * The worker request fields of an op that changes a run's adapter, as it first runs and as
 * recovery replays it (forward passes aside).
 */
export function opFields(op: Exclude<TrainingOp, { kind: 'forward_backward' | 'forward' }>): Record<string, unknown> {
  switch (op.kind) {
    case 'create_adapter':
      return { lora: op.lora, ...(op.optimizer ? { optimizer: op.optimizer } : {}) };
    case 'optim_step':
      return op.optimizerParams ? { optimizer_params: op.optimizerParams } : { adam_params: op.adamParams ?? {} };
    case 'save_adapter':
      return { path: op.path, include_optimizer: op.includeOptimizer };
    case 'load_adapter':
      return { path: op.path, include_optimizer: op.includeOptimizer, ...(op.optimizer ? { optimizer: op.optimizer } : {}) };
    case 'export_peft':
      return { path: op.path, naming: op.naming };
    case 'drop_adapter':
      return {};
  }
}

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
  /** The API key that owns the run (for what the lane records on the run's behalf). */
  owner: string;
  modelId: string;
  seqId: number;
  op: TrainingOp;
  /** Size of the logged request (counts against `maxWaitingBytes` while it waits for a gap). */
  bytes: number;
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
  /** Seq ids after `nextSeq` that finished without running (refused at submit): the run passes them. */
  passed: Set<number>;
  /** Places taken by {@link Lane.reserve} for requests not yet queued. */
  reserved: { count: number; bytes: number };
  /** The missing seq id the run waits for, and the timer that gives up on it. */
  gap: { seq: number; timer: unknown } | null;
  running: boolean;
  /** The worker lost this run's adapter; rebuild it (snapshot + replay) before its next job. */
  needsRecovery: boolean;
  /** Why the adapter could not be rebuilt, if that failed. */
  lost: string | null;
}

/** A job interrupted by a worker crash is retried this many times before it fails. */
const MAX_ATTEMPTS = 3;

/** Timer functions; tests inject ones they fire by hand. */
export interface Timers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const REAL_TIMERS: Timers = {
  setTimeout: (callback, ms) => setTimeout(callback, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** A place among a run's waiting requests, taken by {@link Lane.reserve}. */
export interface Reservation {
  modelId: string;
  count: number;
  bytes: number;
}

/** Limits on a run's requests waiting for a missing `seq_id` (see the module doc). */
export interface OrderingOptions {
  /** How far (in seq ids) past a missing one a request may wait; default 256. */
  maxWaitingRequests?: number;
  /** Most bytes of logged requests one run may hold waiting for a missing seq id; default 256 MiB. */
  maxWaitingBytes?: number;
  /** How long a run waits for a missing seq id before giving up on it (ms); default 10 minutes. */
  gapTimeoutMs?: number;
  /** Timers for the gap timeout (default: Node's, unref'd). */
  timers?: Timers;
}

/** Options for {@link Lane}. */
export interface LaneOptions extends OrderingOptions {
  baseModel: string;
  worker: () => Promise<WorkerClient>;
  completion: Completion;
  /** Most sampling requests waiting at once before submits get 429. */
  maxQueuedSamples?: number;
  /** Rebuilds a run's adapter in a fresh worker (from its snapshot and the request log). */
  recover: (modelId: string, client: WorkerClient) => Promise<void>;
  /** Where errors the lane survives are reported (a result that could not be recorded…); default stderr. */
  logError?: (message: string, error: unknown) => void;
  /** Records seq ids the run gave up waiting for as failed requests (a late one gets `error`). */
  recordLost?: (owner: string, modelId: string, seqIds: number[], error: JobError) => Promise<void>;
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
  private readonly maxWaitingRequests: number;
  private readonly maxWaitingBytes: number;
  private readonly gapTimeoutMs: number;
  private readonly timers: Timers;

  constructor(private readonly options: LaneOptions) {
    this.maxQueuedSamples = options.maxQueuedSamples ?? 4096;
    this.maxWaitingRequests = options.maxWaitingRequests ?? 256;
    this.maxWaitingBytes = options.maxWaitingBytes ?? 256 * 1024 * 1024;
    this.gapTimeoutMs = options.gapTimeoutMs ?? 10 * 60 * 1000;
    this.timers = options.timers ?? REAL_TIMERS;
  }

  /**
   * Starts tracking a run; a new one's first request is seq 0 (create). `passed` are seq ids
   * after `nextSeq` that already finished (a run rebuilt from its log after a restart).
   */
  registerRun(modelId: string, nextSeq = 0, needsRecovery = false, passed: Iterable<number> = []): void {
    if (this.runs.has(modelId)) return;
    const run: RunQueue = { nextSeq, buffered: new Map(), passed: new Set(passed), reserved: { count: 0, bytes: 0 }, gap: null, running: false, needsRecovery, lost: null };
    this.runs.set(modelId, run);
    this.advance(run);
  }

  /** The seq id the run expects next (for rejecting stale ids). */
  expectedSeq(modelId: string): number | undefined {
    return this.runs.get(modelId)?.nextSeq;
  }

  /**
   * Takes a place for request `seqId` of a run before it is logged, synchronously, so concurrent
   * submits cannot overshoot the limits; a string (why) when it would wait beyond them. A request
   * that runs next or fills the gap is always admitted, and the first one to wait whatever its
   * size. Give the place to {@link submitTraining} or back with {@link release}.
   */
  reserve(modelId: string, seqId: number, bytes: number): Reservation | string {
    const none: Reservation = { modelId, count: 0, bytes: 0 };
    const run = this.runs.get(modelId);
    if (!run || seqId < run.nextSeq || run.buffered.has(seqId) || run.passed.has(seqId)) return none; // stale or a retry
    const missing = this.firstMissing(run);
    if (seqId <= missing) return none;
    if (!this.inWindow(modelId, seqId)) {
      return `seq_id ${seqId} of ${modelId} is too far ahead: seq_id ${missing} has not arrived, and at most ${this.maxWaitingRequests} later requests may wait for it; send the earlier requests first`;
    }
    const waiting = this.waitingBytes(run, missing) + run.reserved.bytes;
    if (waiting > 0 && waiting + bytes > this.maxWaitingBytes) {
      return `requests of ${modelId} waiting for the missing seq_id ${missing} already hold ${waiting} bytes (at most ${this.maxWaitingBytes}); send seq_id ${missing} first`;
    }
    run.reserved.count++;
    run.reserved.bytes += bytes;
    return { modelId, count: 1, bytes };
  }

  /** Gives back a place taken by {@link reserve} that will not be used. */
  release(reservation: Reservation): void {
    const run = this.runs.get(reservation.modelId);
    if (!run) return;
    run.reserved.count -= reservation.count;
    run.reserved.bytes -= reservation.bytes;
  }

  /**
   * Queues a training request (into its `reservation`, if it took one); it runs once every
   * earlier seq of its run has run. One the run has gone past (it gave up waiting for that seq)
   * fails at once.
   */
  submitTraining(job: TrainingJob, reservation?: Reservation): void {
    const run = this.runs.get(job.modelId);
    if (!run) throw new Error(`lane ${this.options.baseModel} has no run ${job.modelId}`);
    if (reservation) this.release(reservation);
    if (job.seqId < run.nextSeq || run.passed.has(job.seqId)) {
      void this.failJob(job.requestId, { message: `seq_id ${job.seqId} of ${job.modelId} arrived after the run went past it (the next expected seq_id is ${run.nextSeq})`, category: 'user' });
      return;
    }
    run.buffered.set(job.seqId, job);
    this.watchGap(job.modelId, run);
    this.pump();
  }

  /**
   * Whether `seqId` is near enough to the run's first missing seq id to wait for it (at most
   * `maxWaitingRequests` beyond). Beyond, a request is not accepted, nor a refusal recorded.
   */
  inWindow(modelId: string, seqId: number): boolean {
    const run = this.runs.get(modelId);
    return !run || seqId - this.firstMissing(run) <= this.maxWaitingRequests;
  }

  /**
   * Marks `seqId` of a run as finished without running (a request refused at submit): the run
   * goes past it when it gets there, so the requests after it do not wait for it.
   */
  pass(modelId: string, seqId: number): void {
    const run = this.runs.get(modelId);
    if (!run || seqId < run.nextSeq || run.buffered.has(seqId)) return;
    run.passed.add(seqId);
    this.advance(run);
    this.watchGap(modelId, run);
    this.pump();
  }

  /** Moves the run past the seq ids it was told to pass. */
  private advance(run: RunQueue): void {
    if (run.running) return;
    while (run.passed.delete(run.nextSeq)) run.nextSeq++;
  }

  /** The first seq id at or after `nextSeq` that is neither queued nor passed. */
  private firstMissing(run: RunQueue): number {
    let seq = run.nextSeq;
    while (run.buffered.has(seq) || run.passed.has(seq)) seq++;
    return seq;
  }

  private waitingBytes(run: RunQueue, missing: number): number {
    let bytes = 0;
    for (const job of run.buffered.values()) if (job.seqId > missing) bytes += job.bytes;
    return bytes;
  }

  /** Starts, keeps or stops the run's gap timer: it runs while the run waits for a missing seq id. */
  private watchGap(modelId: string, run: RunQueue): void {
    const blocked = !run.running && run.buffered.size > 0 && !run.buffered.has(run.nextSeq);
    if (blocked && run.gap?.seq === run.nextSeq) return;
    if (run.gap) this.timers.clearTimeout(run.gap.timer);
    run.gap = null;
    if (!blocked) return;
    const seq = run.nextSeq;
    run.gap = { seq, timer: this.timers.setTimeout(() => this.giveUpGap(modelId, seq), this.gapTimeoutMs) };
  }

  /** The gap at `missing` was not filled in time: fail what waited for it and go on (module doc). */
  private giveUpGap(modelId: string, missing: number): void {
    const run = this.runs.get(modelId);
    if (!run || run.gap?.seq !== missing) return;
    run.gap = null;
    if (run.running || run.nextSeq !== missing || run.buffered.has(missing) || run.buffered.size === 0) return this.watchGap(modelId, run);
    const waiting = [...run.buffered.values()].sort((a, b) => a.seqId - b.seqId);
    const last = Math.max(...waiting.map((job) => job.seqId), ...run.passed);
    const lost: number[] = [];
    for (let seq = missing; seq < last; seq++) if (!run.buffered.has(seq) && !run.passed.has(seq)) lost.push(seq);
    const seconds = Math.round(this.gapTimeoutMs / 1000);
    const missingIds = lost.length === 1 ? `seq_id ${missing}` : `seq_ids ${lost.join(', ')}`;
    run.buffered.clear();
    run.passed.clear();
    run.nextSeq = last + 1;
    for (const job of waiting) this.attempts.delete(job.requestId);
    const owner = waiting[0]!.owner;
    void (async () => {
      await this.options.recordLost?.(owner, modelId, lost, {
        message: `${missingIds} of ${modelId} did not arrive within ${seconds} s; the run gave up on ${lost.length === 1 ? 'it' : 'them'}, failed the requests that waited, and went on from seq_id ${last + 1}`,
        category: 'user',
      });
      for (const job of waiting) {
        await this.failJob(job.requestId, {
          message: `seq_id ${job.seqId} of ${modelId} waited ${seconds} s for ${missingIds}, which did not arrive; it was not run. The run goes on from seq_id ${last + 1}`,
          category: 'user',
        });
      }
    })().catch((error: unknown) => this.logError(`lane ${this.options.baseModel}: could not record the gap given up in ${modelId}`, error));
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
        this.advance(run);
        this.watchGap(job.modelId, run);
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
    if ('lossFn' in op) throw new Error(`unexpected op ${op.kind}`);
    try {
      const reply = await client.request(op.kind, { adapter: job.modelId, ...opFields(op) });
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
