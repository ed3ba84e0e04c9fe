/**
 * @module The sampling queue of a lane. A sampling cycle decodes at most `sampleCycleTokens` rows x
 * max_tokens, requests picked round-robin across API keys; a larger request is split into pieces of
 * fewer samples, and seeded pieces equal the whole (the worker's `first_sample_index`).
 */
import type { KeyLoad } from './key-load.js';
import type { Reservation, SampleJob } from './jobs.js';
import { roundRobin } from './round-robin.js';

/** A sampling request in the queue, with the samples of it already drawn (a split request). */
export interface QueuedSample {
  job: SampleJob;
  /** Samples the request asks for, and how many are drawn. */
  total: number;
  done: number;
  /** The first piece's reply, with every drawn piece's sequences appended. */
  partial: Record<string, unknown> | null;
  /** In the worker call now running (it cannot be cancelled). */
  running: boolean;
}

/** Some samples of one queued request, drawn in one worker call. */
export interface SamplePiece {
  item: QueuedSample;
  units: number;
}

/** Item fields of the prompt-side outputs: only a split request's first piece asks for them. */
const PROMPT_OUTPUTS = ['prompt_logprobs', 'topk_prompt_logprobs', 'prompt_alt_tokens_k', 'target_prompt_logprobs', 'prompt_logprobs_last_n'];

/** Options for {@link SampleQueue}. */
export interface SampleQueueOptions {
  baseModel: string;
  /** The lane's per-key bounds, charged for every queued request. */
  keys: KeyLoad;
  /** Most requests queued (or reserved) at once. */
  maxQueued: number;
  /** Most rows x max_tokens in one piece batch. */
  cycleTokens: number;
}

/**
 * @example
 * const samples = new SampleQueue({ baseModel, keys, maxQueued: 4096, cycleTokens: 8192 });
 * samples.submit(job);
 * const pieces = samples.pick(cycle); // worker items: pieces.map(pieceItem)
 */
export class SampleQueue {
  private readonly samples: QueuedSample[] = [];
  /** Queue places taken by {@link reserve} and not yet filled or released. */
  private reserved = 0;
  /** The cycle in which each key last had sampling work picked. */
  private readonly keySampled = new Map<string, number>();

  constructor(private readonly options: SampleQueueOptions) {}

  /**
   * Takes a place in the queue for a request of `owner` (`bytes` logged), synchronously, so
   * concurrent submits cannot overshoot the limits; a string (why) when the queue or the key's
   * share of it is full (the caller answers 429). Fill the place with {@link submit} or give it
   * back with {@link release}.
   */
  reserve(owner: string, bytes: number): Reservation | string {
    if (this.samples.length + this.reserved >= this.options.maxQueued) return `sampling queue for ${this.options.baseModel} is full; retry shortly`;
    const full = this.options.keys.full(owner, bytes);
    if (full) return full;
    this.reserved++;
    return this.options.keys.charge({ owner, modelId: '', waiting: 0, queued: 1, bytes });
  }

  /** Gives back a place taken by {@link reserve} that will not be filled. */
  release(reservation: Reservation): void {
    if (this.reserved > 0) this.reserved--;
    this.options.keys.uncharge(reservation.owner, reservation.bytes);
  }

  /** Queues a request, into its reserved place or (resumed after a restart) beyond the limits. */
  submit(job: SampleJob, reservation?: Reservation): void {
    if (reservation) {
      if (this.reserved > 0) this.reserved--;
    } else {
      this.options.keys.charge({ owner: job.owner, modelId: '', waiting: 0, queued: 1, bytes: job.bytes });
    }
    const total = Number(job.item['num_samples'] ?? 1);
    this.samples.push({ job, total, done: 0, partial: null, running: false });
  }

  /** The queued request `requestId` if it can still be cancelled (not started, no piece drawn). */
  cancellable(requestId: string): QueuedSample | undefined {
    return this.samples.find((queued) => queued.job.requestId === requestId && !queued.running && queued.done === 0);
  }

  /** A sampling request leaves the queue (finished, failed or cancelled). */
  drop(queued: QueuedSample): void {
    const i = this.samples.indexOf(queued);
    if (i >= 0) this.samples.splice(i, 1);
    this.options.keys.uncharge(queued.job.owner, queued.job.bytes);
  }

  /** Whether any request is queued (running ones included). */
  get empty(): boolean {
    return this.samples.length === 0;
  }

  /** Requests waiting: a sample in the worker call now running is no longer queued. */
  get waiting(): number {
    return this.samples.filter((queued) => !queued.running).length;
  }

  /**
   * Cycle `cycle`'s pieces: at most `cycleTokens` rows x max_tokens (the first piece at least one
   * sample), requests picked one per key per round, least recently served key first; a request
   * that does not fit whole gives the samples that fit, the rest wait.
   */
  pick(cycle: number): SamplePiece[] {
    const byKey = new Map<string, QueuedSample[]>();
    for (const queued of this.samples) byKey.set(queued.job.owner, [...(byKey.get(queued.job.owner) ?? []), queued]);
    const picked = roundRobin(byKey, this.keySampled, this.options.cycleTokens, (queued) => ({ cost: rowTokens(queued.job.item), units: queued.total - queued.done }));
    for (const { item } of picked) this.keySampled.set(item.job.owner, cycle);
    return picked;
  }
}

/**
 * A piece of `units` samples came back with `result`: whether its request is finished now (all
 * samples drawn, or the piece failed). The drawn sequences are appended to `queued.partial`.
 */
export function addPiece(queued: QueuedSample, units: number, result: Record<string, unknown>): boolean {
  if (result['ok'] !== true) return true;
  const sequences = result['sequences'] as unknown[];
  queued.partial = queued.partial ? { ...queued.partial, sequences: [...(queued.partial['sequences'] as unknown[]), ...sequences] } : result;
  queued.done += units;
  return queued.done >= queued.total;
}

/** What one sample of a sampling item costs a cycle: its max_tokens (0, never split, if unbounded). */
function rowTokens(item: Record<string, unknown>): number {
  return Number((item['sampling_params'] as { max_tokens?: number } | undefined)?.max_tokens ?? 0);
}

/**
 * The worker item of a piece: `units` samples of a queued request, after the `done` drawn already.
 * Later pieces number their samples from there (same seeds as unsplit) and skip the prompt outputs.
 */
export function pieceItem({ item: queued, units }: SamplePiece): Record<string, unknown> {
  const item: Record<string, unknown> = { ...queued.job.item, adapter: queued.job.adapter };
  if (units === queued.total) return item;
  item['num_samples'] = units;
  if (queued.done > 0) {
    item['first_sample_index'] = queued.done;
    for (const key of PROMPT_OUTPUTS) delete item[key];
  }
  return item;
}
