/**
 * @module Recording finished requests in the request log, surviving a store that cannot write
 * (disk full, `database is locked` for longer than the store waits, an I/O error).
 *
 * A request that ran is never reported failed because its result could not be written. The
 * outcome is kept in memory instead, futures are answered from there, and the write is retried
 * in the background with backoff until it succeeds, so a freed disk or a released lock heals the
 * server without a restart. Outcomes of one target (a training run) are written in the order they
 * finished, so the log always holds a prefix of a run's finished requests: replay after a worker
 * crash (log plus held outcomes) and resumption after a restart stay in seq order. Whatever is
 * still held when the process ends stays `pending` in the log and runs again on the next start.
 */
import { packResult, type StoredResult } from '../protocol/results.js';
import type { RequestRepo } from '../store/index.js';
import type { Completion, JobError } from './jobs.js';

/** How a finished request ended, as the log stores it. */
export type Outcome = { status: 'complete'; result: Uint8Array } | { status: 'failed'; error: JobError };

/** Options for {@link OutcomeRecorder}. */
export interface OutcomeRecorderOptions {
  requests: Pick<RequestRepo, 'complete' | 'fail'>;
  /** Wakes the request's waiters (once its outcome is known, written or held). */
  notify: (requestId: string, status: Outcome['status']) => void;
  /** First wait before writing a held outcome again (ms); it doubles up to `maxRetryMs`. */
  firstRetryMs?: number;
  maxRetryMs?: number;
  now?: () => number;
  logError?: (message: string, error: unknown) => void;
  /** Rewrites failure messages before they are stored for clients (hides server paths). */
  redact?: (message: string) => string;
}

interface Tracked {
  key: string;
  context: unknown;
}

/**
 * The lane's {@link Completion}: writes outcomes, holding them in memory while the store fails.
 *
 * @example
 * const recorder = new OutcomeRecorder({ requests: store.requests, notify: (id) => hub.notify(id) });
 * recorder.track(requestId, modelId); // outcomes of one run are written in order
 * await recorder.complete(requestId, { kind: 'json', value: {} });
 * recorder.held(requestId); // the outcome, while the store could not take it yet
 */
export class OutcomeRecorder implements Completion {
  private readonly tracked = new Map<string, Tracked>();
  private readonly heldOutcomes = new Map<string, Outcome & Tracked>();
  /** Held request ids per ordering key, oldest first; a key present here has a retry scheduled. */
  private readonly queues = new Map<string, string[]>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly draining = new Map<string, Promise<boolean>>();
  private readonly firstRetryMs: number;
  private readonly maxRetryMs: number;
  private readonly now: () => number;

  constructor(private readonly options: OutcomeRecorderOptions) {
    this.firstRetryMs = options.firstRetryMs ?? 200;
    this.maxRetryMs = options.maxRetryMs ?? 5000;
    this.now = options.now ?? Date.now;
  }

  /**
   * Orders `requestId`'s outcome after every earlier-finished outcome of `key` (a training run);
   * `context` comes back with it from {@link heldFor}. Untracked requests are ordered on their own.
   */
  track(requestId: string, key: string, context?: unknown): void {
    this.tracked.set(requestId, { key, context });
  }

  complete(requestId: string, result: unknown): Promise<void> {
    return this.record(requestId, { status: 'complete', result: packResult(result as StoredResult) });
  }

  fail(requestId: string, error: JobError): Promise<void> {
    const message = this.options.redact ? this.options.redact(error.message) : error.message;
    return this.record(requestId, { status: 'failed', error: { ...error, message } });
  }

  /** The outcome of `requestId` if it is only in memory (the store has not taken it yet). */
  held(requestId: string): Outcome | undefined {
    return this.heldOutcomes.get(requestId);
  }

  /** Held outcomes of `key`, in the order they finished, with the context given to {@link track}. */
  heldFor(key: string): { requestId: string; outcome: Outcome; context: unknown }[] {
    return (this.queues.get(key) ?? []).map((requestId) => {
      const held = this.heldOutcomes.get(requestId)!;
      return { requestId, outcome: held, context: held.context };
    });
  }

  /** How many outcomes are held in memory. */
  get pending(): number {
    return this.heldOutcomes.size;
  }

  /** Tries once more to write everything held (before a stop); returns how many are still held. */
  async flush(): Promise<number> {
    await Promise.all([...this.queues.keys()].map((key) => this.drain(key)));
    return this.heldOutcomes.size;
  }

  /** Stops the background retries (what is held stays pending in the log). */
  close(): void {
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
  }

  private async record(requestId: string, outcome: Outcome): Promise<void> {
    const tracked = this.tracked.get(requestId) ?? { key: `request:${requestId}`, context: undefined };
    this.tracked.delete(requestId);
    const queue = this.queues.get(tracked.key);
    if (queue) {
      // Earlier outcomes of this run are still waiting for the store: this one goes after them.
      if (!this.heldOutcomes.has(requestId)) queue.push(requestId);
      this.hold(requestId, outcome, tracked);
      return;
    }
    try {
      await this.write(requestId, outcome);
    } catch (error) {
      this.options.logError?.(`could not record the outcome of ${requestId}; holding it in memory and retrying`, error);
      this.queues.set(tracked.key, [requestId]);
      this.hold(requestId, outcome, tracked);
      this.schedule(tracked.key, this.firstRetryMs);
      return;
    }
    this.options.notify(requestId, outcome.status);
  }

  private hold(requestId: string, outcome: Outcome, tracked: Tracked): void {
    // The first outcome wins, as in the log.
    if (!this.heldOutcomes.has(requestId)) this.heldOutcomes.set(requestId, { ...outcome, ...tracked });
    this.options.notify(requestId, this.heldOutcomes.get(requestId)!.status);
  }

  private write(requestId: string, outcome: Outcome): Promise<void> {
    return outcome.status === 'complete'
      ? this.options.requests.complete(requestId, outcome.result, this.now())
      : this.options.requests.fail(requestId, outcome.error, this.now());
  }

  private schedule(key: string, delayMs: number): void {
    const timer = setTimeout(() => {
      this.timers.delete(key);
      void this.drain(key).then((done) => {
        if (!done && this.queues.has(key)) this.schedule(key, Math.min(delayMs * 2, this.maxRetryMs));
      });
    }, delayMs);
    timer.unref();
    this.timers.set(key, timer);
  }

  /** Writes `key`'s held outcomes in order; true once all are written. One drain per key at a time. */
  private drain(key: string): Promise<boolean> {
    let running = this.draining.get(key);
    if (!running) {
      running = (async () => {
        const queue = this.queues.get(key);
        while (queue && queue.length > 0) {
          const requestId = queue[0]!;
          try {
            await this.write(requestId, this.heldOutcomes.get(requestId)!);
          } catch {
            return false;
          }
          queue.shift();
          this.heldOutcomes.delete(requestId);
        }
        this.queues.delete(key);
        return true;
      })().finally(() => this.draining.delete(key));
      this.draining.set(key, running);
    }
    return running;
  }
}

/**
 * Runs a store write that belongs to a request's result (a checkpoint's row, a run's state),
 * retrying with backoff for about `budgetMs`; then throws a server-category error asking the
 * caller to retry, rather than the raw database error.
 *
 * @example
 * await recordWithRetry(() => store.runs.setState(modelId, 'ready'));
 */
export async function recordWithRetry<T>(write: () => Promise<T>, budgetMs = 10_000, firstDelayMs = 50): Promise<T> {
  const deadline = Date.now() + budgetMs;
  for (let delay = firstDelayMs; ; delay = Math.min(delay * 2, 2000)) {
    try {
      return await write();
    } catch (error) {
      if (Date.now() + delay > deadline) {
        throw Object.assign(new Error(`the request ran but its result could not be recorded (${(error as Error).message}); retry`), { category: 'server' as const });
      }
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}
