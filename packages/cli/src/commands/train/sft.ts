/**
 * @module `lathe train sft`: supervised fine-tuning on a conversation file with the cookbook's
 * pipelined, resumable loop, against a server given by `--base-url` or an embedded one.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { conversationDatasets, readConversationsJsonl, trainSupervised } from '@lathe/cookbook';
import { rendererFor, toMessages } from '../chat.js';
import { batchingOf, defaultLearningRate, defaultTestSize, epochLoopOptions, runTraining, stepsAndEpochs, type EpochDataOptions, type TrainCommonOptions, type TrainResult } from './run.js';

/** The conversation set trained on when no `--data` is given (shipped with the package). */
export const DEFAULT_SFT_DATA = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../data/capitals.jsonl');

/** Options of {@link runTrainSft} (the command's flags). */
export interface TrainSftOptions extends TrainCommonOptions, EpochDataOptions {
  /** Conversation JSONL (default {@link DEFAULT_SFT_DATA}). */
  data?: string;
}

/**
 * Trains a LoRA adapter on `data` with the model's chat template (learning rate default: the
 * cookbook's `getLr(model)`). A run stopped by `signal` records a checkpoint; running again with
 * the same `logDir` continues from it.
 *
 * @example
 * const r = await runTrainSft({ model: 'lathe/tiny-qwen3', logDir: 'runs/sft', dataDir: '.lathe', batchSize: 4, loraRank: 8, saveEvery: 20, evalEvery: 10, seed: 0, progress: process.stderr, log: console.error });
 * r.checkpoint?.sampler_path; // tinker://…/sampler_weights/final
 */
export async function runTrainSft(options: TrainSftOptions): Promise<TrainResult> {
  // Everything that can be wrong with the inputs fails here, before a server is started.
  const renderer = rendererFor(options.model, options.renderer);
  const learningRate = options.lr ?? defaultLearningRate(options.model);
  const dataFile = options.data ?? DEFAULT_SFT_DATA;
  const conversations = readConversationsJsonl(dataFile);
  const testSize = options.testSize ?? defaultTestSize(conversations.length);
  const { train, test } = conversationDatasets(conversations, (conversation) => renderer.buildSupervisedExample(toMessages(conversation)), batchingOf(options, testSize));
  const { numEpochs, totalSteps } = stepsAndEpochs(train.length, options);
  return runTraining(options, {
    summary: `${options.model} (${renderer.name} renderer) on ${dataFile}: ${train.length} batches of ${options.batchSize} per epoch, ${testSize} held out, ${totalSteps} steps, lr ${learningRate}`,
    totalSteps,
    batchesPerEpoch: train.length,
    headline: { label: 'loss', metric: 'train_mean_nll' },
    train: (hooks) =>
      trainSupervised({
        ...hooks,
        ...epochLoopOptions(options, { train, test }, learningRate, numEpochs),
      }),
  });
}
