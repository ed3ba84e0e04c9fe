/**
 * @module What every `lathe train` recipe shares: the common flags, the connection (remote or an
 * embedded server), the progress bar on the recipe's headline metric, and the checkpoint saved when
 * Ctrl-C stops a run, so that the same `--log-dir` resumes there.
 */
import path from 'node:path';
import { getLastCheckpoint, getLr, submitStepCheckpoint, type CheckpointRecord, type LineSink, type Metrics } from '@lathe/cookbook';
import type { ServiceClient, TrainingClient } from '@lathe/sdk';
import { withService, type ConnectOptions } from '../connect.js';
import { ProgressBar, type ProgressStream } from '../../progress.js';

/** The options every `lathe train` recipe takes (its common flags, plus what the CLI supplies). */
export interface TrainCommonOptions extends ConnectOptions {
  model: string;
  logDir: string;
  /** Default: the recipe's (see each recipe). */
  lr?: number;
  loraRank: number;
  /** Checkpoint every this many steps (0: only at the end). */
  saveEvery: number;
  seed: number;
  /** Stops the run between steps; it then saves a checkpoint to resume from. */
  signal?: AbortSignal;
  /** Where the progress bar goes. */
  progress: ProgressStream;
  /** Status lines (stderr in the CLI). */
  log: (line: string) => void;
}

/** The flags of the recipes that train on a rendered, held-out-split data set (sft, dpo, distill). */
export interface RenderedDataOptions {
  /** Default: the model's recommended renderer. */
  renderer?: string;
  evalEvery: number;
  /** Items held out for the `test/*` metrics (default: a tenth, at most 16). */
  testSize?: number;
}

/** The flags of the recipes that make epochs of batches over a data set (sft, dpo). */
export interface EpochDataOptions extends RenderedDataOptions {
  /** Exactly this many steps (epochs as needed); else `epochs` passes over the data. */
  steps?: number;
  epochs?: number;
  /** Items per step. */
  batchSize: number;
  maxLength?: number;
}

/** How a `lathe train` run ended. */
export interface TrainResult {
  steps: number;
  totalSteps: number;
  interrupted: boolean;
  /** The checkpoint to resume from (interrupted) or the final one. */
  checkpoint?: { name: string; step: number; state_path?: string; sampler_path?: string };
}

/** What the CLI hands a recipe's cookbook loop. */
export interface LoopHooks {
  service: ServiceClient;
  logPath: string;
  signal?: AbortSignal;
  onStep: (step: number, metrics: Metrics) => void;
  console: LineSink;
}

/** The part of every cookbook loop's result that the CLI uses. */
export interface LoopOutcome {
  training: TrainingClient;
  steps: number;
  totalSteps: number;
  interrupted: boolean;
  finalCheckpoint?: CheckpointRecord;
}

/** A recipe whose inputs have been checked: what is left to do needs a server. */
export interface TrainingPlan {
  /** One line on what is trained on what (the CLI adds where it logs or what it resumes). */
  summary: string;
  totalSteps: number;
  /** Steps per pass over the data, for the position recorded with a Ctrl-C checkpoint (default: all of them). */
  batchesPerEpoch?: number;
  /** The progress bar's metric: its label and its name in a step's metrics. */
  headline: { label: string; metric: string };
  /** Runs the cookbook loop. */
  train(hooks: LoopHooks): Promise<LoopOutcome>;
}

/**
 * Runs a prepared recipe against the server of `options` with a progress bar on its headline
 * metric. A run stopped by `options.signal` gets a checkpoint at the step it reached (unless the
 * loop saved one there), so running again with the same `logDir` continues from it.
 *
 * @example
 * const plan: TrainingPlan = { summary: 'rl on arithmetic', totalSteps: 20, headline: { label: 'reward', metric: 'env/all/reward/total' }, train: (hooks) => trainRL({ ...hooks, modelName, dataset, learningRate: 1e-4, maxTokens: 4 }) };
 * const result = await runTraining(options, plan); // { steps: 20, totalSteps: 20, interrupted: false, checkpoint: { name: 'final', … } }
 */
export async function runTraining(options: TrainCommonOptions, plan: TrainingPlan): Promise<TrainResult> {
  const logPath = path.resolve(options.logDir);
  const resumeFrom = getLastCheckpoint(logPath);
  options.log(`${plan.summary}` + (resumeFrom !== undefined ? `; resuming ${logPath} at step ${resumeFrom.step}` : `; logging to ${logPath}`));

  return withService(options, options.log, async (service) => {
    const progress = new ProgressBar(options.progress, plan.totalSteps, resumeFrom?.step ?? 0, plan.headline.label);
    const outcome = await plan
      .train({
        service,
        logPath,
        ...(options.signal !== undefined && { signal: options.signal }),
        onStep: (step, metrics) => {
          const value = metrics[plan.headline.metric];
          if (value !== undefined) progress.update(step + 1, value);
        },
        // The numbers are in metrics.jsonl; the terminal gets the progress bar.
        console: () => {},
      })
      .finally(() => progress.done());
    const { steps, totalSteps } = outcome;
    if (!outcome.interrupted) return { steps, totalSteps, interrupted: false, ...(outcome.finalCheckpoint !== undefined && { checkpoint: outcome.finalCheckpoint }) };

    // Loops save only every saveEvery steps: save where it stopped, so no step is redone.
    const last = getLastCheckpoint(logPath);
    if (last !== undefined && last.step >= steps) return { steps, totalSteps, interrupted: true, checkpoint: last };
    if (steps === 0) return { steps, totalSteps, interrupted: true };
    const perEpoch = plan.batchesPerEpoch ?? totalSteps;
    const checkpoint = await submitStepCheckpoint(outcome.training, logPath, { epoch: Math.floor(steps / perEpoch), batch: steps % perEpoch, step: steps })();
    return { steps, totalSteps, interrupted: true, checkpoint };
  });
}

/** The cookbook's recommended LoRA learning rate, or a message asking for `--lr`. */
export function defaultLearningRate(model: string): number {
  try {
    return getLr(model);
  } catch (error) {
    throw new Error(`no default learning rate for ${model} (${(error as Error).message}); pass --lr`);
  }
}

/** Items held out for evaluation when no size is given: a tenth, at most 16. */
export function defaultTestSize(count: number): number {
  return Math.min(16, Math.floor(count / 10));
}

/**
 * The batching of an epoch recipe's data set: its flags plus the held-out count it settled on.
 *
 * @example
 * preferenceDatasets(pairs, toExample, batchingOf(options, testSize)); // { batchSize, testSize, seed, maxLength? }
 */
export function batchingOf(options: EpochDataOptions & Pick<TrainCommonOptions, 'seed'>, testSize: number): { batchSize: number; testSize: number; seed: number; maxLength?: number } {
  return {
    batchSize: options.batchSize,
    testSize,
    seed: options.seed,
    ...(options.maxLength !== undefined && { maxLength: options.maxLength }),
  };
}

/**
 * The options an epoch recipe passes to its cookbook loop: its data sets, the learning rate and
 * epoch count it settled on, and the flags the loop takes unchanged.
 *
 * @example
 * trainSupervised({ ...hooks, ...epochLoopOptions(options, { train, test }, 1e-4, 3) });
 */
export function epochLoopOptions<Train, Test>(
  options: EpochDataOptions & TrainCommonOptions,
  data: { train: Train; test: Test },
  learningRate: number,
  numEpochs: number,
): { modelName: string; dataset: Train; testData: Test; loraRank: number; seed: number; learningRate: number; numEpochs: number; maxSteps?: number; saveEvery: number; evalEvery: number } {
  return {
    modelName: options.model,
    dataset: data.train,
    testData: data.test,
    loraRank: options.loraRank,
    seed: options.seed,
    learningRate,
    numEpochs,
    ...(options.steps !== undefined && { maxSteps: options.steps }),
    saveEvery: options.saveEvery,
    evalEvery: options.evalEvery,
  };
}

/**
 * How long a run over `batches` batches per epoch is: exactly `steps` steps (as many epochs as that
 * takes), else `epochs` passes (default 1).
 *
 * @example
 * stepsAndEpochs(10, { steps: 25 }); // { numEpochs: 3, totalSteps: 25 }
 */
export function stepsAndEpochs(batches: number, length: { steps?: number; epochs?: number }): { numEpochs: number; totalSteps: number } {
  const numEpochs = length.steps !== undefined ? Math.ceil(length.steps / batches) : (length.epochs ?? 1);
  return { numEpochs, totalSteps: Math.min(batches * numEpochs, length.steps ?? Number.POSITIVE_INFINITY) };
}
