/**
 * @module `APIFuture<T>`: the handle every submitting call returns. The request is sent at once,
 * whether or not anyone awaits the future; awaiting it waits for the result.
 */
import { APITimeoutError, APIUserAbortError } from './errors.js';

const noop = (): void => undefined;

/**
 * Options of {@link APIFuture.result}.
 *
 * @example
 * await future.result({ timeoutMs: 30_000, signal: controller.signal });
 */
export interface ResultOptions {
  /** Give up waiting after this many milliseconds (the request itself keeps running on the server). */
  timeoutMs?: number;
  /** Give up waiting when this fires. */
  signal?: AbortSignal;
}

/**
 * The pending result of a request the server runs asynchronously (forward/backward, optimizer
 * steps, checkpoints, sampling). It is `PromiseLike<T>`: `await future` waits for the result,
 * which is cached, so awaiting twice costs nothing. Not awaiting lets you pipeline: submit step
 * N+1 before step N finishes; the requests of one training client still reach the server in order.
 *
 * A failure is kept in the future and only thrown where it is awaited (never as an unhandled rejection).
 *
 * @example
 * const fb = training.forwardBackward(batch, 'cross_entropy'); // sent now
 * const step = training.optimStep({ learningRate: 1e-4 });     // queued right behind it
 * const [out] = await Promise.all([fb, step]);
 * console.log(out.metrics['loss:sum']);
 */
export class APIFuture<T> implements PromiseLike<T> {
  readonly #result: Promise<T>;
  readonly #submitted: Promise<readonly string[]>;

  /**
   * Used by the SDK; users receive futures from client methods.
   *
   * @param submitted resolves with the server's request ids once every request of the call was accepted
   * @param result resolves with the result
   * @example
   * const done = new APIFuture(Promise.resolve(['req_1']), Promise.resolve(42));
   * await done; // 42
   */
  constructor(submitted: Promise<readonly string[]>, result: Promise<T>) {
    this.#submitted = submitted;
    this.#result = result;
    // The failure is delivered where the future is awaited; nobody awaiting it is not an error.
    submitted.catch(noop);
    result.catch(noop);
  }

  /**
   * Attaches callbacks for the result, like `Promise.prototype.then`.
   *
   * @example
   * training.optimStep({ learningRate: 1e-4 }).then((r) => console.log(r.metrics));
   */
  then<R1 = T, R2 = never>(onfulfilled?: ((value: T) => R1 | PromiseLike<R1>) | null, onrejected?: ((reason: unknown) => R2 | PromiseLike<R2>) | null): Promise<R1 | R2> {
    return this.#result.then(onfulfilled, onrejected);
  }

  /**
   * Attaches a failure callback, like `Promise.prototype.catch`.
   *
   * @example
   * await training.loadState(path).catch((e) => console.error(e));
   */
  catch<R = never>(onrejected?: ((reason: unknown) => R | PromiseLike<R>) | null): Promise<T | R> {
    return this.#result.catch(onrejected);
  }

  /**
   * Runs `onfinally` when the future settles, like `Promise.prototype.finally`.
   *
   * @example
   * await sampler.sample(args).finally(() => console.log('sampled'));
   */
  finally(onfinally?: (() => void) | null): Promise<T> {
    return this.#result.finally(onfinally);
  }

  /**
   * Waits for the result, giving up after `timeoutMs` (with {@link APITimeoutError}) or when
   * `signal` fires (with {@link APIUserAbortError}). Giving up does not cancel the request.
   *
   * @example
   * const out = await training.forwardBackward(batch, 'cross_entropy').result({ timeoutMs: 60_000 });
   */
  result(options: ResultOptions = {}): Promise<T> {
    const { timeoutMs, signal } = options;
    if (timeoutMs === undefined && signal === undefined) return this.#result;
    return new Promise<T>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const cleanup = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        cleanup();
        reject(new APIUserAbortError('Stopped waiting for the result.', { cause: signal?.reason }));
      };
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          cleanup();
          reject(new APITimeoutError(`No result after ${timeoutMs} ms.`));
        }, timeoutMs);
      }
      this.#result.then(
        (value) => {
          cleanup();
          resolve(value);
        },
        (error: unknown) => {
          cleanup();
          reject(error as Error);
        },
      );
    });
  }

  /**
   * Resolves once the server has accepted every request of this call (the first of Python's
   * "double await"), with their request ids. After that, the call's place in the run's order is fixed.
   *
   * @example
   * const fb = training.forwardBackward(batch, 'cross_entropy');
   * const [requestId] = await fb.submitted();
   */
  submitted(): Promise<readonly string[]> {
    return this.#submitted;
  }
}
