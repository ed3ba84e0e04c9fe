/**
 * @module The pipelined supervised fine-tuning loop (the cookbook's `supervised/train.py`): step N+1's
 * forward/backward and optimizer step are submitted before step N's results are awaited, so the
 * server always has queued work. Logs `metrics.jsonl`, `config.json` and `checkpoints.jsonl` under
 * `logPath`, and resumes from the last checkpoint there (weights and optimizer state).
 */
import type { APIFuture, Datum, ForwardBackwardOutput, OptimStepResponse, ServiceClient, TrainingClient } from '@lathe/sdk';
import { getLastCheckpoint, submitCheckpoint, openTrainingClient, type CheckpointRecord } from '../utils/checkpoints.js';
import { lrMultiplier, type LrSchedule } from '../utils/lr-schedule.js';
import { loopLoggerOptions, MetricsLogger, prefixMetrics, type LineSink, type Metrics, type MetricsReporter } from '../utils/ml-log.js';
import { getTokenizer, type TextTokenizer } from '../tokenizers.js';
import { datumWeights, meanBitsPerByte, meanNll } from './datum.js';
import type { SupervisedDataset } from './data.js';

/** Adam settings of every step (the cookbook's SFT defaults). */
export interface AdamSettings {
  beta1: number;
  beta2: number;
  eps: number;
}

/** Settings of {@link trainSupervised}; only the first five are required. */
export interface SupervisedConfig {
  service: ServiceClient;
  /** Where `config.json`, `metrics.jsonl` and `checkpoints.jsonl` go; a run found here is resumed (or, if complete, returned as is). */
  logPath: string;
  /** The base model of a new run. */
  modelName: string;
  dataset: SupervisedDataset;
  /** Held-out datums whose NLL is logged as `test/nll` every `evalEvery` steps and at the end. */
  testData?: readonly Datum[];
  /**
   * Gives each target token's byte length for `train_mean_bpb` and `test/bpb` (bits per byte).
   * Default: `getTokenizer(modelName)`; without one (a model of no bundled family) no bpb is logged.
   */
  tokenizer?: TextTokenizer;
  /** Default 32. */
  loraRank?: number;
  /** Seed of a new adapter's initialisation. */
  seed?: number;
  /** Default 1e-4. */
  learningRate?: number;
  /** Default `linear`. */
  lrSchedule?: LrSchedule;
  /** Default 0. */
  warmupSteps?: number;
  /** Default 1. */
  numEpochs?: number;
  /** Stop after this many steps in all (the schedule spans them). */
  maxSteps?: number;
  /** Default { beta1: 0.9, beta2: 0.95, eps: 1e-8 }. */
  adam?: Partial<AdamSettings>;
  /** Save state + sampler weights every this many steps (default 20; 0 = only the final save). */
  saveEvery?: number;
  /** Held-out NLL before every this many steps (default 10; 0 = only before step 0 and after the last). */
  evalEvery?: number;
  /** Lifetime of periodic checkpoints (default 7 days); the final one is kept. */
  ttlSeconds?: number;
  /** Steps submitted ahead of the one being awaited (default 1; 0 = no pipelining). */
  submitAhead?: number;
  /** Start a new run from these weights (fresh optimizer); ignored when resuming. */
  loadCheckpointPath?: string;
  /** Stops the loop before the next submission; in-flight steps finish and are logged. */
  signal?: AbortSignal;
  /** Called with each step's metrics once they are logged. */
  onStep?: (step: number, metrics: Metrics) => void;
  /** Where the metrics table is printed (default `console.log`). */
  console?: LineSink;
  /** Also report each metrics row to the server's dashboard (best effort; see `MetricsLoggerOptions.report`). */
  reportMetrics?: MetricsReporter;
}

/** What {@link trainSupervised} did. */
export interface SupervisedResult {
  training: TrainingClient;
  /** Steps done in all, counting those before a resume. */
  steps: number;
  totalSteps: number;
  /** True when `signal` stopped the run before the end (no final checkpoint then). */
  interrupted: boolean;
  resumedFrom?: CheckpointRecord;
  finalCheckpoint?: CheckpointRecord;
}

/** A submitted step whose results are still to be awaited. */
interface InFlight {
  step: number;
  epoch: number;
  batch: Datum[];
  learningRate: number;
  submittedAt: number;
  forwardBackward: APIFuture<ForwardBackwardOutput>;
  optim: APIFuture<OptimStepResponse>;
  evaluation?: APIFuture<ForwardBackwardOutput>;
  checkpoint?: () => Promise<CheckpointRecord>;
}

const DEFAULT_ADAM: AdamSettings = { beta1: 0.9, beta2: 0.95, eps: 1e-8 };

/**
 * Runs supervised fine-tuning with cross-entropy on every batch of `dataset` for `numEpochs`.
 *
 * @example
 * const tokenizer = loadTokenizer('qwen3');
 * const { train, test } = conversationDatasets(readConversationsJsonl('chats.jsonl'), roleColonExample(tokenizer), { batchSize: 8, testSize: 16 });
 * await trainSupervised({ service, logPath: 'runs/sft', modelName: 'Qwen/Qwen3-8B', dataset: train, testData: test, learningRate: getLr('Qwen/Qwen3-8B') });
 */
export async function trainSupervised(config: SupervisedConfig): Promise<SupervisedResult> {
  const { service, logPath, dataset, testData } = config;
  const adam = { ...DEFAULT_ADAM, ...config.adam };
  const learningRate = config.learningRate ?? 1e-4;
  const schedule = config.lrSchedule ?? 'linear';
  const saveEvery = config.saveEvery ?? 20;
  const evalEvery = config.evalEvery ?? 10;
  const submitAhead = config.submitAhead ?? 1;
  for (const [name, value] of Object.entries({ saveEvery, evalEvery, submitAhead })) {
    if (!Number.isInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer, got ${value}`);
  }
  if (!(learningRate > 0)) throw new RangeError(`learningRate must be positive, got ${learningRate}`);
  const batchesPerEpoch = dataset.length;
  if (batchesPerEpoch < 1) throw new RangeError('the dataset has no batches');
  const totalSteps = Math.min(batchesPerEpoch * (config.numEpochs ?? 1), config.maxSteps ?? Number.POSITIVE_INFINITY);
  if (totalSteps < 1) throw new RangeError(`nothing to train: ${totalSteps} steps`);
  lrMultiplier(schedule, 0, totalSteps, config.warmupSteps ?? 0); // validates the schedule settings up front

  const logger = new MetricsLogger(logPath, loopLoggerOptions(config, () => training.modelId));
  const resumedFrom = getLastCheckpoint(logPath);
  if (resumedFrom?.final === true) {
    // The run in logPath is complete: hand back its final weights rather than train or log again.
    const training = await openTrainingClient(config, resumedFrom);
    return { training, steps: resumedFrom.step, totalSteps: resumedFrom.step, interrupted: false, resumedFrom, finalCheckpoint: resumedFrom };
  }
  const startStep = resumedFrom?.step ?? 0;
  if (resumedFrom !== undefined) logger.truncateFrom(startStep);
  logger.logConfig({
    modelName: config.modelName,
    loraRank: config.loraRank ?? 32,
    seed: config.seed ?? null,
    learningRate,
    lrSchedule: schedule,
    warmupSteps: config.warmupSteps ?? 0,
    numEpochs: config.numEpochs ?? 1,
    maxSteps: config.maxSteps ?? null,
    adam,
    saveEvery,
    evalEvery,
    ttlSeconds: config.ttlSeconds ?? 604_800,
    submitAhead,
    loadCheckpointPath: config.loadCheckpointPath ?? null,
    batchesPerEpoch,
    totalSteps,
    testSize: testData?.length ?? 0,
    resumedFrom: resumedFrom?.state_path ?? null,
  });

  const training = await openTrainingClient(config, resumedFrom);
  const evaluate = (): APIFuture<ForwardBackwardOutput> | undefined =>
    testData !== undefined && testData.length > 0 ? training.forward(testData, 'cross_entropy') : undefined;

  const byteLength = tokenByteLength(config);
  const lossMetrics = (prefix: 'train_mean_' | 'test/', data: readonly Datum[], out: ForwardBackwardOutput): Metrics => {
    const logprobs = out.lossFnOutputs.map((o) => o['logprobs']!);
    return {
      [`${prefix}nll`]: meanNll(data, logprobs),
      ...(byteLength !== undefined && { [`${prefix}bpb`]: meanBitsPerByte(data, logprobs, byteLength) }),
    };
  };

  const inFlight: InFlight[] = [];
  const finish = async (entry: InFlight): Promise<void> => {
    const [out, optim, evaluation] = await Promise.all([entry.forwardBackward, entry.optim, entry.evaluation]);
    const weights = entry.batch.map(datumWeights);
    const metrics: Metrics = {
      ...lossMetrics('train_mean_', entry.batch, out),
      learning_rate: entry.learningRate,
      num_sequences: entry.batch.length,
      num_tokens: entry.batch.reduce((n, d) => n + d.modelInput.length + 1, 0),
      num_loss_tokens: weights.reduce((n, w) => n + w.filter((x) => x > 0).length, 0),
      'progress/epoch': entry.epoch,
      'progress/batch': entry.step,
      'progress/done_frac': (entry.step + 1) / totalSteps,
      ...prefixMetrics('optim/', optim.metrics),
      ...(evaluation !== undefined && testData !== undefined && lossMetrics('test/', testData, evaluation)),
      'time/step': (performance.now() - entry.submittedAt) / 1000,
    };
    logger.logMetrics(entry.step, metrics);
    config.onStep?.(entry.step, metrics);
    if (entry.checkpoint !== undefined) await entry.checkpoint();
  };

  let step = startStep;
  let interrupted = false;
  let epoch = -1;
  for (; step < totalSteps; step++) {
    if (config.signal?.aborted === true) {
      interrupted = true;
      break;
    }
    const stepEpoch = Math.floor(step / batchesPerEpoch);
    if (stepEpoch !== epoch) dataset.setEpoch((epoch = stepEpoch));
    const batch = dataset.getBatch(step % batchesPerEpoch);
    // Evaluated before this step's update, i.e. on the weights after step - 1.
    const evaluation = step === 0 || (evalEvery > 0 && step % evalEvery === 0) ? evaluate() : undefined;
    const stepLr = learningRate * lrMultiplier(schedule, step, totalSteps, config.warmupSteps ?? 0);
    const entry: InFlight = {
      step,
      epoch: stepEpoch,
      batch,
      learningRate: stepLr,
      submittedAt: performance.now(),
      forwardBackward: training.forwardBackward(batch, 'cross_entropy'),
      optim: training.optimStep({ learningRate: stepLr, ...adam }),
      ...(evaluation !== undefined && { evaluation }),
    };
    const done = step + 1;
    if (saveEvery > 0 && done % saveEvery === 0 && done < totalSteps) {
      // Submitted right behind this step's optimizer step, so it holds exactly `done` updates.
      entry.checkpoint = submitCheckpoint(training, String(done).padStart(6, '0'), logPath, loopState(done, batchesPerEpoch), {
        kind: 'both',
        ttlSeconds: config.ttlSeconds ?? 604_800,
      });
    }
    inFlight.push(entry);
    while (inFlight.length > submitAhead) await finish(inFlight.shift()!);
  }
  // An interrupted run still records the steps already submitted: they run on the server anyway.
  while (inFlight.length > 0) await finish(inFlight.shift()!);
  if (interrupted) return { training, steps: step, totalSteps, interrupted, ...(resumedFrom !== undefined && { resumedFrom }) };

  const finalEvaluation = evaluate();
  const finalCheckpoint = await submitCheckpoint(training, 'final', logPath, loopState(totalSteps, batchesPerEpoch), { kind: 'both', final: true })();
  if (finalEvaluation !== undefined && testData !== undefined) {
    const metrics: Metrics = { ...lossMetrics('test/', testData, await finalEvaluation), 'progress/done_frac': 1 };
    logger.logMetrics(totalSteps, metrics);
    config.onStep?.(totalSteps, metrics);
  }
  return { training, steps: totalSteps, totalSteps, interrupted, finalCheckpoint, ...(resumedFrom !== undefined && { resumedFrom }) };
}

/** Resume with optimizer state, start from given weights, or create a fresh LoRA adapter. */

/** Where a run that has done `steps` steps continues. */
function loopState(steps: number, batchesPerEpoch: number): { epoch: number; batch: number; step: number } {
  return { epoch: Math.floor(steps / batchesPerEpoch), batch: steps % batchesPerEpoch, step: steps };
}

/** The configured tokenizer's byte lengths, else those of the model's bundled tokenizer, if any. */
function tokenByteLength(config: SupervisedConfig): ((token: number) => number) | undefined {
  let tokenizer = config.tokenizer;
  try {
    tokenizer ??= getTokenizer(config.modelName);
  } catch {
    return undefined; // no bundled tokenizer for this model: bpb is simply not logged
  }
  return (token) => tokenizer.byteLength(token);
}
