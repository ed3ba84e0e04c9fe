/**
 * @module `lathe train rl`: reinforcement learning on a built-in environment (arithmetic or
 * guess-the-number) with the cookbook's `trainRL`.
 */
import { ArithmeticDataset, GuessNumberDataset, getTokenizer, trainRL, type RLDataset } from '@lathe/cookbook';
import { defaultLearningRate, runTraining, type TrainCommonOptions, type TrainResult } from './run.js';

/** The built-in environments, by their `--env` name. */
export const RL_ENVS = ['arithmetic', 'guess-number'] as const;
export type RlEnvName = (typeof RL_ENVS)[number];

/** Options of {@link runTrainRl} (the command's flags). */
export interface TrainRlOptions extends TrainCommonOptions {
  env: RlEnvName;
  /** Training steps: one batch of groups each. */
  steps: number;
  /** Groups (problems) per step. */
  batchSize: number;
  /** Rollouts per group, whose rewards are compared. */
  groupSize: number;
  /** Most tokens sampled per turn. */
  maxTokens: number;
  temperature: number;
  lossFn: 'importance_sampling' | 'ppo';
  /** Rollouts may come from weights this many steps old (0: on-policy). */
  maxStaleness: number;
}

/**
 * Trains a LoRA adapter by RL on `env` (learning rate default: the cookbook's `getLr(model)`),
 * logging `env/all/reward/total` and the rest of the cookbook's RL metrics. A run stopped by
 * `signal` records a checkpoint; running again with the same `logDir` continues from it.
 *
 * @example
 * await runTrainRl({ model: 'lathe/tiny-qwen3', env: 'arithmetic', logDir: 'runs/rl', dataDir: '.lathe', steps: 20, batchSize: 8, groupSize: 8, maxTokens: 4, temperature: 1, lossFn: 'importance_sampling', maxStaleness: 0, loraRank: 32, saveEvery: 20, seed: 0, progress: process.stderr, log: console.error });
 */
export async function runTrainRl(options: TrainRlOptions): Promise<TrainResult> {
  const tokenizer = getTokenizer(options.model);
  const learningRate = options.lr ?? defaultLearningRate(options.model);
  const size = { batchSize: options.batchSize, groupSize: options.groupSize, numBatches: options.steps, seed: options.seed };
  const dataset: RLDataset = options.env === 'arithmetic' ? new ArithmeticDataset(tokenizer, size) : new GuessNumberDataset(tokenizer, size);
  return runTraining(options, {
    summary: `${options.model} on the ${options.env} environment: ${options.steps} steps of ${options.batchSize} groups of ${options.groupSize} rollouts, ${options.lossFn}, lr ${learningRate}`,
    totalSteps: options.steps,
    headline: { label: 'reward', metric: 'env/all/reward/total' },
    train: (hooks) =>
      trainRL({
        ...hooks,
        modelName: options.model,
        dataset,
        learningRate,
        maxTokens: options.maxTokens,
        temperature: options.temperature,
        loraRank: options.loraRank,
        seed: options.seed,
        lossFn: options.lossFn,
        maxStaleness: options.maxStaleness,
        saveEvery: options.saveEvery,
      }),
  });
}
