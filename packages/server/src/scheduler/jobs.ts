/**
 * @module What a lane queues and reports: training and sampling jobs, their failures, queue
 * reservations and the lane's scheduling limits.
 */
import { WorkerRequestError } from '../worker/client.js';
import type { TrainingOp } from '../worker/ops.js';

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

/** Timer functions; tests inject ones they fire by hand. */
export interface Timers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** Node's timers, unref'd: a pending gap timeout does not keep the process alive. */
export const REAL_TIMERS: Timers = {
  setTimeout: (callback, ms) => setTimeout(callback, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** A queue place taken by `Lane.reserve` or `Lane.reserveSample`. */
export interface Reservation {
  owner: string;
  modelId: string;
  /** 1 when the place is among the run's requests waiting for a missing seq id. */
  waiting: 0 | 1;
  /** 1 when the place counts against the key's bound (0: a retry, which queues nothing). */
  queued: 0 | 1;
  bytes: number;
}

/** Limits on a run's requests waiting for a missing `seq_id` (see lane.ts). */
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

/** Fair scheduling limits of a lane (see lane.ts). */
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

/** A thrown error as a job failure (a worker's user error stays the user's). */
export function asJobError(error: unknown): JobError {
  if (error instanceof WorkerRequestError) return { message: error.message, category: error.category };
  const category = (error as { category?: unknown } | undefined)?.category;
  return { message: error instanceof Error ? error.message : String(error), category: category === 'user' ? 'user' : 'server' };
}
