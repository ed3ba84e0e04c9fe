/**
 * @module `lathe train sft`: supervised fine-tuning on a conversation file with the cookbook's
 * pipelined, resumable loop, against a server given by `--base-url` or an embedded one.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  conversationDatasets,
  getLastCheckpoint,
  getLr,
  getRenderer,
  getTokenizer,
  readConversationsJsonl,
  recommendedRendererName,
  submitCheckpoint,
  trainSupervised,
  type Conversation,
  type Message,
  type Role,
} from '@lathe/cookbook';
import { withService, type ConnectOptions } from './connect.js';
import { ProgressBar, type ProgressStream } from '../progress.js';

/** The conversation set trained on when no `--data` is given (shipped with the package). */
export const DEFAULT_SFT_DATA = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../data/capitals.jsonl');

/** Options of {@link runTrainSft} (the command's flags). */
export interface TrainSftOptions extends ConnectOptions {
  model: string;
  /** Conversation JSONL (default {@link DEFAULT_SFT_DATA}). */
  data?: string;
  logDir: string;
  /** Exactly this many steps (epochs as needed); else `epochs` passes over the data. */
  steps?: number;
  epochs?: number;
  batchSize: number;
  /** Default: the cookbook's `getLr(model)`. */
  lr?: number;
  loraRank: number;
  /** Default: the model's recommended renderer. */
  renderer?: string;
  maxLength?: number;
  saveEvery: number;
  evalEvery: number;
  /** Conversations held out for `test/nll` (default: a tenth, at most 16). */
  testSize?: number;
  seed: number;
  /** Stops the run between steps; it then saves a checkpoint to resume from. */
  signal?: AbortSignal;
  /** Where the progress bar goes. */
  progress: ProgressStream;
  /** Status lines (stderr in the CLI). */
  log: (line: string) => void;
}

/** How {@link runTrainSft} ended. */
export interface TrainSftResult {
  steps: number;
  totalSteps: number;
  interrupted: boolean;
  /** The checkpoint to resume from (interrupted) or the final one. */
  checkpoint?: { name: string; step: number; state_path?: string; sampler_path?: string };
}

const ROLES: readonly Role[] = ['system', 'user', 'assistant', 'tool'];

/**
 * Trains a LoRA adapter on `data` with the model's chat template. A run stopped by `signal`
 * records a checkpoint; running again with the same `logDir` continues from it.
 *
 * @example
 * const r = await runTrainSft({ model: 'lathe/tiny-qwen3', logDir: 'runs/sft', dataDir: '.lathe', batchSize: 4, loraRank: 8, saveEvery: 20, evalEvery: 10, seed: 0, progress: process.stderr, log: console.error });
 * r.checkpoint?.sampler_path; // tinker://…/sampler_weights/final
 */
export async function runTrainSft(options: TrainSftOptions): Promise<TrainSftResult> {
  const { log } = options;
  // Everything that can be wrong with the inputs fails here, before a server is started.
  const renderer = getRenderer(options.renderer ?? recommendedRendererName(options.model), getTokenizer(options.model));
  const learningRate = options.lr ?? defaultLearningRate(options.model);
  const dataFile = options.data ?? DEFAULT_SFT_DATA;
  const conversations = readConversationsJsonl(dataFile);
  const testSize = options.testSize ?? Math.min(16, Math.floor(conversations.length / 10));
  const { train, test } = conversationDatasets(conversations, (conversation) => renderer.buildSupervisedExample(toMessages(conversation)), {
    batchSize: options.batchSize,
    testSize,
    seed: options.seed,
    ...(options.maxLength !== undefined && { maxLength: options.maxLength }),
  });
  const numEpochs = options.steps !== undefined ? Math.ceil(options.steps / train.length) : (options.epochs ?? 1);
  const totalSteps = Math.min(train.length * numEpochs, options.steps ?? Number.POSITIVE_INFINITY);
  const logPath = path.resolve(options.logDir);
  const resumeFrom = getLastCheckpoint(logPath);
  log(
    `${options.model} (${renderer.name} renderer) on ${dataFile}: ${train.length} batches of ${options.batchSize} per epoch, ${testSize} held out, ${totalSteps} steps, lr ${learningRate}` +
      (resumeFrom !== undefined ? `; resuming ${logPath} at step ${resumeFrom.step}` : `; logging to ${logPath}`),
  );

  return withService(options, log, async (service) => {
    const progress = new ProgressBar(options.progress, totalSteps, resumeFrom?.step ?? 0);
    const result = await trainSupervised({
      service,
      logPath,
      modelName: options.model,
      dataset: train,
      testData: test,
      loraRank: options.loraRank,
      seed: options.seed,
      learningRate,
      numEpochs,
      ...(options.steps !== undefined && { maxSteps: options.steps }),
      saveEvery: options.saveEvery,
      evalEvery: options.evalEvery,
      ...(options.signal !== undefined && { signal: options.signal }),
      onStep: (step, metrics) => {
        const loss = metrics['train_mean_nll'];
        if (loss !== undefined) progress.update(step + 1, loss);
      },
      // The numbers are in metrics.jsonl; the terminal gets the progress bar.
      console: () => {},
    }).finally(() => progress.done());
    if (!result.interrupted) return { steps: result.steps, totalSteps: result.totalSteps, interrupted: false, ...(result.finalCheckpoint !== undefined && { checkpoint: result.finalCheckpoint }) };

    // The loop saves only every saveEvery steps: save where it stopped, so no step is redone.
    const last = getLastCheckpoint(logPath);
    if (last !== undefined && last.step >= result.steps) return { steps: result.steps, totalSteps: result.totalSteps, interrupted: true, checkpoint: last };
    if (result.steps === 0) return { steps: 0, totalSteps: result.totalSteps, interrupted: true };
    const loopState = { epoch: Math.floor(result.steps / train.length), batch: result.steps % train.length, step: result.steps };
    const checkpoint = await submitCheckpoint(result.training, String(result.steps).padStart(6, '0'), logPath, loopState, { kind: 'both', ttlSeconds: 604_800 })();
    return { steps: result.steps, totalSteps: result.totalSteps, interrupted: true, checkpoint };
  });
}

/** The cookbook's recommended LoRA learning rate, or a message asking for `--lr`. */
function defaultLearningRate(model: string): number {
  try {
    return getLr(model);
  } catch (error) {
    throw new Error(`no default learning rate for ${model} (${(error as Error).message}); pass --lr`);
  }
}

/** JSONL messages as renderer messages; an unknown role names the message. */
function toMessages(conversation: Conversation): Message[] {
  return conversation.map((message, index) => {
    if (!(ROLES as readonly string[]).includes(message.role)) {
      throw new Error(`message ${index} has role ${JSON.stringify(message.role)}; expected one of ${ROLES.join(', ')}`);
    }
    return { role: message.role as Role, content: message.content };
  });
}
