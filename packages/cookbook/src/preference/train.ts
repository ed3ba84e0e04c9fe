/**
 * @module Direct preference optimisation (the cookbook's `preference/train_dpo.py`): each step
 * scores the batch's chosen/rejected pairs under a frozen reference, then trains the DPO loss
 * through `forwardBackwardCustom` (loss and gradient computed here, sent back as a linear surrogate).
 * Logs `metrics.jsonl`, `config.json` and `checkpoints.jsonl` under `logPath` and resumes from there.
 */
import { ModelInput, TensorData, type Datum, type SamplingClient, type TrainingClient } from '@lathe/sdk';
import { isSaveStep, openTrainingClient, readCheckpoints, submitCheckpoint, submitStepCheckpoint, type LoopState } from '../utils/checkpoints.js';
import { completedRun, DEFAULT_ADAM, logFinalEvaluation, logStep, openRunLog, requireIntegers, requirePositiveLearningRate, type LoopConfig, type LoopResult } from '../utils/loop.js';
import { lrMultiplier, type LrSchedule } from '../utils/lr-schedule.js';
import { prefixMetrics, type Metrics } from '../utils/ml-log.js';
import type { SupervisedDataset } from '../supervised/data.js';
import { dpoLoss, logprobValues, type DpoMetrics } from './dpo-loss.js';

/** Settings of {@link trainDPO}; `service`, `logPath`, `modelName` and `dataset` are required. */
export interface DpoConfig extends LoopConfig {
  /** Batches laid out as chosen/rejected pairs ({@link PreferenceDataset}). */
  dataset: SupervisedDataset;
  /** Held-out pairs (same layout), scored as `test/*` before every `evalEvery`-th step and at the end. */
  testData?: readonly Datum[];
  /** Default 0.1. */
  beta?: number;
  /** Default 1e-5. */
  learningRate?: number;
  /** Default `linear`. */
  lrSchedule?: LrSchedule;
  /** Default 1. */
  numEpochs?: number;
  maxSteps?: number;
  /** Default 10 (0 = only before the first step and after the last). */
  evalEvery?: number;
  /**
   * Sampler weights of a separate frozen reference; default: a snapshot of the starting weights
   * (those of `loadCheckpointPath` when given), kept like the final checkpoint.
   */
  referenceModelPath?: string;
}

/** What {@link trainDPO} did. */
export interface DpoResult extends LoopResult {
  /** The frozen reference the run was scored against. */
  reference: SamplingClient;
}

/** The name of the `checkpoints.jsonl` record of a run's frozen reference (sampler weights, step 0). */
export const DPO_REFERENCE_CHECKPOINT = 'reference';

/**
 * Trains with DPO on every batch of `dataset` for `numEpochs` (resuming the run in `logPath`, with
 * its optimizer state and its reference, if there is one), logging `dpo_loss`, `accuracy`,
 * `margin`, `chosen_reward`, `rejected_reward` (of each batch, before its update), `learning_rate`,
 * `num_pairs`, `progress/*`, `optim/*`, `time/step` and `test/<same>` to `metrics.jsonl`, checkpoints every
 * `saveEvery` steps and a final one (state + sampler weights).
 *
 * @example
 * const { train, test } = preferenceDatasets(answerFormatPairs(), roleColonExample(loadTokenizer('qwen3')), { batchSize: 4, testSize: 4 });
 * await trainDPO({ service, logPath: 'runs/dpo', modelName: 'Qwen/Qwen3-8B', dataset: train, testData: test, beta: 0.1, learningRate: 1e-5 });
 */
export async function trainDPO(config: DpoConfig): Promise<DpoResult> {
  const { service, dataset, testData } = config;
  const beta = config.beta ?? 0.1;
  const learningRate = config.learningRate ?? 1e-5;
  const schedule = config.lrSchedule ?? 'linear';
  const evalEvery = config.evalEvery ?? 10;
  const saveEvery = config.saveEvery ?? 20;
  const adam = { ...DEFAULT_ADAM, ...config.adam };
  if (!(beta > 0)) throw new RangeError(`beta must be positive, got ${beta}`);
  requirePositiveLearningRate(learningRate);
  requireIntegers({ evalEvery, saveEvery });
  if (testData !== undefined && testData.length % 2 !== 0) throw new RangeError(`testData must hold chosen/rejected pairs, got ${testData.length} datums`);
  const batchesPerEpoch = dataset.length;
  const totalSteps = Math.min(batchesPerEpoch * (config.numEpochs ?? 1), config.maxSteps ?? Number.POSITIVE_INFINITY);
  if (!(totalSteps >= 1)) throw new RangeError(`nothing to train: ${totalSteps} steps`);
  lrMultiplier(schedule, 0, totalSteps);

  const { logPath } = config;
  const { logger, resumedFrom, startStep } = openRunLog(config, () => training.modelId);
  if (resumedFrom?.final === true) {
    const [training, reference] = await Promise.all([openTrainingClient(config, resumedFrom), openReference(config)]);
    return { training, reference, ...completedRun(resumedFrom) };
  }
  // A fresh start also clears the metrics of an earlier attempt that saved no checkpoint.
  logger.truncateFrom(startStep);
  logger.logConfig({
    modelName: config.modelName,
    beta,
    loraRank: config.loraRank ?? 32,
    seed: config.seed ?? null,
    learningRate,
    lrSchedule: schedule,
    numEpochs: config.numEpochs ?? 1,
    maxSteps: config.maxSteps ?? null,
    adam,
    evalEvery,
    saveEvery,
    ttlSeconds: config.ttlSeconds ?? null,
    loadCheckpointPath: config.loadCheckpointPath ?? null,
    referenceModelPath: config.referenceModelPath ?? null,
    batchesPerEpoch,
    totalSteps,
    testPairs: (testData?.length ?? 0) / 2,
    resumedFrom: resumedFrom?.state_path ?? null,
  });

  const training = await openTrainingClient(config, resumedFrom);
  // Frozen: the starting weights, saved (and recorded, for a resume) before any update, or a separate saved model.
  const reference = resumedFrom !== undefined || config.referenceModelPath !== undefined ? await openReference(config) : await snapshotReference(training, logPath);
  const testReference = testData !== undefined && testData.length > 0 ? await referenceLogprobs(reference, testData) : undefined;
  const evaluate = async (): Promise<Metrics> =>
    testData === undefined || testReference === undefined ? {} : prefixMetrics('test/', { ...(await evaluateDpo(training, testData, testReference, beta)) });

  const loopState = (steps: number): LoopState => ({ epoch: Math.floor(steps / batchesPerEpoch), batch: steps % batchesPerEpoch, step: steps });
  let epoch = -1;
  for (let step = startStep; step < totalSteps; step++) {
    if (config.signal?.aborted === true) {
      return { training, reference, steps: step, totalSteps, interrupted: true, ...(resumedFrom !== undefined && { resumedFrom }) };
    }
    const started = performance.now();
    const stepEpoch = Math.floor(step / batchesPerEpoch);
    if (stepEpoch !== epoch) dataset.setEpoch((epoch = stepEpoch));
    const batch = dataset.getBatch(step % batchesPerEpoch);
    const evaluation = step === 0 || (evalEvery > 0 && step % evalEvery === 0) ? await evaluate() : {};
    const batchReference = await referenceLogprobs(reference, batch);
    let dpo: DpoMetrics | undefined;
    const stepLr = learningRate * lrMultiplier(schedule, step, totalSteps);
    const backward = training.forwardBackwardCustom(batch, (data, logprobs) => {
      const result = dpoLoss(data, logprobValues(logprobs), batchReference, beta);
      dpo = result.metrics;
      return { loss: result.loss, gradients: result.gradients };
    });
    const optim = training.optimStep({ learningRate: stepLr, ...adam });
    await backward;
    const optimOut = await optim;
    if (isSaveStep(step + 1, saveEvery, totalSteps)) await submitStepCheckpoint(training, logPath, loopState(step + 1), config.ttlSeconds)();
    const metrics: Metrics = {
      ...dpo!,
      learning_rate: stepLr,
      num_pairs: batch.length / 2,
      'progress/epoch': stepEpoch,
      'progress/batch': step,
      'progress/done_frac': (step + 1) / totalSteps,
      ...prefixMetrics('optim/', optimOut.metrics),
      ...evaluation,
      'time/step': (performance.now() - started) / 1000,
    };
    logStep(logger, config, step, metrics);
  }
  const finalCheckpoint = await submitCheckpoint(training, 'final', logPath, loopState(totalSteps), { kind: 'both', final: true })();
  logFinalEvaluation(logger, config, totalSteps, await evaluate());
  return { training, reference, steps: totalSteps, totalSteps, interrupted: false, finalCheckpoint, ...(resumedFrom !== undefined && { resumedFrom }) };
}

/** Saves the starting weights as the run's reference and records them in `checkpoints.jsonl` (step 0, no state). */
async function snapshotReference(training: TrainingClient, logPath: string): Promise<SamplingClient> {
  const record = await submitCheckpoint(training, DPO_REFERENCE_CHECKPOINT, logPath, { epoch: 0, batch: 0, step: 0 }, { kind: 'sampler' })();
  return training.createSamplingClient(record.sampler_path!);
}

/** The reference of a run being resumed: `referenceModelPath`, else the one recorded when the run started. */
async function openReference(config: DpoConfig): Promise<SamplingClient> {
  if (config.referenceModelPath !== undefined) return config.service.createSamplingClient({ modelPath: config.referenceModelPath });
  const recorded = readCheckpoints(config.logPath).findLast((record) => record.name === DPO_REFERENCE_CHECKPOINT && typeof record.sampler_path === 'string');
  if (recorded === undefined) throw new Error(`${config.logPath} has checkpoints but no "${DPO_REFERENCE_CHECKPOINT}" record: cannot resume DPO without its reference (pass referenceModelPath)`);
  return config.service.createSamplingClient({ modelPath: recorded.sampler_path! });
}

/**
 * The reference model's logprob of every target token of each datum (aligned with `target_tokens`):
 * the full sequence is the input plus the last target, scored in one prompt-logprobs request.
 *
 * @example
 * const ref = await referenceLogprobs(await training.saveWeightsAndGetSamplingClient(), batch);
 */
export async function referenceLogprobs(reference: SamplingClient, data: readonly Datum[]): Promise<Float64Array[]> {
  return Promise.all(
    data.map(async (datum, i) => {
      const targets = datum.lossFnInputs['target_tokens'];
      if (targets === undefined) throw new RangeError(`datum ${i} has no target_tokens`);
      const values = targets instanceof TensorData ? targets.data : (targets as ArrayLike<number | bigint>);
      const sequence = ModelInput.fromInts([...datum.modelInput.toInts(), Number(values[values.length - 1])]);
      const logprobs = await reference.computeLogprobs(sequence);
      return Float64Array.from(logprobs.slice(1), (v) => v ?? Number.NaN);
    }),
  );
}

/**
 * DPO statistics of held-out pairs under the current weights (a forward pass, no update).
 *
 * @example
 * const before = await evaluateDpo(training, testPairs, await referenceLogprobs(reference, testPairs), 0.1);
 */
export async function evaluateDpo(training: TrainingClient, data: readonly Datum[], reference: readonly Float64Array[], beta: number): Promise<DpoMetrics> {
  const out = await training.forward(data, 'cross_entropy');
  return dpoLoss(data, logprobValues(out.lossFnOutputs.map((o) => o['logprobs']!)), reference, beta).metrics;
}
