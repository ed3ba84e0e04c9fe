/**
 * @module One lane per base model: it owns that model's worker and decides what runs next.
 *
 * Training requests of one run execute strictly in `seq_id` order; later ones wait in a buffer
 * until the gap is filled. The lane runs in clock cycles: a training cycle packs the ready
 * `forward`/`forward_backward` request of each run (one per run) into one worker batch of at most
 * `cycleTokens` tokens, runs it, then runs every run's due single ops (`optim_step`, create, save,
 * load, drop): cheap per-adapter work never waits behind other runs' forward passes, and a new
 * run's create runs within one cycle. When the budget cannot hold every ready request, runs are
 * picked round-robin across API keys, least recently served key first, so a key with many runs
 * gets no more share than a key with one, and a request left out leads the next cycle (a single
 * request larger than the budget runs alone). Training and sampling cycles alternate; a sampling
 * cycle decodes at most `sampleCycleTokens` rows x max_tokens, picked the same way, splitting a
 * larger request into pieces of fewer samples (seeded pieces equal the whole: the worker's
 * `first_sample_index`). Each API key may hold at most `maxQueuedPerKey` requests (and
 * `maxQueuedBytesPerKey` bytes) queued in a lane; beyond, its submits get 429.
 *
 * Waiting for a missing `seq_id` is bounded (run-queue.ts): a gap not filled in time is given up,
 * the requests that waited behind it fail with a user error naming the missing seq id, and the run
 * goes on, so a user whose client lost a request can go on training.
 *
 * Why over 400 lines: the cycle loop, its picking and its failure handling share the lane's state
 * (worker, queues, settler) at every step; the queues, key accounting and settling already live in
 * their own modules, and what remains is the one state machine, easier to follow in one place.
 */
import type { WorkerClient } from '../worker/client.js';
import { WorkerConnectionError } from '../worker/client.js';
import { forwardItem, isForward, toWorkerRequest, type ForwardOp, type ItemResult } from '../worker/ops.js';
import { defaultLogger, type Logger } from '../log.js';
import { asJobError, type Completion, type JobError, type Reservation, type SampleJob, type SchedulingOptions, type TrainingJob } from './jobs.js';
import { KeyLoad } from './key-load.js';
import { JobSettler } from './settle.js';
import { RunQueues, type GivenUpGap } from './run-queue.js';
import { addPiece, pieceItem, SampleQueue, type QueuedSample, type SamplePiece } from './sample-queue.js';

// Routes, codecs, the recorder and tests name these by the lane that runs them.
export type { TrainingOp, WorkerDatum } from '../worker/ops.js';
export type { Completion, JobError, OrderingOptions, Reservation, SampleJob, SchedulingOptions, Timers, TrainingJob } from './jobs.js';

/** Single ops a cycle runs after its forward passes, at most this many per run. */
const SINGLE_OP_ROUNDS = 8;

/** Options for {@link Lane}. */
export interface LaneOptions extends SchedulingOptions {
  baseModel: string;
  worker: () => Promise<WorkerClient>;
  completion: Completion;
  /** Most sampling requests waiting at once before submits get 429. */
  maxQueuedSamples?: number;
  /** Rebuilds a run's adapter in a fresh worker (from its snapshot and the request log). */
  recover: (modelId: string, client: WorkerClient) => Promise<void>;
  /** Where errors the lane survives are logged (a result that could not be recorded…); default stderr. */
  logger?: Logger;
  /** Records seq ids the run gave up waiting for as failed requests (a late one gets `error`). */
  recordLost?: (owner: string, modelId: string, seqIds: number[], error: JobError) => Promise<void>;
}

/**
 * @example
 * const lane = new Lane({ baseModel, worker: () => pool.client(baseModel), completion });
 * lane.registerRun('S:train:0');
 * lane.submitTraining({ requestId, owner, modelId: 'S:train:0', seqId: 0, op: { kind: 'create_adapter', lora }, bytes, finalize });
 */
export class Lane {
  private readonly runs: RunQueues;
  private readonly samples: SampleQueue;
  private cycle = 0;
  private readonly loadedAdapters = new Set<string>();
  private readonly settle: JobSettler;
  private readonly log: Logger;
  private pumping = false;
  /** Set by {@link stop}: no new batch starts. */
  private stopping = false;
  /** The pump's run (batches until nothing is ready), settled when it is done. */
  private pumped: Promise<void> = Promise.resolve();
  private preferSampling = false;
  private readonly cycleTokens: number;

  constructor(private readonly options: LaneOptions) {
    this.cycleTokens = options.cycleTokens ?? 32768;
    this.log = (options.logger ?? defaultLogger()).child({ lane: options.baseModel });
    this.settle = new JobSettler(options.completion, this.log);
    const keys = new KeyLoad(options.baseModel, options.maxQueuedPerKey ?? 1024, options.maxQueuedBytesPerKey ?? 1024 * 1024 * 1024);
    this.runs = new RunQueues({ ...options, keys, onGiveUp: (gap) => this.gaveUp(gap) });
    this.samples = new SampleQueue({ baseModel: options.baseModel, keys, maxQueued: options.maxQueuedSamples ?? 4096, cycleTokens: options.sampleCycleTokens ?? 8192 });
  }

  /**
   * Starts tracking a run; a new one's first request is seq 0 (create). `passed` are seq ids
   * after `nextSeq` that already finished (a run rebuilt from its log after a restart).
   */
  registerRun(modelId: string, nextSeq = 0, needsRecovery = false, passed: Iterable<number> = []): void {
    this.runs.register(modelId, nextSeq, needsRecovery, passed);
  }

  /** The seq id the run expects next (for rejecting stale ids). */
  expectedSeq(modelId: string): number | undefined {
    return this.runs.expectedSeq(modelId);
  }

  /** A place for a training request before it is logged, or why not (see {@link RunQueues.reserve}). */
  reserve(owner: string, modelId: string, seqId: number, bytes: number): Reservation | string {
    return this.runs.reserve(owner, modelId, seqId, bytes);
  }

  /** Gives back a place taken by {@link reserve} that will not be used. */
  release(reservation: Reservation): void {
    this.runs.release(reservation);
  }

  /**
   * Queues a training request (into its `reservation`, if it took one); it runs once every
   * earlier seq of its run has run. One the run has gone past (it gave up waiting for that seq)
   * fails at once.
   */
  submitTraining(job: TrainingJob, reservation?: Reservation): void {
    if (this.runs.expectedSeq(job.modelId) === undefined) throw new Error(`lane ${this.options.baseModel} has no run ${job.modelId}`);
    const refused = this.runs.submit(job, reservation);
    if (refused !== null) {
      void this.settle.fail(job.requestId, { message: refused, category: 'user' });
      return;
    }
    this.pump();
  }

  /** Whether `seqId` is near enough to the run's first missing seq id to wait (see {@link RunQueues.inWindow}). */
  inWindow(modelId: string, seqId: number): boolean {
    return this.runs.inWindow(modelId, seqId);
  }

  /**
   * Marks `seqId` of a run as finished without running (a request refused at submit): the run
   * goes past it when it gets there, so the requests after it do not wait for it.
   */
  pass(modelId: string, seqId: number): void {
    if (this.runs.pass(modelId, seqId)) this.pump();
  }

  /** A run gave up waiting for a gap (see run-queue.ts): records the lost seq ids, fails what waited. */
  private gaveUp({ owner, modelId, lost, lostError, failed }: GivenUpGap): void {
    for (const { job } of failed) this.settle.forget(job.requestId);
    void (async () => {
      await this.options.recordLost?.(owner, modelId, lost, lostError);
      for (const { job, error } of failed) await this.settle.fail(job.requestId, error);
    })().catch((error: unknown) => this.log.error({ err: error, modelId }, `could not record the gap given up in ${modelId}`));
    this.pump();
  }

  /** Cycles (training and sampling) this lane has started: how long a request waited, in cycles. */
  get cycles(): number {
    return this.cycle;
  }

  /** Requests waiting (buffered or ready) across runs and samplers. */
  get queued(): { training: number; sampling: number } {
    return { training: this.runs.size, sampling: this.samples.waiting };
  }

  /** A place in the sampling queue before a request is logged, or why not (see {@link SampleQueue.reserve}). */
  reserveSample(owner: string, bytes: number): Reservation | string {
    return this.samples.reserve(owner, bytes);
  }

  /** Gives back a place taken by {@link reserveSample} that will not be filled. */
  releaseSample(reservation: Reservation): void {
    this.samples.release(reservation);
  }

  /**
   * Queues a sampling request, always: into the place `reserved` by {@link reserveSample}, or
   * beyond the limits (requests resumed after a restart were acknowledged already).
   */
  submitSample(job: SampleJob, reservation?: Reservation): void {
    this.samples.submit(job, reservation);
    this.pump();
  }

  /** Takes a sampling request out of the queue if it has not started; false if it is not queued here. */
  cancelSample(requestId: string): boolean {
    const queued = this.samples.cancellable(requestId);
    if (!queued) return false;
    this.dropSample(queued);
    return true;
  }

  /** A sampling request leaves the queue (finished, failed or cancelled). */
  private dropSample(queued: QueuedSample): void {
    this.samples.drop(queued);
    this.settle.forget(queued.job.requestId);
  }

  /** The worker died: every run's adapter must be rebuilt and sampler adapters reloaded. */
  workerLost(): void {
    for (const run of this.runs.all()) run.needsRecovery = true;
    this.loadedAdapters.clear();
    this.pump();
  }

  /**
   * Runs batches until nothing is ready. Only one batch is in flight per lane. Job outcomes are
   * contained in {@link JobSettler}; anything else that escapes is logged, and the lane tries again
   * a little later rather than spinning on a persistent fault.
   */
  private pump(): void {
    if (this.pumping || this.stopping) return;
    this.pumping = true;
    let failed = false;
    this.pumped = this.drain()
      .catch((error: unknown) => {
        failed = true;
        this.log.error({ err: error }, 'scheduling failed');
      })
      .finally(() => {
        this.pumping = false;
        if (this.runs.ready().length === 0 && this.samples.empty) return;
        if (failed) setTimeout(() => this.pump(), 1000).unref();
        else this.pump();
      });
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
      const training = this.runs.ready().length > 0;
      const sampling = !this.samples.empty;
      if (!training && !sampling) return;
      // Alternate between training and sampling cycles so neither starves the other.
      if (sampling && (!training || this.preferSampling)) {
        this.preferSampling = false;
        await this.runSamples(this.pickSamples());
      } else {
        this.preferSampling = true;
        await this.runCycle();
      }
    }
  }

  /**
   * One training cycle: the fair batch of forward passes, then every run's due single ops (a few
   * rounds, so one run's long chain of them cannot hold the next batch back for long).
   */
  private async runCycle(): Promise<void> {
    this.cycle++;
    const batch = this.runs.pickForward(this.cycle, this.cycleTokens);
    if (batch.length > 0) await this.runTraining(batch);
    for (let round = 0; round < SINGLE_OP_ROUNDS; round++) {
      const due = this.runs.ready().filter((job) => !isForward(job.op));
      if (due.length === 0) return;
      for (const job of due) {
        if (this.stopping) return;
        await this.runTraining([job]);
      }
    }
  }

  /** Runs a batch of ready training jobs (forward passes in one worker call per kind, single ops one by one). */
  private async runTraining(batch: TrainingJob[]): Promise<void> {
    for (const job of batch) this.runs.get(job.modelId).running = true;
    const retry = new Set<TrainingJob>();
    /** Why the worker could not be had or reached (e.g. none serves the model), for the requests that give up. */
    let cause: string | undefined;
    try {
      const client = await this.options.worker();
      const live: TrainingJob[] = [];
      for (const job of batch) if (await this.ensureRecovered(job, client)) live.push(job);
      for (const kind of ['forward_backward', 'forward'] as const) {
        const jobs = live.filter((job) => job.op.kind === kind);
        if (jobs.length > 0) for (const job of await this.runForward(client, kind, jobs)) retry.add(job);
      }
      for (const job of live) if (!isForward(job.op)) for (const failed of await this.runSingle(client, job)) retry.add(failed);
    } catch (error) {
      // The worker could not be started or reached: the whole batch waits for the next attempt.
      for (const job of batch) retry.add(job);
      cause = (error as Error).message;
      if (!(error instanceof WorkerConnectionError)) for (const job of batch) this.settle.noRetry(job.requestId);
    } finally {
      for (const job of batch) {
        const run = this.runs.get(job.modelId);
        run.running = false;
        if (retry.has(job) && this.settle.retryable(job.requestId)) continue; // stays buffered at the same seq
        if (retry.has(job)) await this.settle.fail(job.requestId, { message: `the worker failed repeatedly while running this request${cause ? ` (last: ${cause})` : ''}`, category: 'server' });
        this.settle.forget(job.requestId);
        this.runs.done(job);
      }
    }
  }

  /** Rebuilds the job's run if the worker lost it; false (and the job failed) if that is impossible. */
  private async ensureRecovered(job: TrainingJob, client: WorkerClient): Promise<boolean> {
    const run = this.runs.get(job.modelId);
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
      await this.settle.fail(job.requestId, { message: run.lost, category: 'server' });
      return false;
    }
    return true;
  }

  /** Runs one batched forward(_backward); returns the jobs to retry after a worker crash. */
  private async runForward(client: WorkerClient, kind: 'forward_backward' | 'forward', jobs: TrainingJob[]): Promise<Set<TrainingJob>> {
    const items = jobs.map((job) => forwardItem(job.modelId, job.op as ForwardOp));
    let reply: { results: ItemResult[] };
    try {
      reply = await client.request(kind, { items });
    } catch (error) {
      if (error instanceof WorkerConnectionError) return new Set(jobs);
      await Promise.all(jobs.map((job) => this.settle.fail(job.requestId, asJobError(error))));
      return new Set();
    }
    await Promise.all(jobs.map((job, i) => this.settle.finish(job, reply.results[i] ?? { ok: false, error: { message: 'missing result', category: 'server' } })));
    return new Set();
  }

  private async runSingle(client: WorkerClient, job: TrainingJob): Promise<Set<TrainingJob>> {
    if (isForward(job.op)) throw new Error(`unexpected op ${job.op.kind}`);
    try {
      const { op, fields } = toWorkerRequest(job.modelId, job.op);
      const reply = await client.request(op, fields);
      if (op === 'load_adapter') {
        // The loaded weights replace whatever was lost: nothing is left to rebuild.
        const run = this.runs.get(job.modelId);
        run.lost = null;
        run.needsRecovery = false;
      }
      await this.settle.finish(job, { ok: true, ...reply });
    } catch (error) {
      if (error instanceof WorkerConnectionError) return new Set([job]);
      await this.settle.fail(job.requestId, asJobError(error));
    }
    return new Set();
  }

  /** This sampling cycle's pieces (see {@link SampleQueue.pick}). */
  private pickSamples(): SamplePiece[] {
    this.cycle++;
    return this.samples.pick(this.cycle);
  }

  private async runSamples(pieces: SamplePiece[]): Promise<void> {
    for (const { item } of pieces) item.running = true;
    try {
      await this.samplePieces(pieces);
    } finally {
      for (const { item } of pieces) item.running = false;
    }
  }

  private async samplePieces(pieces: SamplePiece[]): Promise<void> {
    let client: WorkerClient;
    try {
      client = await this.options.worker();
    } catch (error) {
      for (const { item } of pieces) this.dropSample(item);
      await Promise.all(pieces.map(({ item }) => this.settle.fail(item.job.requestId, asJobError(error))));
      return;
    }
    // A request the worker lost stays queued (drawn pieces kept) to be tried again, a few times.
    const requeue = (failed: QueuedSample[], error: unknown): Promise<unknown> =>
      Promise.all(
        failed.map((queued) => {
          if (error instanceof WorkerConnectionError && this.settle.retryable(queued.job.requestId)) return undefined;
          this.dropSample(queued);
          return this.settle.fail(queued.job.requestId, asJobError(error));
        }),
      );
    const live: SamplePiece[] = [];
    for (const piece of pieces) {
      const job = piece.item.job;
      if (job.load && job.adapter && !this.loadedAdapters.has(job.adapter)) {
        try {
          await client.request('load_adapter', { adapter: job.adapter, path: job.load.path, include_optimizer: false });
          this.loadedAdapters.add(job.adapter);
        } catch (error) {
          await requeue([piece.item], error);
          continue;
        }
      }
      live.push(piece);
    }
    if (live.length === 0) return;
    try {
      const reply = await client.request('sample', { items: live.map(pieceItem) });
      await Promise.all(live.map(({ item, units }, i) => this.drawn(item, units, reply.results[i] ?? { ok: false })));
    } catch (error) {
      await requeue(live.map(({ item }) => item), error);
    }
  }

  /** A piece of `units` samples came back: the request finishes once all its samples are drawn. */
  private async drawn(queued: QueuedSample, units: number, result: Record<string, unknown>): Promise<void> {
    this.settle.forget(queued.job.requestId);
    if (!addPiece(queued, units, result)) return;
    this.dropSample(queued);
    await this.settle.finish(queued.job, result['ok'] === true ? queued.partial! : result);
  }

  /** Forgets a sampler adapter so the next use reloads it (after its checkpoint was replaced). */
  forgetAdapter(adapter: string): void {
    this.loadedAdapters.delete(adapter);
  }
}
