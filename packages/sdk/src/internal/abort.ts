/**
 * @module Racing a promise against an AbortSignal.
 */

/** `promise`, or a rejection with `toError(signal.reason)` as soon as `signal` fires. */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal, toError: (reason: unknown) => Error): Promise<T> {
  if (signal.aborted) return Promise.reject(toError(signal.reason));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(toError(signal.reason));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error as Error);
      },
    );
  });
}
