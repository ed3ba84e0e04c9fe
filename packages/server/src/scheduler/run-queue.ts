/**
 * @module The training runs of a lane, each a queue of its requests in `seq_id` order.
 *
 * A request runs once every earlier seq id of its run has run (or was passed: refused at submit);
 * later ones wait in a buffer. Waiting is bounded: a request may wait only within
 * `maxWaitingRequests` seq ids of the missing one and while the run's waiting requests hold at most
 * `maxWaitingBytes`, and a gap not filled within `gapTimeoutMs` is given up (see {@link RunQueues}).
 */
import { isForward, type TrainingOp } from '../worker/ops.js';
import type { KeyLoad } from './key-load.js';
import { REAL_TIMERS, type JobError, type OrderingOptions, type Reservation, type Timers, type TrainingJob } from './jobs.js';
import { roundRobin } from './round-robin.js';

/** One run's queue and what the lane knows of its adapter. */
export interface RunQueue {
  nextSeq: number;
  buffered: Map<number, TrainingJob>;
  /** Seq ids after `nextSeq` that finished without running (refused at submit): the run passes them. */
  passed: Set<number>;
  /** Places taken by {@link RunQueues.reserve} for requests not yet queued. */
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

/** A gap given up: the seq ids never sent, and the requests that waited for them (out of the queue now). */
export interface GivenUpGap {
  owner: string;
  modelId: string;
  lost: number[];
  /** What a late arrival of a lost seq id is told. */
  lostError: JobError;
  failed: { job: TrainingJob; error: JobError }[];
}

/** Options for {@link RunQueues}. */
export interface RunQueuesOptions extends OrderingOptions {
  /** The lane's per-key bounds, charged for every queued request. */
  keys: KeyLoad;
  /** A gap timed out: its waiting requests left the queue and must be failed. */
  onGiveUp: (gap: GivenUpGap) => void;
}

/**
 * @example
 * const runs = new RunQueues({ keys, onGiveUp: (gap) => failAll(gap) });
 * runs.register('S:train:0');
 * runs.submit(job); // null: queued; else why it was refused
 * for (const job of runs.ready()) { run(job); runs.done(job); }
 */
export class RunQueues {
  private readonly runs = new Map<string, RunQueue>();
  /** The cycle in which each key last had a forward pass picked. */
  private readonly keyServed = new Map<string, number>();
  private readonly maxWaitingRequests: number;
  private readonly maxWaitingBytes: number;
  private readonly gapTimeoutMs: number;
  private readonly timers: Timers;

  constructor(private readonly options: RunQueuesOptions) {
    this.maxWaitingRequests = options.maxWaitingRequests ?? 256;
    this.maxWaitingBytes = options.maxWaitingBytes ?? 256 * 1024 * 1024;
    this.gapTimeoutMs = options.gapTimeoutMs ?? 10 * 60 * 1000;
    this.timers = options.timers ?? REAL_TIMERS;
  }

  /** See `Lane.registerRun`. */
  register(modelId: string, nextSeq = 0, needsRecovery = false, passed: Iterable<number> = []): void {
    if (this.runs.has(modelId)) return;
    const run: RunQueue = { nextSeq, buffered: new Map(), passed: new Set(passed), reserved: { count: 0, bytes: 0 }, gap: null, running: false, served: 0, needsRecovery, lost: null };
    this.runs.set(modelId, run);
    this.advance(run);
  }

  /** The queue of a registered run. */
  get(modelId: string): RunQueue {
    const run = this.runs.get(modelId);
    if (!run) throw new Error(`no run ${modelId} in this lane`);
    return run;
  }

  /** The seq id the run expects next (for rejecting stale ids). */
  expectedSeq(modelId: string): number | undefined {
    return this.runs.get(modelId)?.nextSeq;
  }

  /** Every run (to mark them all for recovery). */
  all(): IterableIterator<RunQueue> {
    return this.runs.values();
  }

  /**
   * Takes a place for request `seqId` of `owner`'s run before it is logged, synchronously, so
   * concurrent submits cannot overshoot the limits; a string (why) when the key has too much queued
   * or the request would wait beyond the run's limits. A request that runs next or fills the gap is
   * admitted within the key's bound, and the first one to wait whatever its size. Give the place to
   * {@link submit} or back with {@link release}.
   */
  reserve(owner: string, modelId: string, seqId: number, bytes: number): Reservation | string {
    const run = this.runs.get(modelId);
    if (!run || seqId < run.nextSeq || run.buffered.has(seqId) || run.passed.has(seqId)) return { owner, modelId, waiting: 0, queued: 0, bytes: 0 }; // stale or a retry
    const missing = this.firstMissing(run);
    // The request that fills a gap others wait behind is admitted whatever the key holds: it frees them.
    const unblocks = seqId === run.nextSeq && run.buffered.size > 0;
    const full = unblocks ? null : this.options.keys.full(owner, bytes);
    if (full) return full;
    if (seqId <= missing) return this.options.keys.charge({ owner, modelId, waiting: 0, queued: 1, bytes });
    if (!this.inWindow(modelId, seqId)) {
      return `seq_id ${seqId} of ${modelId} is too far ahead: seq_id ${missing} has not arrived, and at most ${this.maxWaitingRequests} later requests may wait for it; send the earlier requests first`;
    }
    const waiting = this.waitingBytes(run, missing) + run.reserved.bytes;
    if (waiting > 0 && waiting + bytes > this.maxWaitingBytes) {
      return `requests of ${modelId} waiting for the missing seq_id ${missing} already hold ${waiting} bytes (at most ${this.maxWaitingBytes}); send seq_id ${missing} first`;
    }
    run.reserved.count++;
    run.reserved.bytes += bytes;
    return this.options.keys.charge({ owner, modelId, waiting: 1, queued: 1, bytes });
  }

  /** Gives back a place taken by {@link reserve} that will not be used. */
  release(reservation: Reservation): void {
    this.leaveWaiting(reservation);
    if (reservation.queued) this.options.keys.uncharge(reservation.owner, reservation.bytes);
  }

  /**
   * Queues a training request (into its `reservation`, if it took one). Returns null once queued, or
   * why it cannot run: the run has gone past its seq id (it gave up waiting for it); that request
   * is not queued and must fail.
   */
  submit(job: TrainingJob, reservation?: Reservation): string | null {
    const run = this.get(job.modelId);
    if (reservation) this.leaveWaiting(reservation);
    // Resumed requests (no reservation) are queued whatever the key's bound: they were acknowledged.
    if (!reservation?.queued) this.options.keys.charge({ owner: job.owner, modelId: job.modelId, waiting: 0, queued: 1, bytes: job.bytes });
    if (job.seqId < run.nextSeq || run.passed.has(job.seqId)) {
      this.options.keys.uncharge(job.owner, job.bytes);
      return `seq_id ${job.seqId} of ${job.modelId} arrived after the run went past it (the next expected seq_id is ${run.nextSeq})`;
    }
    run.buffered.set(job.seqId, job);
    this.watchGap(job.modelId, run);
    return null;
  }

  /**
   * Whether `seqId` is near enough to the run's first missing seq id to wait for it (at most
   * `maxWaitingRequests` beyond). Beyond, a request is not accepted, nor a refusal recorded.
   */
  inWindow(modelId: string, seqId: number): boolean {
    const run = this.runs.get(modelId);
    return !run || seqId - this.firstMissing(run) <= this.maxWaitingRequests;
  }

  /** See `Lane.pass`; false when there was nothing to pass (stale, or queued already). */
  pass(modelId: string, seqId: number): boolean {
    const run = this.runs.get(modelId);
    if (!run || seqId < run.nextSeq || run.buffered.has(seqId)) return false;
    run.passed.add(seqId);
    this.advance(run);
    this.watchGap(modelId, run);
    return true;
  }

  /** Each run's next request, if it has arrived and the run is not running one. */
  ready(): TrainingJob[] {
    const ready: TrainingJob[] = [];
    for (const run of this.runs.values()) {
      const job = run.running ? undefined : run.buffered.get(run.nextSeq);
      if (job) ready.push(job);
    }
    return ready;
  }

  /**
   * This cycle's forward passes: each run's ready forward(_backward), at most `cycleTokens`
   * tokens in all (the first one whatever its size), picked one per key per round, keys (and one
   * key's runs) least recently served first.
   */
  pickForward(cycle: number, cycleTokens: number): TrainingJob[] {
    const byKey = new Map<string, TrainingJob[]>();
    for (const job of this.ready()) {
      if (isForward(job.op)) byKey.set(job.owner, [...(byKey.get(job.owner) ?? []), job]);
    }
    const served = (job: TrainingJob): number => this.get(job.modelId).served;
    for (const jobs of byKey.values()) jobs.sort((a, b) => served(a) - served(b));
    const picked = roundRobin(byKey, this.keyServed, cycleTokens, (job) => ({ cost: forwardTokens(job.op), units: 1 }));
    return picked.map(({ item: job }) => {
      this.keyServed.set(job.owner, cycle);
      this.get(job.modelId).served = cycle;
      return job;
    });
  }

  /** A request ran (or failed for good): it leaves the queue and its run moves on to the next seq id. */
  done(job: TrainingJob): void {
    const run = this.get(job.modelId);
    run.buffered.delete(job.seqId);
    this.options.keys.uncharge(job.owner, job.bytes);
    run.nextSeq = job.seqId + 1;
    this.advance(run);
    this.watchGap(job.modelId, run);
  }

  /** Requests queued across runs. */
  get size(): number {
    let size = 0;
    for (const run of this.runs.values()) size += run.buffered.size;
    return size;
  }

  /** The reservation's place among the run's waiting requests is filled or given back. */
  private leaveWaiting(reservation: Reservation): void {
    const run = this.runs.get(reservation.modelId);
    if (!run || !reservation.waiting) return;
    run.reserved.count--;
    run.reserved.bytes -= reservation.bytes;
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

  /**
   * The gap at `missing` was not filled in time: every request waiting behind it leaves the queue
   * to fail with a user error naming the missing seq id, the missing seq ids are reported lost (so
   * one that arrives late gets that answer instead of running out of order), and the run goes on
   * with the seq id after the last request that waited.
   */
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
    for (const job of waiting) this.options.keys.uncharge(job.owner, job.bytes);
    this.options.onGiveUp({
      owner: waiting[0]!.owner,
      modelId,
      lost,
      lostError: {
        message: `${missingIds} of ${modelId} did not arrive within ${seconds} s; the run gave up on ${lost.length === 1 ? 'it' : 'them'}, failed the requests that waited, and went on from seq_id ${last + 1}`,
        category: 'user',
      },
      failed: waiting.map((job) => ({
        job,
        error: { message: `seq_id ${job.seqId} of ${modelId} waited ${seconds} s for ${missingIds}, which did not arrive; it was not run. The run goes on from seq_id ${last + 1}`, category: 'user' },
      })),
    });
  }
}

/** Tokens of a forward pass's data (what it costs a cycle). */
function forwardTokens(op: TrainingOp): number {
  if (!isForward(op)) return 0;
  return op.data.reduce((sum, datum) => sum + datum.tokens.shape.reduce((n, d) => n * d, 1), 0);
}
