/**
 * @module Learning-rate schedules, as multipliers of the base learning rate (the cookbook's
 * `compute_schedule_lr_multiplier`), with an optional linear warmup.
 */

/** `linear`: 1 − step/total; `cosine`: ½(1 + cos(π·step/total)); `constant`: 1. */
export type LrSchedule = 'linear' | 'cosine' | 'constant';

/** The schedules, for validating user input. */
export const LR_SCHEDULES: readonly LrSchedule[] = ['linear', 'cosine', 'constant'];

/**
 * The learning-rate multiplier at `step` (0-based) of `totalSteps`. With `warmupSteps` > 0 the
 * multiplier rises linearly as (step+1)/warmup over the first steps, and the schedule then runs over
 * the remaining `totalSteps − warmupSteps` (the cookbook itself has no warmup).
 *
 * @example
 * lrMultiplier('linear', 5, 10);             // 0.5
 * lrMultiplier('cosine', 0, 10);             // 1
 * lrMultiplier('constant', 3, 10, 4);        // 1 (last warmup step)
 */
export function lrMultiplier(schedule: LrSchedule, step: number, totalSteps: number, warmupSteps = 0): number {
  if (!Number.isInteger(totalSteps) || totalSteps < 1) throw new RangeError(`totalSteps must be a positive integer, got ${totalSteps}`);
  if (!Number.isInteger(warmupSteps) || warmupSteps < 0 || warmupSteps >= totalSteps) {
    throw new RangeError(`warmupSteps must be an integer in [0, ${totalSteps}), got ${warmupSteps}`);
  }
  if (!Number.isInteger(step) || step < 0 || step >= totalSteps) throw new RangeError(`step must be an integer in [0, ${totalSteps}), got ${step}`);
  if (step < warmupSteps) return (step + 1) / warmupSteps;
  const progress = (step - warmupSteps) / (totalSteps - warmupSteps);
  switch (schedule) {
    case 'linear':
      return 1 - progress;
    case 'cosine':
      return 0.5 * (1 + Math.cos(Math.PI * progress));
    case 'constant':
      return 1;
    default:
      throw new RangeError(`unknown learning-rate schedule ${JSON.stringify(schedule)}; expected one of ${LR_SCHEDULES.join(', ')}`);
  }
}
