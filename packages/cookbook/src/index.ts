/**
 * @module @lathe/cookbook: tokenizers, renderers, datum builders and training recipes over @lathe/sdk.
 */
export * from './tokenizers.js';
export * from './supervised/datum.js';
export * from './supervised/data.js';
export * from './supervised/train.js';
export * from './utils/checkpoints.js';
export * from './utils/hyperparams.js';
export * from './utils/lr-schedule.js';
export * from './utils/ml-log.js';
