/**
 * @module What the cookbook's training loops (supervised, DPO, RL, distillation) share: the common
 * settings, Adam's defaults, argument checks, and the bookkeeping of a run in `logPath` (opening
 * its logger and last checkpoint, logging a step, the result of a run already complete).
 */
import type { ServiceClient, TrainingClient } from '@lathe/sdk';
import { getLastCheckpoint, type CheckpointRecord } from './checkpoints.js';
import { loopLoggerOptions, MetricsLogger, type LineSink, type Metrics, type MetricsReporter } from './ml-log.js';

/** Adam settings of every step. */
export interface AdamSettings {
  beta1: number;
  beta2: number;
  eps: number;
}

/** Adam's settings when a loop is given none (the cookbook's defaults). */
export const DEFAULT_ADAM: AdamSettings = { beta1: 0.9, beta2: 0.95, eps: 1e-8 };

/** The settings every training loop takes (each loop adds its data and algorithm). */
export interface LoopConfig {
  service: ServiceClient;
  /** Where `config.json`, `metrics.jsonl` and `checkpoints.jsonl` go; a run found here is resumed (or, if complete, returned as is). */
  logPath: string;
  /** The base model of a new run. */
  modelName: string;
  /** Default 32. */
  loraRank?: number;
  /** Seed of a new adapter's initialisation. */
  seed?: number;
  /** Default { beta1: 0.9, beta2: 0.95, eps: 1e-8 }. */
  adam?: Partial<AdamSettings>;
  /** Save state + sampler weights every this many steps (default 20; 0 = only the final save). */
  saveEvery?: number;
  /** Lifetime of periodic checkpoints (default 7 days); the final one is kept. */
  ttlSeconds?: number;
  /** Start a new run from these weights (fresh optimizer); ignored when resuming. */
  loadCheckpointPath?: string;
  /** Stops the loop before its next step; steps in flight finish and are logged, and no final checkpoint is saved. */
  signal?: AbortSignal;
  /** Called with each step's metrics once they are logged. */
  onStep?: (step: number, metrics: Metrics) => void;
  /** Where the metrics table is printed (default `console.log`). */
  console?: LineSink;
  /** Also report each metrics row to the server's dashboard (best effort; see `MetricsLoggerOptions.report`). */
  reportMetrics?: MetricsReporter;
}

/** What every training loop reports (each loop adds the clients it made). */
export interface LoopResult {
  training: TrainingClient;
  /** Steps done in all, counting those before a resume. */
  steps: number;
  totalSteps: number;
  /** True when `signal` stopped the run before the end (no final checkpoint then). */
  interrupted: boolean;
  resumedFrom?: CheckpointRecord;
  finalCheckpoint?: CheckpointRecord;
}

/**
 * Throws a `RangeError` naming the first value that is not an integer of at least `min` (default 0).
 *
 * @example
 * requireIntegers({ saveEvery, evalEvery }); // RangeError: saveEvery must be a non-negative integer, got -1
 * requireIntegers({ numSteps }, 1); // RangeError: numSteps must be a positive integer, got 0
 */
export function requireIntegers(values: Record<string, number>, min: 0 | 1 = 0): void {
  for (const [name, value] of Object.entries(values)) {
    if (!Number.isInteger(value) || value < min) throw new RangeError(`${name} must be a ${min === 0 ? 'non-negative' : 'positive'} integer, got ${value}`);
  }
}

/**
 * Throws a `RangeError` unless the learning rate is positive.
 *
 * @example
 * requirePositiveLearningRate(0); // RangeError: learningRate must be positive, got 0
 */
export function requirePositiveLearningRate(learningRate: number): void {
  if (!(learningRate > 0)) throw new RangeError(`learningRate must be positive, got ${learningRate}`);
}

/** A loop's run in `logPath` as found at its start: its logger and the checkpoint it resumes from. */
export interface RunLog {
  logger: MetricsLogger;
  resumedFrom: CheckpointRecord | undefined;
  /** The step the loop starts at (the resumed checkpoint's, else 0). */
  startStep: number;
}

/**
 * Opens a loop's logger on `config.logPath` (reporting under the model id `modelId` returns once
 * the training client exists) and finds the checkpoint to resume from.
 *
 * @example
 * const { logger, resumedFrom, startStep } = openRunLog(config, () => training.modelId);
 */
export function openRunLog(config: LoopConfig, modelId: () => string | undefined): RunLog {
  const logger = new MetricsLogger(config.logPath, loopLoggerOptions(config, modelId));
  const resumedFrom = getLastCheckpoint(config.logPath);
  return { logger, resumedFrom, startStep: resumedFrom?.step ?? 0 };
}

/**
 * Logs a step's metrics and hands them to `config.onStep`.
 *
 * @example
 * logStep(logger, config, step, { train_mean_nll: 1.2 });
 */
export function logStep(logger: MetricsLogger, config: Pick<LoopConfig, 'onStep'>, step: number, metrics: Metrics): void {
  logger.logMetrics(step, metrics);
  config.onStep?.(step, metrics);
}

/**
 * Logs the held-out metrics measured after the last step (as step `totalSteps`, done) unless
 * there are none.
 *
 * @example
 * logFinalEvaluation(logger, config, 100, { 'test/nll': 0.8 });
 */
export function logFinalEvaluation(logger: MetricsLogger, config: Pick<LoopConfig, 'onStep'>, totalSteps: number, evaluation: Metrics): void {
  if (Object.keys(evaluation).length > 0) logStep(logger, config, totalSteps, { ...evaluation, 'progress/done_frac': 1 });
}

/**
 * The counts of a loop's result for a run found complete in `logPath` (its final checkpoint): the
 * loop hands back those weights rather than train or log again.
 *
 * @example
 * if (resumedFrom?.final === true) return { training, ...completedRun(resumedFrom) };
 */
export function completedRun(final: CheckpointRecord): Omit<LoopResult, 'training'> {
  return { steps: final.step, totalSteps: final.step, interrupted: false, resumedFrom: final, finalCheckpoint: final };
}
