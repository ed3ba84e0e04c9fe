/**
 * @module The pipelined supervised fine-tuning loop (the cookbook's `supervised/train.py`): step N+1's
 * forward/backward and optimizer step are submitted before step N's results are awaited, so the
 * server always has queued work. Logs `metrics.jsonl`, `config.json` and `checkpoints.jsonl` under
 * `logPath`, and resumes from the last checkpoint there (weights and optimizer state).
 */
import type { APIFuture, Datum, ForwardBackwardOutput, OptimStepResponse } from '@lathe/sdk';
import { submitCheckpoint, openTrainingClient, type CheckpointRecord } from '../utils/checkpoints.js';
import { completedRun, DEFAULT_ADAM, logFinalEvaluation, logStep, openRunLog, requireIntegers, requirePositiveLearningRate, type LoopConfig, type LoopResult } from '../utils/loop.js';
import { lrMultiplier, type LrSchedule } from '../utils/lr-schedule.js';
import { prefixMetrics, type Metrics } from '../utils/ml-log.js';
import { getTokenizer, type TextTokenizer } from '../tokenizers.js';
import { datumWeights, meanBitsPerByte, meanNll } from './datum.js';
import type { SupervisedDataset } from './data.js';

/** Settings of {@link trainSupervised}; `service`, `logPath`, `modelName` and `dataset` are required. */
export interface SupervisedConfig extends LoopConfig {
  dataset: SupervisedDataset;
  /** Held-out datums whose NLL is logged as `test/nll` every `evalEvery` steps and at the end. */
  testData?: readonly Datum[];
  /**
   * Gives each target token's byte length for `train_mean_bpb` and `test/bpb` (bits per byte).
   * Default: `getTokenizer(modelName)`; without one (a model of no bundled family) no bpb is logged.
   */
  tokenizer?: TextTokenizer;
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
  /** Held-out NLL before every this many steps (default 10; 0 = only before step 0 and after the last). */
  evalEvery?: number;
  /** Steps submitted ahead of the one being awaited (default 1; 0 = no pipelining). */
  submitAhead?: number;
}

/** What {@link trainSupervised} did. */
export type SupervisedResult = LoopResult;

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
  requireIntegers({ saveEvery, evalEvery, submitAhead });
  requirePositiveLearningRate(learningRate);
  const batchesPerEpoch = dataset.length;
  if (batchesPerEpoch < 1) throw new RangeError('the dataset has no batches');
  const totalSteps = Math.min(batchesPerEpoch * (config.numEpochs ?? 1), config.maxSteps ?? Number.POSITIVE_INFINITY);
  if (totalSteps < 1) throw new RangeError(`nothing to train: ${totalSteps} steps`);
  lrMultiplier(schedule, 0, totalSteps, config.warmupSteps ?? 0); // validates the schedule settings up front

  const { logger, resumedFrom, startStep } = openRunLog(config, () => training.modelId);
  if (resumedFrom?.final === true) return { training: await openTrainingClient(config, resumedFrom), ...completedRun(resumedFrom) };
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
    logStep(logger, config, entry.step, metrics);
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
  logFinalEvaluation(logger, config, totalSteps, finalEvaluation !== undefined && testData !== undefined ? lossMetrics('test/', testData, await finalEvaluation) : {});
  return { training, steps: totalSteps, totalSteps, interrupted, finalCheckpoint, ...(resumedFrom !== undefined && { resumedFrom }) };
}

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
