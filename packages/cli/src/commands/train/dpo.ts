/**
 * @module `lathe train dpo`: preference training (DPO) on chosen/rejected conversation pairs with
 * the cookbook's `trainDPO`.
 */
import { answerFormatPairs, preferenceDatasets, readPreferencePairsJsonl, trainDPO } from '@lathe/cookbook';
import { rendererFor, toMessages } from '../chat.js';
import { batchingOf, defaultTestSize, epochLoopOptions, runTraining, stepsAndEpochs, type EpochDataOptions, type TrainCommonOptions, type TrainResult } from './run.js';

/** Options of {@link runTrainDpo} (the command's flags). */
export interface TrainDpoOptions extends TrainCommonOptions, EpochDataOptions {
  /** Preference-pair JSONL, `{"chosen": [messages], "rejected": [messages]}` per line (default: the cookbook's `answerFormatPairs()`); the items of `batchSize` and `testSize` are pairs. */
  data?: string;
  beta: number;
}

/** The cookbook's DPO learning rate, used without `--lr`. */
export const DEFAULT_DPO_LR = 1e-5;

/**
 * Trains a LoRA adapter with DPO against a frozen reference (its starting weights), logging
 * `dpo_loss`, `accuracy`, `margin` and the rest of the cookbook's DPO metrics. A run stopped by
 * `signal` records a checkpoint; running again with the same `logDir` continues from it.
 *
 * @example
 * await runTrainDpo({ model: 'lathe/tiny-qwen3', logDir: 'runs/dpo', dataDir: '.lathe', batchSize: 4, beta: 0.1, evalEvery: 10, loraRank: 32, saveEvery: 20, seed: 0, progress: process.stderr, log: console.error });
 */
export async function runTrainDpo(options: TrainDpoOptions): Promise<TrainResult> {
  const renderer = rendererFor(options.model, options.renderer);
  const learningRate = options.lr ?? DEFAULT_DPO_LR;
  const pairs = options.data !== undefined ? readPreferencePairsJsonl(options.data) : answerFormatPairs();
  const testSize = options.testSize ?? defaultTestSize(pairs.length);
  const { train, test } = preferenceDatasets(pairs, (conversation) => renderer.buildSupervisedExample(toMessages(conversation)), batchingOf(options, testSize));
  if (train.length < 1) throw new Error(`${pairs.length - testSize} training pairs make no batch of ${options.batchSize}; lower --batch-size or --test-size`);
  const { numEpochs, totalSteps } = stepsAndEpochs(train.length, options);
  return runTraining(options, {
    summary: `${options.model} (${renderer.name} renderer) on ${options.data ?? 'the built-in answer-format pairs'}: ${train.length} batches of ${options.batchSize} pairs per epoch, ${testSize} held out, ${totalSteps} steps, beta ${options.beta}, lr ${learningRate}`,
    totalSteps,
    batchesPerEpoch: train.length,
    headline: { label: 'loss', metric: 'dpo_loss' },
    train: (hooks) =>
      trainDPO({
        ...hooks,
        beta: options.beta,
        ...epochLoopOptions(options, { train, test }, learningRate, numEpochs),
      }),
  });
}
