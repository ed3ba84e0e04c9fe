/**
 * @module Rollouts (the cookbook's `rl/rollouts.py`): run each environment of a group against a
 * sampling client, turn by turn until the episode is done, keeping each sampled token's logprob.
 */
import type { SamplingClient } from '@lathe/sdk';
import type { Env, EnvGroupBuilder, Trajectory, TrajectoryGroup, Transition } from './types.js';

/** How the policy samples each turn. */
export interface RolloutParams {
  maxTokens: number;
  /** Default 1. */
  temperature?: number;
  /** Turns before an episode is cut off (default 16); a cut-off episode keeps its rewards so far. */
  maxTurns?: number;
  /** Base of the per-turn sampling seeds (reproducible rollouts); unset = unseeded. */
  seed?: number;
}

/**
 * Plays one episode: sample, step, repeat until `episodeDone` (or `maxTurns`).
 *
 * @example
 * const trajectory = await doSingleRollout(sampler, env, { maxTokens: 2 });
 */
export async function doSingleRollout(sampler: SamplingClient, env: Env, params: RolloutParams): Promise<Trajectory> {
  const maxTurns = params.maxTurns ?? 16;
  const transitions: Transition[] = [];
  let observation = await env.initialObservation();
  for (let turn = 0; turn < maxTurns; turn++) {
    const response = await sampler.sample({
      prompt: observation.prompt,
      numSamples: 1,
      samplingParams: {
        maxTokens: params.maxTokens,
        temperature: params.temperature ?? 1,
        ...(observation.stop !== undefined && { stop: observation.stop }),
        ...(params.seed !== undefined && { seed: params.seed + turn }),
      },
    });
    const sequence = response.sequences[0];
    if (sequence === undefined) throw new Error('the sampler returned no sequence');
    if (sequence.logprobs === null || sequence.logprobs.length !== sequence.tokens.length) {
      throw new Error('the sampler returned no logprob for every sampled token; RL needs them');
    }
    const result = await env.step(sequence.tokens, sequence.stopReason);
    transitions.push({
      observation,
      action: sequence.tokens,
      logprobs: sequence.logprobs,
      stopReason: sequence.stopReason,
      reward: result.reward,
      episodeDone: result.episodeDone,
      metrics: result.metrics ?? {},
    });
    if (result.episodeDone) break;
    if (result.nextObservation === undefined) throw new Error('an environment step that does not end the episode must give nextObservation');
    observation = result.nextObservation;
  }
  return { transitions };
}

/**
 * Rolls out every environment of one group concurrently.
 *
 * @example
 * const group = await doGroupRollout(builder, sampler, { maxTokens: 2, seed: 0 }, step);
 */
export async function doGroupRollout(builder: EnvGroupBuilder, sampler: SamplingClient, params: RolloutParams, samplerStep = 0): Promise<TrajectoryGroup> {
  const envs = await builder.makeEnvs();
  const maxTurns = params.maxTurns ?? 16;
  const trajectories = await Promise.all(
    envs.map((env, i) => doSingleRollout(sampler, env, params.seed === undefined ? params : { ...params, seed: params.seed + i * maxTurns })),
  );
  return { trajectories, tags: builder.loggingTags?.() ?? [], samplerStep };
}

/** Σ of a trajectory's per-turn rewards. */
export function totalReward(trajectory: Trajectory): number {
  return trajectory.transitions.reduce((sum, t) => sum + t.reward, 0);
}
