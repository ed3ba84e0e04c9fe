/**
 * @module Waiting for a condition in tests: poll it, with a deadline, instead of sleeping.
 */

/**
 * Resolves with `probe`'s first defined value; throws naming `what` after `timeoutMs`.
 *
 * @example
 * await until('the worker to exit', async () => (pool.has(MODEL) ? undefined : true));
 */
export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 120_000, pollMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}
