/**
 * @module Completions of sampling requests per (sampling session, cloned sampler), for
 * `POST /api/v1/retrieve_futures` (docs/protocol.md §5.5): one long poll per client reports every
 * sample of that client that finished since its cursor, instead of one `retrieve_future` per sample.
 *
 * Cursors are positions in one in-memory log. They start at the process's start time in
 * microseconds, so a cursor from an earlier server process is below {@link SessionFutures.base};
 * such a cursor (and 0, the SDK's first poll, or one older than what the log still holds) is
 * answered from the request log in the store, which {@link SessionFutures.stale} tells the route.
 */

/** A finished sampling request as `retrieve_futures` reports it. */
export interface FutureCompletion {
  state: 'finished' | 'failed';
  request_id: string;
}

interface Entry extends FutureCompletion {
  pos: number;
  key: string;
}

/** The log key of a sampling session's clone (`seq_id // 1e9`, docs/protocol.md §5.5). */
export function cloneKey(samplerId: string, clonedSamplerId: number): string {
  return `${clonedSamplerId}:${samplerId}`;
}

/** Each cloned sampler numbers its samples from `1e9 × client_counter` (SDK >= 0.32). */
export const CLONE_SEQ_SPAN = 1_000_000_000;

/**
 * @example
 * const log = new SessionFutures();
 * log.watch('req_1', 'S:sample:0', 7);            // seq 7: the original client (clone 0)
 * log.settled('req_1', 'complete');
 * log.since(cloneKey('S:sample:0', 0), log.base);  // { completions: [{ state: 'finished', request_id: 'req_1' }], cursor }
 */
export class SessionFutures {
  /** Cursors below this come from before this process (or are the SDK's starting 0). */
  readonly base: number;
  private last: number;
  /** Entries in position order; `head` is the first live one (amortised shifting). */
  private entries: Entry[] = [];
  private head = 0;
  /** The position of the newest entry dropped to bound memory: a cursor below it missed something. */
  private dropped: number;
  private readonly watched = new Map<string, string>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private closed = false;

  constructor(
    now: () => number = Date.now,
    /** Most completions held in memory (all sessions together); older ones are read from the store. */
    private readonly capacity = 50_000,
  ) {
    this.base = now() * 1000;
    this.last = this.base;
    this.dropped = this.base;
  }

  /** Notes which session's clone a queued sampling request belongs to (by its `seq_id`; none is clone 0). */
  watch(requestId: string, samplerId: string, seqId: number | null): void {
    this.watched.set(requestId, cloneKey(samplerId, Math.floor((seqId ?? 0) / CLONE_SEQ_SPAN)));
  }

  /** Stops tracking a request that will not finish in this process. */
  unwatch(requestId: string): void {
    this.watched.delete(requestId);
  }

  /** Records the outcome of a watched request (the first one counts) and wakes its session's pollers. */
  settled(requestId: string, status: 'complete' | 'failed'): void {
    const key = this.watched.get(requestId);
    if (key === undefined) return;
    this.watched.delete(requestId);
    this.entries.push({ pos: ++this.last, key, state: status === 'complete' ? 'finished' : 'failed', request_id: requestId });
    if (this.entries.length - this.head > this.capacity) this.dropped = this.entries[this.head++]!.pos;
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
    for (const wake of this.waiters.get(key) ?? []) wake();
  }

  /** True when `cursor` may have missed completions this log no longer (or never) held: read the store too. */
  stale(cursor: number): boolean {
    // A cursor past the newest position was not handed out by this process either.
    return cursor < this.dropped || cursor > this.last;
  }

  /** `key`'s completions after `cursor`, oldest first, and the cursor that acknowledges them. */
  since(key: string, cursor: number): { completions: FutureCompletion[]; cursor: number } {
    // Binary search for the first entry after the cursor.
    let [lo, hi] = [this.head, this.entries.length];
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.entries[mid]!.pos <= cursor) lo = mid + 1;
      else hi = mid;
    }
    const completions: FutureCompletion[] = [];
    for (let i = lo; i < this.entries.length; i++) {
      const e = this.entries[i]!;
      if (e.key === key) completions.push({ state: e.state, request_id: e.request_id });
    }
    // The answer covers everything up to the newest position (a stale cursor's misses come from the store).
    return { completions, cursor: this.last };
  }

  /** Answers every held poll now, and every later wait at once: a stopping server holds no polls. */
  close(): void {
    this.closed = true;
    for (const set of [...this.waiters.values()]) for (const wake of [...set]) wake();
  }

  /** Resolves when `key` gets a completion, after `timeoutMs`, on abort, or once closed. */
  wait(key: string, timeoutMs: number, signal: AbortSignal): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      let set = this.waiters.get(key);
      if (!set) this.waiters.set(key, (set = new Set()));
      const waiters = set;
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        waiters.delete(done);
        if (waiters.size === 0 && this.waiters.get(key) === waiters) this.waiters.delete(key);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      signal.addEventListener('abort', done, { once: true });
      if (signal.aborted) done();
      else waiters.add(done);
    });
  }
}
