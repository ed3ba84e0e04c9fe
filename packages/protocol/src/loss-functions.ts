/**
 * @module The built-in loss functions (tinker-protocol.md §6.3): what `forward_backward`'s
 * `loss_fn` may name. The worker implements them in `worker/lathe_worker/losses.py`;
 * `packages/server/test/worker-tables.test.ts` checks that both list the same names in the same order.
 */

/**
 * The loss functions every Lathe worker implements, in the protocol's spelling.
 *
 * @example
 * LOSS_FUNCTIONS.includes('ppo'); // true
 */
export const LOSS_FUNCTIONS = ['cross_entropy', 'importance_sampling', 'ppo', 'cispo', 'dro'] as const;

/**
 * A built-in loss function's name.
 *
 * @example
 * const loss: LossFnType = 'importance_sampling';
 */
export type LossFnType = (typeof LOSS_FUNCTIONS)[number];

/**
 * Whether `name` is a built-in loss function.
 *
 * @example
 * isLossFn('dro'); // true
 * isLossFn('mse'); // false
 */
export function isLossFn(name: string): name is LossFnType {
  return (LOSS_FUNCTIONS as readonly string[]).includes(name);
}
