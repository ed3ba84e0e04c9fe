/**
 * @module Rollouts (the cookbook's `rl/rollouts.py`): run each environment of a group against a
 * sampling client, turn by turn until the episode is done, keeping each sampled token's logprob.
 */
import type { SampledSequence, SamplingClient } from '@lathe/sdk';
import type { Env, EnvGroupBuilder, Observation, Trajectory, TrajectoryGroup, Transition } from './types.js';

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
  return playEpisode(sampler, env, await env.initialObservation(), undefined, params);
}

/** The rest of an episode from `observation`; `firstSample`, when given, is the first turn's sequence. */
async function playEpisode(
  sampler: SamplingClient,
  env: Env,
  observation: Observation,
  firstSample: SampledSequence | undefined,
  params: RolloutParams,
): Promise<Trajectory> {
  const maxTurns = params.maxTurns ?? 16;
  const transitions: Transition[] = [];
  for (let turn = 0; turn < maxTurns; turn++) {
    const sequence = turn === 0 && firstSample !== undefined ? firstSample : (await sampleTurn(sampler, observation, 1, params, turn))[0];
    if (sequence === undefined) throw new Error('the sampler returned no sequence');
    const result = await env.step(sequence.tokens, sequence.stopReason);
    transitions.push({
      observation,
      action: sequence.tokens,
      logprobs: sequence.logprobs!,
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

async function sampleTurn(sampler: SamplingClient, observation: Observation, numSamples: number, params: RolloutParams, turn: number): Promise<SampledSequence[]> {
  const response = await sampler.sample({
    prompt: observation.prompt,
    numSamples,
    samplingParams: {
      maxTokens: params.maxTokens,
      temperature: params.temperature ?? 1,
      ...(observation.stop !== undefined && { stop: observation.stop }),
      ...(params.seed !== undefined && { seed: params.seed + turn }),
    },
  });
  if (response.sequences.length !== numSamples) throw new Error(`the sampler returned ${response.sequences.length} sequences for ${numSamples}`);
  for (const sequence of response.sequences) {
    if (sequence.logprobs === null || sequence.logprobs.length !== sequence.tokens.length) {
      throw new Error('the sampler returned no logprob for every sampled token; RL needs them');
    }
  }
  return response.sequences;
}

/**
 * Rolls out every environment of one group concurrently. When all of them start from the same
 * observation (the usual GRPO group), their first turns are one `sample` call with `numSamples`.
 *
 * @example
 * const group = await doGroupRollout(builder, sampler, { maxTokens: 2, seed: 0 }, step);
 */
export async function doGroupRollout(builder: EnvGroupBuilder, sampler: SamplingClient, params: RolloutParams, samplerStep = 0): Promise<TrajectoryGroup> {
  const envs = await builder.makeEnvs();
  const maxTurns = params.maxTurns ?? 16;
  const observations = await Promise.all(envs.map((env) => env.initialObservation()));
  const key = (o: Observation): string => JSON.stringify([o.prompt.toInts(), o.stop ?? null]);
  const shared = observations.length > 1 && observations.every((o) => key(o) === key(observations[0]!));
  const firstSamples = shared ? await sampleTurn(sampler, observations[0]!, observations.length, params, 0) : undefined;
  const trajectories = await Promise.all(
    envs.map((env, i) =>
      playEpisode(sampler, env, observations[i]!, firstSamples?.[i], params.seed === undefined ? params : { ...params, seed: params.seed + i * maxTurns }),
    ),
  );
  return { trajectories, tags: builder.loggingTags?.() ?? [], samplerStep };
}

/** Σ of a trajectory's per-turn rewards. */
export function totalReward(trajectory: Trajectory): number {
  return trajectory.transitions.reduce((sum, t) => sum + t.reward, 0);
}
