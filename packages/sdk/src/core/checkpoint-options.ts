/**
 * @module Options of `TrainingClient`'s checkpoint calls: save and load state, save weights for a
 * sampler or as a PEFT folder.
 */
import type { RequestOptions } from './request-options.js';
import type { OptimizerConfig } from './types.js';

/**
 * Options of `saveState`.
 *
 * @example
 * await training.saveState('step-100', { ttlSeconds: 7 * 24 * 3600 });
 */
export interface SaveStateOptions extends RequestOptions {
  /** Delete the checkpoint after this many seconds (default: keep). */
  ttlSeconds?: number;
  /** Replace a checkpoint of the same name. */
  overwrite?: boolean;
  /** Stored with the checkpoint and listed with it (string values). */
  userMetadata?: Record<string, string>;
}

/**
 * Options of `loadState` / `loadStateWithOptimizer`.
 *
 * @example
 * await training.loadState(path, { optimizerConfig: { type: 'dimuon' } });
 */
export interface LoadStateOptions extends RequestOptions {
  /** The run's optimizer, as the SDK >= 0.29 sends it; it must be the one the run was created with. */
  optimizerConfig?: OptimizerConfig;
}

/**
 * Options of `saveWeightsExternal`.
 *
 * @example
 * await training.saveWeightsExternal('hf', { ttlSeconds: 86_400 });
 */
export interface SaveWeightsExternalOptions extends RequestOptions {
  /** Delete the checkpoint after this many seconds (default: keep). */
  ttlSeconds?: number;
}

/**
 * Options of `saveWeightsForSampler`.
 *
 * @example
 * await training.saveWeightsForSampler('final', { ttlSeconds: 3600 });
 */
export interface SaveWeightsForSamplerOptions extends RequestOptions {
  /** Delete the weights after this many seconds (default: keep). */
  ttlSeconds?: number;
  /** Stored with the checkpoint and listed with it (string values). */
  userMetadata?: Record<string, string>;
}
