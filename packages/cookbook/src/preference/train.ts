/**
 * @module Direct preference optimisation (the cookbook's `preference/train_dpo.py`): each step
 * scores the batch's chosen/rejected pairs under a frozen reference, then trains the DPO loss
 * through `forwardBackwardCustom` (loss and gradient computed here, sent back as a linear surrogate).
 */
import { ModelInput, TensorData, type Datum, type SamplingClient, type ServiceClient, type TrainingClient } from '@lathe/sdk';
import { submitCheckpoint, type CheckpointRecord } from '../utils/checkpoints.js';
import { lrMultiplier, type LrSchedule } from '../utils/lr-schedule.js';
import { loopLoggerOptions, MetricsLogger, prefixMetrics, type LineSink, type Metrics, type MetricsReporter } from '../utils/ml-log.js';
import type { SupervisedDataset } from '../supervised/data.js';
import type { AdamSettings } from '../supervised/train.js';
import { dpoLoss, logprobValues, type DpoMetrics } from './dpo-loss.js';

/** Settings of {@link trainDPO}; only the first four are required. */
export interface DpoConfig {
  service: ServiceClient;
  /** Where `config.json`, `metrics.jsonl` and `checkpoints.jsonl` go. */
  logPath: string;
  modelName: string;
  /** Batches laid out as chosen/rejected pairs ({@link PreferenceDataset}). */
  dataset: SupervisedDataset;
  /** Held-out pairs (same layout), scored as `test/*` before every `evalEvery`-th step and at the end. */
  testData?: readonly Datum[];
  /** Default 0.1. */
  beta?: number;
  /** Default 32. */
  loraRank?: number;
  seed?: number;
  /** Default 1e-5. */
  learningRate?: number;
  /** Default `linear`. */
  lrSchedule?: LrSchedule;
  /** Default 1. */
  numEpochs?: number;
  maxSteps?: number;
  /** Default { beta1: 0.9, beta2: 0.95, eps: 1e-8 }. */
  adam?: Partial<AdamSettings>;
  /** Default 10 (0 = only before the first step and after the last). */
  evalEvery?: number;
  /** Start the policy from these weights (fresh optimizer); the reference is then these weights too. */
  loadCheckpointPath?: string;
  /** Sampler weights of a separate frozen reference; default: a snapshot of the starting weights. */
  referenceModelPath?: string;
  onStep?: (step: number, metrics: Metrics) => void;
  console?: LineSink;
  /** Also report each metrics row to the server's dashboard (best effort; see `MetricsLoggerOptions.report`). */
  reportMetrics?: MetricsReporter;
}

/** What {@link trainDPO} did. */
export interface DpoResult {
  training: TrainingClient;
  reference: SamplingClient;
  steps: number;
  finalCheckpoint: CheckpointRecord;
}

/**
 * Trains with DPO on every batch of `dataset` for `numEpochs`, logging `dpo_loss`, `accuracy`,
 * `margin`, `chosen_reward`, `rejected_reward` (of each batch, before its update), `learning_rate`,
 * `num_pairs`, `progress/*`, `optim/*`, `time/step` and `test/<same>` to `metrics.jsonl`, and a final
 * checkpoint (state + sampler weights).
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
  const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8, ...config.adam };
  if (!(beta > 0)) throw new RangeError(`beta must be positive, got ${beta}`);
  if (!(learningRate > 0)) throw new RangeError(`learningRate must be positive, got ${learningRate}`);
  if (!Number.isInteger(evalEvery) || evalEvery < 0) throw new RangeError(`evalEvery must be a non-negative integer, got ${evalEvery}`);
  if (testData !== undefined && testData.length % 2 !== 0) throw new RangeError(`testData must hold chosen/rejected pairs, got ${testData.length} datums`);
  const batchesPerEpoch = dataset.length;
  const totalSteps = Math.min(batchesPerEpoch * (config.numEpochs ?? 1), config.maxSteps ?? Number.POSITIVE_INFINITY);
  if (!(totalSteps >= 1)) throw new RangeError(`nothing to train: ${totalSteps} steps`);
  lrMultiplier(schedule, 0, totalSteps);

  const logger = new MetricsLogger(config.logPath, loopLoggerOptions(config, () => training.modelId));
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
    loadCheckpointPath: config.loadCheckpointPath ?? null,
    referenceModelPath: config.referenceModelPath ?? null,
    batchesPerEpoch,
    totalSteps,
    testPairs: (testData?.length ?? 0) / 2,
  });

  const training =
    config.loadCheckpointPath !== undefined
      ? await service.createTrainingClientFromState(config.loadCheckpointPath)
      : await service.createLoraTrainingClient({ baseModel: config.modelName, rank: config.loraRank ?? 32, ...(config.seed !== undefined && { seed: config.seed }) });
  // Frozen: the starting weights, snapshotted before any update (or a separate saved model).
  const reference =
    config.referenceModelPath !== undefined
      ? await service.createSamplingClient({ modelPath: config.referenceModelPath })
      : await training.saveWeightsAndGetSamplingClient();
  const testReference = testData !== undefined && testData.length > 0 ? await referenceLogprobs(reference, testData) : undefined;
  const evaluate = async (): Promise<Metrics> =>
    testData === undefined || testReference === undefined ? {} : prefixMetrics('test/', { ...(await evaluateDpo(training, testData, testReference, beta)) });

  let epoch = -1;
  for (let step = 0; step < totalSteps; step++) {
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
    logger.logMetrics(step, metrics);
    config.onStep?.(step, metrics);
  }
  const finalCheckpoint = await submitCheckpoint(training, 'final', config.logPath, { epoch: totalSteps / batchesPerEpoch, batch: 0, step: totalSteps }, { kind: 'both', final: true })();
  const finalEvaluation = await evaluate();
  if (Object.keys(finalEvaluation).length > 0) {
    const metrics = { ...finalEvaluation, 'progress/done_frac': 1 };
    logger.logMetrics(totalSteps, metrics);
    config.onStep?.(totalSteps, metrics);
  }
  return { training, reference, steps: totalSteps, finalCheckpoint };
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
