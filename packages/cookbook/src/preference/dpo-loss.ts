/**
 * @module The DPO loss (the cookbook's `train_dpo.py` loss, §3.4) as a closed-form function of the
 * learner's and the frozen reference's per-token logprobs, with its exact gradient, for
 * `TrainingClient.forwardBackwardCustom`.
 */
import type { CustomLossResult, Datum, TensorData } from '@lathe/sdk';
import { datumWeights } from '../supervised/datum.js';

/** Per-token values of one datum (logprobs aligned with its `target_tokens`). */
export type TokenValues = ArrayLike<number>;

/** The DPO statistics of a batch of pairs (means over pairs). */
export interface DpoMetrics {
  dpo_loss: number;
  /** Share of pairs whose chosen implicit reward is strictly above the rejected one's. */
  accuracy: number;
  /** chosen_reward − rejected_reward. */
  margin: number;
  /** β·(Σw·logp − Σw·logp_ref) of the chosen completions. */
  chosen_reward: number;
  rejected_reward: number;
}

/**
 * DPO over a batch laid out as pairs: datum 2k is the chosen completion, 2k+1 the rejected one, and
 * each datum's `weights` mask its completion tokens. With s = Σ_t w_t·logp_t,
 * Δ = s − s_ref, z = β(Δ_chosen − Δ_rejected): loss = mean over pairs of −log σ(z), and
 * ∂loss/∂logp_t = ∓ β·σ(−z)·w_t / pairs (− for chosen tokens, + for rejected ones).
 *
 * @example
 * const { loss, gradients, metrics } = dpoLoss(batch, learnerLogprobs, referenceLogprobs, 0.1);
 */
export function dpoLoss(
  data: readonly Datum[],
  logprobs: readonly TokenValues[],
  referenceLogprobs: readonly TokenValues[],
  beta: number,
): CustomLossResult & { metrics: DpoMetrics & Record<string, number> } {
  if (!(beta > 0)) throw new RangeError(`beta must be positive, got ${beta}`);
  if (data.length === 0 || data.length % 2 !== 0) throw new RangeError(`DPO needs chosen/rejected pairs: got ${data.length} datums`);
  if (logprobs.length !== data.length || referenceLogprobs.length !== data.length) {
    throw new RangeError(`${data.length} datums but ${logprobs.length} logprob and ${referenceLogprobs.length} reference vectors`);
  }
  const weights = data.map((datum, i) => {
    const w = datumWeights(datum);
    if (logprobs[i]!.length !== w.length || referenceLogprobs[i]!.length !== w.length) {
      throw new RangeError(`datum ${i}: ${w.length} weights, ${logprobs[i]!.length} logprobs, ${referenceLogprobs[i]!.length} reference logprobs`);
    }
    return w;
  });
  const logRatio = (i: number): number => {
    let sum = 0;
    for (let t = 0; t < weights[i]!.length; t++) sum += weights[i]![t]! * (logprobs[i]![t]! - referenceLogprobs[i]![t]!);
    return sum;
  };
  const pairs = data.length / 2;
  const gradients: Float32Array[] = [];
  const sums = { dpo_loss: 0, accuracy: 0, margin: 0, chosen_reward: 0, rejected_reward: 0 };
  for (let p = 0; p < pairs; p++) {
    const chosen = beta * logRatio(2 * p);
    const rejected = beta * logRatio(2 * p + 1);
    const z = chosen - rejected;
    sums.dpo_loss += softplus(-z); // −log σ(z), stable for large |z|
    sums.accuracy += chosen > rejected ? 1 : 0;
    sums.margin += z;
    sums.chosen_reward += chosen;
    sums.rejected_reward += rejected;
    const scale = (beta * sigmoid(-z)) / pairs;
    gradients.push(Float32Array.from(weights[2 * p]!, (w) => -scale * w), Float32Array.from(weights[2 * p + 1]!, (w) => scale * w));
  }
  const metrics = {
    dpo_loss: sums.dpo_loss / pairs,
    accuracy: sums.accuracy / pairs,
    margin: sums.margin / pairs,
    chosen_reward: sums.chosen_reward / pairs,
    rejected_reward: sums.rejected_reward / pairs,
  };
  return { loss: metrics.dpo_loss, gradients, metrics };
}

/** The logprobs of a forward pass as plain arrays. */
export function logprobValues(tensors: readonly TensorData[]): Float64Array[] {
  return tensors.map((t) => Float64Array.from(t.data as ArrayLike<number>, Number));
}

function sigmoid(x: number): number {
  return x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x));
}

function softplus(x: number): number {
  return Math.max(x, 0) + Math.log1p(Math.exp(-Math.abs(x)));
}
