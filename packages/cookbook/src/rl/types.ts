/**
 * @module The RL interfaces (the cookbook's `rl/types.py`): an environment the policy acts in turn by
 * turn, the builder of one group of environments (the GRPO group whose rewards are compared), and a
 * dataset of such builders per batch.
 */
import type { ModelInput, StopReason } from '@lathe/sdk';
import type { Metrics } from '../utils/ml-log.js';

/** The tokens the policy sampled in one turn. */
export type Action = number[];

/** Stop strings or stop token ids of a turn's sampling. */
export type StopCondition = string | readonly string[] | readonly number[];

/** What the policy sees before a turn: the whole context so far, and when to stop sampling. */
export interface Observation {
  prompt: ModelInput;
  stop?: StopCondition;
}

/** The outcome of one turn. `nextObservation` is required unless `episodeDone`. */
export interface StepResult {
  reward: number;
  episodeDone: boolean;
  nextObservation?: Observation;
  metrics?: Metrics;
}

/**
 * One single-use episode (no reset).
 *
 * @example
 * const env = new ArithmeticEnv(tokenizer, { a: 3, b: 4 });
 * const ob = await env.initialObservation();
 * const { reward } = await env.step(tokenizer.encode('7'), 'stop');
 */
export interface Env {
  initialObservation(): Promise<Observation> | Observation;
  /** `stopReason` says whether sampling hit a stop condition or ran out of tokens. */
  step(action: Action, stopReason: StopReason): Promise<StepResult> | StepResult;
}

/**
 * Makes the environments of one group; their rewards are centred against each other.
 *
 * @example
 * const builder: EnvGroupBuilder = { makeEnvs: () => [env0, env1], loggingTags: () => ['arithmetic'] };
 */
export interface EnvGroupBuilder {
  makeEnvs(): Promise<Env[]> | Env[];
  /** Metric prefixes: each group's rewards are also logged under `env/<tag>/…`. */
  loggingTags?(): string[];
}

/** Groups of environments per training batch. */
export interface RLDataset {
  /** Number of batches. */
  readonly length: number;
  getBatch(index: number): EnvGroupBuilder[];
}

/** One turn of a rollout: what was seen, what was sampled (with its logprobs), and the outcome. */
export interface Transition {
  observation: Observation;
  action: Action;
  /** The sampler's logprob of each action token. */
  logprobs: number[];
  stopReason: StopReason;
  reward: number;
  episodeDone: boolean;
  metrics: Metrics;
}

/** A whole episode. */
export interface Trajectory {
  transitions: Transition[];
}

/** The trajectories of one group, with its builder's tags and the sampler version that produced them. */
export interface TrajectoryGroup {
  trajectories: Trajectory[];
  tags: string[];
  /** Optimizer steps the sampling weights had taken. */
  samplerStep: number;
}
