/**
 * @module From trajectories to training data (the cookbook's `rl/data_processing.py` and
 * `rl/metrics.py`): group-centred advantages, one datum per trajectory (observation tokens masked
 * out), the KL penalty against a reference model, and sampler-vs-learner KL metrics.
 */
import { ModelInput, TensorData, type Datum, type SamplingClient } from '@lathe/sdk';
import type { Metrics } from '../utils/ml-log.js';
import { totalReward } from './rollouts.js';
import type { Trajectory, TrajectoryGroup } from './types.js';

/**
 * A datum for the `importance_sampling` / `ppo` losses with what the client keeps beside it: the full
 * token sequence and the action mask (1 on sampled tokens), both aligned with the targets.
 */
export interface RLDatum {
  datum: Datum;
  /** The unshifted sequence: `modelInput` tokens + the last target. */
  tokens: number[];
  /** Per target position: the sampler's logprob (0 on observation tokens). */
  logprobs: number[];
  /** Per target position: the advantage (0 on observation tokens). */
  advantages: number[];
  /** Per target position: 1 on action tokens, 0 on observation tokens. */
  mask: number[];
}

/**
 * Per group, each trajectory's total reward minus the group mean (no division by the std, as the
 * cookbook does). A group whose rewards are all equal gets all-zero advantages.
 *
 * @example
 * computeAdvantages([group]); // [[0.5, -0.5]] for rewards [1, 0]
 */
export function computeAdvantages(groups: readonly TrajectoryGroup[]): number[][] {
  return groups.map((group) => {
    const rewards = group.trajectories.map(totalReward);
    const mean = rewards.reduce((a, b) => a + b, 0) / Math.max(rewards.length, 1);
    return rewards.map((r) => r - mean);
  });
}

/**
 * Flattens a trajectory into datums carrying `advantage` on every action token. When a turn's
 * observation extends everything so far (the usual multi-turn chat), only the new tokens are
 * appended, so the whole episode is one datum; otherwise a new datum starts.
 *
 * @example
 * const [d] = trajectoryToData(trajectory, 0.5);
 * d.datum.lossFnInputs['advantages']; // 0 on the prompt, 0.5 on the sampled tokens (shifted by one)
 */
export function trajectoryToData(trajectory: Trajectory, advantage: number): RLDatum[] {
  const data: RLDatum[] = [];
  let tokens: number[] = [];
  let logprobs: number[] = [];
  let advantages: number[] = [];
  let mask: number[] = [];
  const flush = (): void => {
    if (tokens.length >= 2) data.push(makeRLDatum(tokens, logprobs, advantages, mask));
    [tokens, logprobs, advantages, mask] = [[], [], [], []];
  };
  for (const transition of trajectory.transitions) {
    const observation = transition.observation.prompt.toInts();
    const extends_ = observation.length >= tokens.length && tokens.every((t, i) => observation[i] === t);
    if (!extends_) flush();
    const added = observation.slice(tokens.length);
    tokens.push(...added, ...transition.action);
    logprobs.push(...added.map(() => 0), ...transition.logprobs);
    advantages.push(...added.map(() => 0), ...transition.action.map(() => advantage));
    mask.push(...added.map(() => 0), ...transition.action.map(() => 1));
  }
  flush();
  return data;
}

/** Shifts a sequence into a datum: input = tokens[:-1], targets and per-token inputs = [1:]. */
function makeRLDatum(tokens: number[], logprobs: number[], advantages: number[], mask: number[]): RLDatum {
  const shifted = { logprobs: logprobs.slice(1), advantages: advantages.slice(1), mask: mask.slice(1) };
  return { tokens, ...shifted, datum: buildDatum(tokens, shifted.logprobs, shifted.advantages) };
}

function buildDatum(tokens: number[], logprobs: number[], advantages: number[]): Datum {
  return {
    modelInput: ModelInput.fromInts(tokens.slice(0, -1)),
    lossFnInputs: {
      target_tokens: TensorData.int64(tokens.slice(1)),
      logprobs: TensorData.float32(logprobs),
      advantages: TensorData.float32(advantages),
    },
  };
}

/**
 * Every group's trajectories as datums with their advantages. Groups whose rewards are all equal
 * are left out: their advantages are zero, so they would only cost compute.
 *
 * @example
 * const data = assembleTrainingData(groups);
 * await training.forwardBackward(data.map((d) => d.datum), 'importance_sampling');
 */
export function assembleTrainingData(groups: readonly TrajectoryGroup[]): RLDatum[] {
  const advantages = computeAdvantages(groups);
  return groups.flatMap((group, g) => {
    const groupAdvantages = advantages[g]!;
    if (groupAdvantages.every((a) => a === 0)) return [];
    return group.trajectories.flatMap((trajectory, i) => trajectoryToData(trajectory, groupAdvantages[i]!));
  });
}

/**
 * The reference model's logprob of every target token of each datum (`computeLogprobs` over the
 * full sequence; position 0 has none and is dropped, which aligns the rest with the targets).
 */
export async function computeReferenceLogprobs(reference: SamplingClient, data: readonly RLDatum[]): Promise<number[][]> {
  return Promise.all(
    data.map(async (d) => {
      const logprobs = await reference.computeLogprobs(ModelInput.fromInts(d.tokens));
      return logprobs.slice(1).map((lp) => lp ?? 0);
    }),
  );
}

/**
 * The cookbook's KL penalty: with `d_t = logp_sampled,t − logp_ref,t` on action tokens and `d̄` its
 * batch mean, each action token's advantage becomes `A_t + coef · (d̄ − d_t)`, i.e. `coef · d_t` is
 * subtracted and the batch-mean penalty added back (so the penalty shifts credit between tokens
 * without moving the overall advantage level). Returns new datums and `kl_policy_base` (= d̄).
 *
 * @example
 * const { data, klPolicyBase } = applyKlPenalty(rlData, await computeReferenceLogprobs(base, rlData), 0.1);
 */
export function applyKlPenalty(data: readonly RLDatum[], referenceLogprobs: readonly number[][], coef: number): { data: RLDatum[]; klPolicyBase: number } {
  const diffs = data.map((d, i) => d.logprobs.map((lp, t) => (d.mask[t]! > 0 ? lp - referenceLogprobs[i]![t]! : 0)));
  const actionTokens = data.reduce((n, d) => n + d.mask.reduce((a, b) => a + b, 0), 0);
  const meanDiff = actionTokens === 0 ? 0 : diffs.flat().reduce((a, b) => a + b, 0) / actionTokens;
  const penalised = data.map((d, i) => {
    const advantages = d.advantages.map((a, t) => a + coef * d.mask[t]! * (meanDiff - diffs[i]![t]!));
    return { ...d, advantages, datum: buildDatum(d.tokens, d.logprobs, advantages) };
  });
  return { data: penalised, klPolicyBase: meanDiff };
}

/**
 * How far the learner's logprobs (from `forwardBackward`) are from the sampler's on action tokens:
 * `optim/kl_sample_train_v1` = mean(q − lp), `_v2` = mean(½(q − lp)²), and `optim/entropy` = −mean(q).
 */
export function sampleTrainKlMetrics(data: readonly RLDatum[], learnerLogprobs: readonly TensorData[]): Metrics {
  let n = 0;
  let v1 = 0;
  let v2 = 0;
  let entropy = 0;
  data.forEach((d, i) => {
    const learner = learnerLogprobs[i]!.toArray();
    d.mask.forEach((m, t) => {
      if (m <= 0) return;
      const diff = d.logprobs[t]! - learner[t]!;
      n++;
      v1 += diff;
      v2 += 0.5 * diff * diff;
      entropy -= d.logprobs[t]!;
    });
  });
  if (n === 0) return {};
  return { 'optim/kl_sample_train_v1': v1 / n, 'optim/kl_sample_train_v2': v2 / n, 'optim/entropy': entropy / n };
}

/**
 * Rollout metrics under the reference's names: `env/all/reward/total` (mean total reward), the mean
 * of every env metric as `env/all/<name>`, the same per logging tag as `env/<tag>/…`,
 * `env/all/turns_per_episode`, `env/all/ac_tokens_per_turn`, `env/all/ob_tokens_per_turn`, and
 * `by_group/frac_mixed|frac_all_good|frac_all_bad`.
 */
export function trajectoryMetrics(groups: readonly TrajectoryGroup[]): Metrics {
  const metrics: Metrics = {};
  const byTag = new Map<string, TrajectoryGroup[]>([['all', [...groups]]]);
  for (const group of groups) for (const tag of group.tags) byTag.set(tag, [...(byTag.get(tag) ?? []), group]);
  for (const [tag, tagGroups] of byTag) {
    const trajectories = tagGroups.flatMap((g) => g.trajectories);
    const transitions = trajectories.flatMap((t) => t.transitions);
    if (trajectories.length === 0) continue;
    metrics[`env/${tag}/reward/total`] = mean(trajectories.map(totalReward));
    metrics[`env/${tag}/turns_per_episode`] = transitions.length / trajectories.length;
    if (transitions.length > 0) {
      metrics[`env/${tag}/ac_tokens_per_turn`] = mean(transitions.map((t) => t.action.length));
      metrics[`env/${tag}/ob_tokens_per_turn`] = mean(transitions.map((t) => t.observation.prompt.length));
    }
    // Env metrics are averaged over the episodes; a turn-level metric counts its episode's last value.
    const perEpisode = trajectories.map((t) => Object.assign({}, ...t.transitions.map((tr) => tr.metrics)) as Metrics);
    const names = new Set(perEpisode.flatMap((m) => Object.keys(m)));
    for (const name of names) metrics[`env/${tag}/${name}`] = mean(perEpisode.flatMap((m) => (m[name] === undefined ? [] : [m[name]])));
  }
  const groupRewards = groups.map((g) => g.trajectories.map(totalReward));
  const best = Math.max(...groupRewards.flat());
  const worst = Math.min(...groupRewards.flat());
  const constant = groupRewards.filter((r) => r.every((x) => x === r[0]));
  metrics['by_group/frac_mixed'] = groups.length === 0 ? 0 : (groups.length - constant.length) / groups.length;
  metrics['by_group/frac_all_good'] = groups.length === 0 ? 0 : constant.filter((r) => r[0] === best && best !== worst).length / groups.length;
  metrics['by_group/frac_all_bad'] = groups.length === 0 ? 0 : constant.filter((r) => r[0] === worst && best !== worst).length / groups.length;
  return metrics;
}

function mean(values: readonly number[]): number {
  return values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length;
}
