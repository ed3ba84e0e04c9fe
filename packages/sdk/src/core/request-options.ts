/**
 * @module Per-call options accepted (as the last argument) by every client method.
 */

/**
 * Per-call overrides.
 *
 * - `signal` aborts the call: a request not yet sent is never sent, waiting stops, and the call
 *   rejects with `APIUserAbortError`. (A request the server already accepted still runs there.)
 * - `timeoutMs` limits each HTTP request of the call (per attempt; retries get a fresh limit). To
 *   bound the wait for a future's result, use `future.result({ timeoutMs })` or pass
 *   `signal: AbortSignal.timeout(ms)`.
 * - `maxRetries` overrides the client's retry count for this call's requests.
 * - `headers` are added to this call's requests.
 *
 * @example
 * await rest.listTrainingRuns({ limit: 5 }, { timeoutMs: 5_000, maxRetries: 0 });
 * await training.forwardBackward(batch, 'cross_entropy', undefined, { signal: AbortSignal.timeout(120_000) });
 */
export interface RequestOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
  maxRetries?: number;
  headers?: Record<string, string>;
}
