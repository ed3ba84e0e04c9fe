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
import { forwardItem, isForward, toWorkerRequest, type ForwardOp, type ItemResult, type TrainingOp } from '../worker/ops.js';

// Routes, codecs and tests name the ops by the lane that runs them.
export type { TrainingOp, WorkerDatum } from '../worker/ops.js';

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
  /** Size of the logged request (counts against `maxWaitingBytes` while it waits for a gap, and `maxQueuedBytesPerKey`). */
  bytes: number;
  finalize: (reply: Record<string, unknown>) => Promise<unknown>;
}

/** A sampling request. `load` names a checkpoint to load into `adapter` first (once). */
export interface SampleJob {
  requestId: string;
  /** The API key that sent it (for its fair share and its queue bound). */
  owner: string;
  /** Size of the logged request (counts against `maxQueuedBytesPerKey`). */
  bytes: number;
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
  /** The cycle that last ran one of this run's forward passes (fair share among one key's runs). */
  served: number;
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

/** A queue place taken by {@link Lane.reserve} or {@link Lane.reserveSample}. */
export interface Reservation {
  owner: string;
  modelId: string;
  /** 1 when the place is among the run's requests waiting for a missing seq id. */
  waiting: 0 | 1;
  /** 1 when the place counts against the key's bound (0: a retry, which queues nothing). */
  queued: 0 | 1;
  bytes: number;
}

/** A sampling request in the queue, with the samples of it already drawn (a split request). */
interface QueuedSample {
  job: SampleJob;
  /** Samples the request asks for, and how many are drawn. */
  total: number;
  done: number;
  /** The first piece's reply, with every drawn piece's sequences appended. */
  partial: Record<string, unknown> | null;
  /** In the worker call now running (it cannot be cancelled). */
  running: boolean;
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

/** Fair scheduling limits of a lane (see the module doc). */
export interface SchedulingOptions extends OrderingOptions {
  /** Most tokens of forward(_backward) data in one cycle's worker batch; default 32768. */
  cycleTokens?: number;
  /** Most rows x max_tokens decoded in one sampling call; default 8192. */
  sampleCycleTokens?: number;
  /** Most requests (training and sampling) one API key may have queued in a lane; default 1024. */
  maxQueuedPerKey?: number;
  /** Most bytes of logged requests one API key may have queued in a lane; default 1 GiB. */
  maxQueuedBytesPerKey?: number;
}

/** Options for {@link Lane}. */
export interface LaneOptions extends SchedulingOptions {
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
 * lane.submitTraining({ requestId, owner, modelId: 'S:train:0', seqId: 0, op: { kind: 'create_adapter', lora }, bytes, finalize });
 */
export class Lane {
  private readonly runs = new Map<string, RunQueue>();
  private readonly samples: QueuedSample[] = [];
  /** Queue places taken by {@link reserveSample} and not yet filled or released. */
  private reservedSamples = 0;
  /** Requests (and bytes) each API key has queued or reserved here. */
  private readonly load = new Map<string, { count: number; bytes: number }>();
  /** The cycle in which each key last had training (or sampling) work picked. */
  private readonly keyServed = new Map<string, number>();
  private readonly keySampled = new Map<string, number>();
  private cycle = 0;
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
  private readonly cycleTokens: number;
  private readonly sampleCycleTokens: number;
  private readonly maxQueuedPerKey: number;
  private readonly maxQueuedBytesPerKey: number;

  constructor(private readonly options: LaneOptions) {
    this.cycleTokens = options.cycleTokens ?? 32768;
    this.sampleCycleTokens = options.sampleCycleTokens ?? 8192;
    this.maxQueuedPerKey = options.maxQueuedPerKey ?? 1024;
    this.maxQueuedBytesPerKey = options.maxQueuedBytesPerKey ?? 1024 * 1024 * 1024;
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
    const run: RunQueue = { nextSeq, buffered: new Map(), passed: new Set(passed), reserved: { count: 0, bytes: 0 }, gap: null, running: false, served: 0, needsRecovery, lost: null };
    this.runs.set(modelId, run);
    this.advance(run);
  }

  /** The seq id the run expects next (for rejecting stale ids). */
  expectedSeq(modelId: string): number | undefined {
    return this.runs.get(modelId)?.nextSeq;
  }

  /**
   * Takes a place for request `seqId` of `owner`'s run before it is logged, synchronously, so
   * concurrent submits cannot overshoot the limits; a string (why) when the key has too much queued
   * or the request would wait beyond the run's limits. A request that runs next or fills the gap is
   * admitted within the key's bound, and the first one to wait whatever its size. Give the place to
   * {@link submitTraining} or back with {@link release}.
   */
  reserve(owner: string, modelId: string, seqId: number, bytes: number): Reservation | string {
    const run = this.runs.get(modelId);
    if (!run || seqId < run.nextSeq || run.buffered.has(seqId) || run.passed.has(seqId)) return { owner, modelId, waiting: 0, queued: 0, bytes: 0 }; // stale or a retry
    const missing = this.firstMissing(run);
    // The request that fills a gap others wait behind is admitted whatever the key holds: it frees them.
    const unblocks = seqId === run.nextSeq && run.buffered.size > 0;
    const full = unblocks ? null : this.keyFull(owner, bytes);
    if (full) return full;
    if (seqId <= missing) return this.charge({ owner, modelId, waiting: 0, queued: 1, bytes });
    if (!this.inWindow(modelId, seqId)) {
      return `seq_id ${seqId} of ${modelId} is too far ahead: seq_id ${missing} has not arrived, and at most ${this.maxWaitingRequests} later requests may wait for it; send the earlier requests first`;
    }
    const waiting = this.waitingBytes(run, missing) + run.reserved.bytes;
    if (waiting > 0 && waiting + bytes > this.maxWaitingBytes) {
      return `requests of ${modelId} waiting for the missing seq_id ${missing} already hold ${waiting} bytes (at most ${this.maxWaitingBytes}); send seq_id ${missing} first`;
    }
    run.reserved.count++;
    run.reserved.bytes += bytes;
    return this.charge({ owner, modelId, waiting: 1, queued: 1, bytes });
  }

  /** Gives back a place taken by {@link reserve} that will not be used. */
  release(reservation: Reservation): void {
    this.leaveWaiting(reservation);
    if (reservation.queued) this.uncharge(reservation.owner, reservation.bytes);
  }

  /** The reservation's place among the run's waiting requests is filled or given back. */
  private leaveWaiting(reservation: Reservation): void {
    const run = this.runs.get(reservation.modelId);
    if (!run || !reservation.waiting) return;
    run.reserved.count--;
    run.reserved.bytes -= reservation.bytes;
  }

  /** Why `owner` may not queue another request of `bytes` here, or null if it may. */
  private keyFull(owner: string, bytes: number): string | null {
    const load = this.load.get(owner);
    if (!load) return null; // one request, whatever its size, is always admitted
    if (load.count >= this.maxQueuedPerKey) {
      return `this API key already has ${load.count} requests queued for ${this.options.baseModel} (at most ${this.maxQueuedPerKey} per key); wait for some to finish before sending more`;
    }
    if (load.bytes + bytes > this.maxQueuedBytesPerKey) {
      return `this API key's requests queued for ${this.options.baseModel} already hold ${load.bytes} bytes (at most ${this.maxQueuedBytesPerKey} per key); wait for some to finish before sending more`;
    }
    return null;
  }

  /** Counts a queued (or reserved) request against its key's bound. */
  private charge(reservation: Reservation): Reservation {
    const load = this.load.get(reservation.owner) ?? { count: 0, bytes: 0 };
    load.count++;
    load.bytes += reservation.bytes;
    this.load.set(reservation.owner, load);
    return reservation;
  }

  /** A request of `owner` left the queue (ran, failed, or its place was given back). */
  private uncharge(owner: string, bytes: number): void {
    const load = this.load.get(owner);
    if (!load) return;
    load.count--;
    load.bytes -= bytes;
    if (load.count <= 0) this.load.delete(owner);
  }

  /**
   * Queues a training request (into its `reservation`, if it took one); it runs once every
   * earlier seq of its run has run. One the run has gone past (it gave up waiting for that seq)
   * fails at once.
   */
  submitTraining(job: TrainingJob, reservation?: Reservation): void {
    const run = this.runs.get(job.modelId);
    if (!run) throw new Error(`lane ${this.options.baseModel} has no run ${job.modelId}`);
    if (reservation) this.leaveWaiting(reservation);
    // Resumed requests (no reservation) are queued whatever the key's bound: they were acknowledged.
    if (!reservation?.queued) this.charge({ owner: job.owner, modelId: job.modelId, waiting: 0, queued: 1, bytes: job.bytes });
    if (job.seqId < run.nextSeq || run.passed.has(job.seqId)) {
      this.uncharge(job.owner, job.bytes);
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
    for (const job of waiting) {
      this.attempts.delete(job.requestId);
      this.uncharge(job.owner, job.bytes);
    }
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

  /** Cycles (training and sampling) this lane has started: how long a request waited, in cycles. */
  get cycles(): number {
    return this.cycle;
  }

  /** Requests waiting (buffered or ready) across runs and samplers. */
  get queued(): { training: number; sampling: number } {
    let training = 0;
    for (const run of this.runs.values()) training += run.buffered.size;
    // A sample in the worker call now running is no longer queued (it cannot be cancelled either).
    return { training, sampling: this.samples.filter((queued) => !queued.running).length };
  }

  /**
   * Takes a place in the sampling queue for a request of `owner` (`bytes` logged), synchronously,
   * so concurrent submits cannot overshoot the limits; a string (why) when the queue or the key's
   * share of it is full (the caller answers 429). Fill the place with {@link submitSample} or give
   * it back with {@link releaseSample}.
   */
  reserveSample(owner: string, bytes: number): Reservation | string {
    if (this.samples.length + this.reservedSamples >= this.maxQueuedSamples) return `sampling queue for ${this.options.baseModel} is full; retry shortly`;
    const full = this.keyFull(owner, bytes);
    if (full) return full;
    this.reservedSamples++;
    return this.charge({ owner, modelId: '', waiting: 0, queued: 1, bytes });
  }

  /** Gives back a place taken by {@link reserveSample} that will not be filled. */
  releaseSample(reservation: Reservation): void {
    if (this.reservedSamples > 0) this.reservedSamples--;
    this.uncharge(reservation.owner, reservation.bytes);
  }

  /**
   * Queues a sampling request, always: into the place `reserved` by {@link reserveSample}, or
   * beyond the limits (requests resumed after a restart were acknowledged already).
   */
  submitSample(job: SampleJob, reservation?: Reservation): void {
    if (reservation) {
      if (this.reservedSamples > 0) this.reservedSamples--;
    } else {
      this.charge({ owner: job.owner, modelId: '', waiting: 0, queued: 1, bytes: job.bytes });
    }
    const total = Number(job.item['num_samples'] ?? 1);
    this.samples.push({ job, total, done: 0, partial: null, running: false });
    this.pump();
  }

  /** Takes a sampling request out of the queue if it has not started; false if it is not queued here. */
  cancelSample(requestId: string): boolean {
    const i = this.samples.findIndex((queued) => queued.job.requestId === requestId && !queued.running && queued.done === 0);
    if (i < 0) return false;
    this.dropSample(this.samples[i]!);
    return true;
  }

  /** A sampling request leaves the queue (finished, failed or cancelled). */
  private dropSample(queued: QueuedSample): void {
    const i = this.samples.indexOf(queued);
    if (i >= 0) this.samples.splice(i, 1);
    this.attempts.delete(queued.job.requestId);
    this.uncharge(queued.job.owner, queued.job.bytes);
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
      const training = this.readyTraining().length > 0;
      const sampling = this.samples.length > 0;
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
    const batch = this.pickForward();
    if (batch.length > 0) await this.runTraining(batch);
    for (let round = 0; round < SINGLE_OP_ROUNDS; round++) {
      const due = this.readyTraining().filter((job) => !isForward(job.op));
      if (due.length === 0) return;
      for (const job of due) {
        if (this.stopping) return;
        await this.runTraining([job]);
      }
    }
  }

  /**
   * This cycle's forward passes: each run's ready forward(_backward), at most {@link cycleTokens}
   * tokens in all (the first one whatever its size), picked one per key per round, keys (and one
   * key's runs) least recently served first.
   */
  private pickForward(): TrainingJob[] {
    const byKey = new Map<string, TrainingJob[]>();
    for (const job of this.readyTraining()) {
      if (isForward(job.op)) byKey.set(job.owner, [...(byKey.get(job.owner) ?? []), job]);
    }
    const served = (job: TrainingJob): number => this.runs.get(job.modelId)!.served;
    for (const jobs of byKey.values()) jobs.sort((a, b) => served(a) - served(b));
    const picked = roundRobin(byKey, this.keyServed, this.cycleTokens, (job) => ({ cost: forwardTokens(job.op), units: 1 }));
    return picked.map(({ item: job }) => {
      this.keyServed.set(job.owner, this.cycle);
      this.runs.get(job.modelId)!.served = this.cycle;
      return job;
    });
  }

  /** Runs a batch of ready training jobs (forward passes in one worker call per kind, single ops one by one). */
  private async runTraining(batch: TrainingJob[]): Promise<void> {
    for (const job of batch) this.runs.get(job.modelId)!.running = true;
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
      if (!(error instanceof WorkerConnectionError)) for (const job of batch) this.attempts.set(job.requestId, MAX_ATTEMPTS);
    } finally {
      for (const job of batch) {
        const run = this.runs.get(job.modelId)!;
        run.running = false;
        if (retry.has(job) && this.retryable(job)) continue; // stays buffered at the same seq
        if (retry.has(job)) await this.failJob(job.requestId, { message: `the worker failed repeatedly while running this request${cause ? ` (last: ${cause})` : ''}`, category: 'server' });
        this.attempts.delete(job.requestId);
        run.buffered.delete(job.seqId);
        this.uncharge(job.owner, job.bytes);
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
  private async ensureRecovered(job: TrainingJob, client: WorkerClient): Promise<boolean> {
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
    const items = jobs.map((job) => forwardItem(job.modelId, job.op as ForwardOp));
    let reply: { results: ItemResult[] };
    try {
      reply = await client.request(kind, { items });
    } catch (error) {
      if (error instanceof WorkerConnectionError) return new Set(jobs);
      await Promise.all(jobs.map((job) => this.failJob(job.requestId, asJobError(error))));
      return new Set();
    }
    await Promise.all(jobs.map((job, i) => this.finish(job, reply.results[i] ?? { ok: false, error: { message: 'missing result', category: 'server' } })));
    return new Set();
  }

  private async runSingle(client: WorkerClient, job: TrainingJob): Promise<Set<TrainingJob>> {
    if (isForward(job.op)) throw new Error(`unexpected op ${job.op.kind}`);
    try {
      const { op, fields } = toWorkerRequest(job.modelId, job.op);
      const reply = await client.request(op, fields);
      if (op === 'load_adapter') {
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

  /**
   * This sampling cycle's pieces: at most {@link sampleCycleTokens} rows x max_tokens (the first
   * piece at least one sample), requests picked one per key per round, least recently served key
   * first; a request that does not fit whole gives the samples that fit, the rest wait.
   */
  private pickSamples(): { item: QueuedSample; units: number }[] {
    this.cycle++;
    const byKey = new Map<string, QueuedSample[]>();
    for (const queued of this.samples) byKey.set(queued.job.owner, [...(byKey.get(queued.job.owner) ?? []), queued]);
    const picked = roundRobin(byKey, this.keySampled, this.sampleCycleTokens, (queued) => ({ cost: rowTokens(queued.job.item), units: queued.total - queued.done }));
    for (const { item } of picked) this.keySampled.set(item.job.owner, this.cycle);
    return picked;
  }

  private async runSamples(pieces: { item: QueuedSample; units: number }[]): Promise<void> {
    for (const { item } of pieces) item.running = true;
    try {
      await this.samplePieces(pieces);
    } finally {
      for (const { item } of pieces) item.running = false;
    }
  }

  private async samplePieces(pieces: { item: QueuedSample; units: number }[]): Promise<void> {
    let client: WorkerClient;
    try {
      client = await this.options.worker();
    } catch (error) {
      for (const { item } of pieces) this.dropSample(item);
      await Promise.all(pieces.map(({ item }) => this.failJob(item.job.requestId, asJobError(error))));
      return;
    }
    // A request the worker lost stays queued (drawn pieces kept) to be tried again, a few times.
    const requeue = (failed: QueuedSample[], error: unknown): Promise<unknown> =>
      Promise.all(
        failed.map((queued) => {
          if (error instanceof WorkerConnectionError && this.retryable(queued.job)) return undefined;
          this.dropSample(queued);
          return this.failJob(queued.job.requestId, asJobError(error));
        }),
      );
    const live: { item: QueuedSample; units: number }[] = [];
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
      const reply = await client.request('sample', { items: live.map(({ item, units }) => pieceItem(item, units)) });
      await Promise.all(live.map(({ item, units }, i) => this.drawn(item, units, reply.results[i] ?? { ok: false })));
    } catch (error) {
      await requeue(live.map(({ item }) => item), error);
    }
  }

  /** A piece of `units` samples came back: the request finishes once all its samples are drawn. */
  private async drawn(queued: QueuedSample, units: number, result: Record<string, unknown>): Promise<void> {
    this.attempts.delete(queued.job.requestId);
    if (result['ok'] === true) {
      const sequences = result['sequences'] as unknown[];
      queued.partial = queued.partial ? { ...queued.partial, sequences: [...(queued.partial['sequences'] as unknown[]), ...sequences] } : result;
      queued.done += units;
      if (queued.done < queued.total) return;
    }
    this.dropSample(queued);
    await this.finish(queued.job, result['ok'] === true ? queued.partial! : result);
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

/** Single ops a cycle runs after its forward passes, at most this many per run. */
const SINGLE_OP_ROUNDS = 8;

/** Item fields of the prompt-side outputs: only a split request's first piece asks for them. */
const PROMPT_OUTPUTS = ['prompt_logprobs', 'topk_prompt_logprobs', 'prompt_alt_tokens_k', 'target_prompt_logprobs', 'prompt_logprobs_last_n'];

/** Tokens of a forward pass's data (what it costs a cycle). */
function forwardTokens(op: TrainingOp): number {
  if (!isForward(op)) return 0;
  return op.data.reduce((sum, datum) => sum + datum.tokens.shape.reduce((n, d) => n * d, 1), 0);
}

/** What one sample of a sampling item costs a cycle: its max_tokens (0, never split, if unbounded). */
function rowTokens(item: Record<string, unknown>): number {
  return Number((item['sampling_params'] as { max_tokens?: number } | undefined)?.max_tokens ?? 0);
}

/**
 * The worker item for `units` samples of a queued request, after the `done` drawn already: the
 * later pieces number their samples from there (same seeds as unsplit) and skip the prompt outputs.
 */
function pieceItem(queued: QueuedSample, units: number): Record<string, unknown> {
  const item: Record<string, unknown> = { ...queued.job.item, adapter: queued.job.adapter };
  if (units === queued.total) return item;
  item['num_samples'] = units;
  if (queued.done > 0) {
    item['first_sample_index'] = queued.done;
    for (const key of PROMPT_OUTPUTS) delete item[key];
  }
  return item;
}

/**
 * Picks items round-robin across keys, least recently `served` key first (`byKey` lists each key's
 * items in the order to take them), one per key per round, until `budget` is spent. An item has
 * `units` (samples; 1 for a training request) of `cost` each and may be taken in part; the first
 * pick takes at least one unit whatever it costs, later picks only what fits.
 */
function roundRobin<T>(byKey: Map<string, T[]>, served: Map<string, number>, budget: number, size: (item: T) => { cost: number; units: number }): { item: T; units: number }[] {
  const keys = [...byKey.keys()].sort((a, b) => (served.get(a) ?? 0) - (served.get(b) ?? 0));
  const picked: { item: T; units: number }[] = [];
  let left = budget;
  for (let round = 0; ; round++) {
    let more = false;
    for (const key of keys) {
      const item = byKey.get(key)![round];
      if (item === undefined) continue;
      more = true;
      const { cost, units } = size(item);
      const fit = cost > 0 ? Math.min(units, Math.floor(left / cost)) : units;
      const take = picked.length === 0 ? Math.max(1, fit) : fit;
      if (take <= 0) continue;
      picked.push({ item, units: take });
      left -= take * cost;
    }
    if (!more) return picked;
  }
}

function asJobError(error: unknown): JobError {
  if (error instanceof WorkerRequestError) return { message: error.message, category: error.category };
  const category = (error as { category?: unknown } | undefined)?.category;
  return { message: error instanceof Error ? error.message : String(error), category: category === 'user' ? 'user' : 'server' };
}
