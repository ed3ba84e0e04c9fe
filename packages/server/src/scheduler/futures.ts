/**
 * @module In-process notification for futures: a long-polling `retrieve_future` waits here, and the
 * scheduler wakes it the moment the request finishes. No database polling per waiter.
 */

/**
 * Waiters keyed by request id.
 *
 * @example
 * const hub = new FutureHub();
 * const done = hub.wait('r1', 30_000); // resolves true when notified, false on timeout
 * hub.notify('r1');
 */
export class FutureHub {
  private readonly waiters = new Map<string, Set<(done: boolean) => void>>();
  private closed = false;

  /** Resolves `true` when `notify(requestId)` is called, `false` after `timeoutMs`, on abort or once closed. */
  wait(requestId: string, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    return new Promise((resolve) => {
      let set = this.waiters.get(requestId);
      if (!set) {
        set = new Set();
        this.waiters.set(requestId, set);
      }
      const waiters = set;
      const finish = (done: boolean): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        waiters.delete(finish);
        if (waiters.size === 0 && this.waiters.get(requestId) === waiters) this.waiters.delete(requestId);
        resolve(done);
      };
      const onAbort = (): void => finish(false);
      const timer = setTimeout(() => finish(false), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      waiters.add(finish);
    });
  }

  /** Wakes every waiter of `requestId`. */
  notify(requestId: string): void {
    const set = this.waiters.get(requestId);
    if (!set) return;
    for (const finish of [...set]) finish(true);
  }

  /** Answers every waiter now (`false`) and every later wait at once: a stopping server holds no polls. */
  close(): void {
    this.closed = true;
    for (const set of [...this.waiters.values()]) for (const finish of [...set]) finish(false);
  }

  /** Number of requests with at least one waiter (for stats). */
  get waiting(): number {
    let n = 0;
    for (const set of this.waiters.values()) n += set.size;
    return n;
  }
}
