/**
 * @module Supervised datums: a token sequence with per-token loss weights becomes a Tinker `Datum`
 * whose loss inputs are aligned with the shifted sequence (position i of the input predicts token i+1).
 */
import { ModelInput, TensorData, type Datum } from '@lathe/sdk';
import type { SupervisedExample } from '../renderers/types.js';

export type { SupervisedExample };


/**
 * How per-token weights are normalised. `mean`: divided by their sum, so each example contributes
 * its token-mean loss (the cookbook's SFT default). `none`: kept as they are (token-sum loss).
 */
export type Reduction = 'mean' | 'none';

/** Options of {@link datumFromExample}. */
export interface DatumOptions {
  /** Keep at most this many tokens (before the shift), cutting from the right. */
  maxLength?: number;
  /** Default `mean`. */
  reduction?: Reduction;
}

/**
 * Applies a {@link Reduction} to a weight vector. An all-zero vector stays all zero under `mean`
 * (the example then simply contributes no loss).
 *
 * @example
 * applyReduction([0, 1, 1, 2], 'mean'); // [0, 0.25, 0.25, 0.5]
 */
export function applyReduction(weights: readonly number[], reduction: Reduction): number[] {
  if (reduction === 'none') return [...weights];
  const total = weights.reduce((sum, w) => sum + w, 0);
  return total === 0 ? weights.map(() => 0) : weights.map((w) => w / total);
}

/**
 * Builds the datum for one example: right-truncates to `maxLength`, shifts (input = tokens[:-1],
 * target_tokens = tokens[1:], weights = weights[1:]) and applies the reduction.
 *
 * @example
 * const datum = datumFromExample({ tokens: [1, 2, 3, 4], weights: [0, 0, 1, 1] }, { reduction: 'none' });
 * datum.modelInput.toInts();          // [1, 2, 3]
 * datum.lossFnInputs['target_tokens']; // int64 [2, 3, 4]
 * datum.lossFnInputs['weights'];       // float32 [0, 1, 1]
 */
export function datumFromExample(example: SupervisedExample, options: DatumOptions = {}): Datum {
  const { tokens, weights } = example;
  if (tokens.length !== weights.length) {
    throw new RangeError(`an example needs one weight per token: ${tokens.length} tokens, ${weights.length} weights`);
  }
  const length = options.maxLength === undefined ? tokens.length : Math.min(tokens.length, options.maxLength);
  if (length < 2) throw new RangeError(`an example needs at least 2 tokens to predict one, got ${length}`);
  const kept = tokens.slice(0, length);
  const targetWeights = applyReduction(weights.slice(1, length), options.reduction ?? 'mean');
  return {
    modelInput: ModelInput.fromInts(kept.slice(0, -1)),
    lossFnInputs: {
      target_tokens: TensorData.int64(kept.slice(1)),
      weights: TensorData.float32(targetWeights),
    },
  };
}

/** The weights of a datum built by {@link datumFromExample}, as numbers. */
export function datumWeights(datum: Datum): number[] {
  return numbersOf(datum, 'weights');
}

/** A datum's loss input as plain numbers (whatever form it was given in). */
function numbersOf(datum: Datum, key: string): number[] {
  const input = datum.lossFnInputs[key];
  if (input === undefined) throw new RangeError(`the datum has no ${key} loss input`);
  if (input instanceof TensorData) return Array.from(input.data, Number);
  return Array.from(input as ArrayLike<number | bigint>, Number);
}

/**
 * Mean negative log-likelihood of a batch: Σ −w·logprob / Σ w over all datums, the cookbook's
 * `compute_mean_nll`. With `mean`-reduced weights this is the average of per-example token means.
 *
 * @example
 * const out = await training.forward(batch, 'cross_entropy');
 * meanNll(batch, out.lossFnOutputs.map((o) => o['logprobs']!));
 */
export function meanNll(data: readonly Datum[], logprobs: readonly TensorData[]): number {
  const { nats, weight } = weightedLoss(data, logprobs);
  return weight === 0 ? Number.NaN : nats / weight;
}

/**
 * Bits per byte of a batch: Σ −w·logprob / ln 2 / Σ w·bytes, where `bytes` is the UTF-8 length of
 * each target token's text (`TextTokenizer.byteLength`: 0 for special tokens, whose loss still
 * counts). Tokens are weighted as in {@link meanNll}, so this is that NLL in bits divided by the
 * weighted mean bytes per token; unlike NLL it compares across tokenizers.
 *
 * @example
 * meanBitsPerByte(batch, out.lossFnOutputs.map((o) => o['logprobs']!), (t) => tokenizer.byteLength(t));
 */
export function meanBitsPerByte(data: readonly Datum[], logprobs: readonly TensorData[], byteLength: (token: number) => number): number {
  const { nats, bytes } = weightedLoss(data, logprobs, byteLength);
  return bytes === 0 ? Number.NaN : nats / Math.LN2 / bytes;
}

/** Weighted sums over a batch's target tokens: nats of loss, weight, and (given `byteLength`) bytes. */
function weightedLoss(
  data: readonly Datum[],
  logprobs: readonly TensorData[],
  byteLength?: (token: number) => number,
): { nats: number; weight: number; bytes: number } {
  if (data.length !== logprobs.length) throw new RangeError(`${data.length} datums but ${logprobs.length} logprob vectors`);
  const sums = { nats: 0, weight: 0, bytes: 0 };
  data.forEach((datum, d) => {
    const weights = datumWeights(datum);
    const targets = byteLength === undefined ? undefined : numbersOf(datum, 'target_tokens');
    const lp = logprobs[d]!.data;
    weights.forEach((w, i) => {
      sums.nats -= w * Number(lp[i]);
      sums.weight += w;
      if (targets !== undefined && w !== 0) sums.bytes += w * byteLength!(targets[i]!);
    });
  });
  return sums;
}
