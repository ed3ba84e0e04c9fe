/**
 * @module SDK data types: sampling parameters, requests and results.
 */
import type { TensorData } from '../tensor.js';
import type { ModelInput } from './model-input.js';

/**
 * How to sample.
 *
 * @example
 * const params: SamplingParams = { maxTokens: 32, temperature: 0.7, stop: [151645], seed: 1 };
 */
export interface SamplingParams {
  /** Most tokens to generate (the server's default fills the context when unset). */
  maxTokens?: number;
  /** Makes sampling reproducible. */
  seed?: number;
  /** Stop strings or stop token ids; a matched stop token is included in the output. */
  stop?: string | readonly string[] | readonly number[];
  /** Default 1; 0 is greedy. */
  temperature?: number;
  /** Default -1 (off). */
  topK?: number;
  /** Default 1. */
  topP?: number;
}

/**
 * Why a sequence ended: a stop condition matched, or `maxTokens` ran out.
 *
 * @example
 * if (seq.stopReason === 'length') console.warn('truncated');
 */
export type StopReason = 'stop' | 'length';

/**
 * One generated continuation with the logprob of each sampled token.
 *
 * @example
 * const [seq] = (await sampler.sample({ prompt, numSamples: 1, samplingParams: { maxTokens: 8 } })).sequences;
 * seq?.tokens; seq?.logprobs; seq?.stopReason;
 */
export interface SampledSequence {
  stopReason: StopReason;
  tokens: number[];
  logprobs: number[] | null;
  /** The server's id for this sequence (`sample_sequence_ids`), when it sends one. */
  sequenceId?: string;
  /**
   * Per sampled token, the top-k `[tokenId, logprob]` pairs of its step's distribution, best first
   * (`topkSampleLogprobs`); absent unless requested.
   */
  topkLogprobs?: ([number, number][] | null)[];
}

/**
 * The result of `sample`.
 *
 * @example
 * const res = await sampler.sample({ prompt, numSamples: 2, samplingParams: { maxTokens: 8 }, includePromptLogprobs: true });
 * res.sequences.length; // 2
 * res.promptLogprobs?.[0]; // null (nothing predicts the first token)
 */
export interface SampleResponse {
  sequences: SampledSequence[];
  /** Per prompt position, when requested; position 0 is `null`. */
  promptLogprobs: (number | null)[] | null;
  /** Per prompt position, the top-k `[tokenId, logprob]` pairs, when requested. */
  topkPromptLogprobs: ([number, number][] | null)[] | null;
  promptCacheHitTokens: number;
  /**
   * The logprobs of the token ids named by `targetPromptLogprobs`: float32 `[prompt length - 1, K]`,
   * cell `[i, j]` scored at prompt position `i + 1`, NaN where the id was -1. Absent unless requested.
   */
  targetPromptLogprobs?: TensorData<'float32'>;
  /**
   * `promptAltTokensK` tokens drawn at every prompt position after the first (`[prompt length - 1, k]`),
   * with their logprobs. Absent unless requested.
   */
  promptAltTokens?: PromptAltTokens;
}

/**
 * Tokens drawn (with replacement, at the request's temperature) from the model's next-token
 * distribution at each prompt position after the first: row `i` is position `i + 1`.
 *
 * @example
 * const { tokens, logprobs } = res.promptAltTokens!;
 * tokens.shape; // [promptLength - 1, k]
 */
export interface PromptAltTokens {
  tokens: TensorData<'int64'>;
  logprobs: TensorData<'float32'>;
}

/**
 * Arguments of `SamplingClient.sample`.
 *
 * @example
 * sampler.sample({ prompt: ModelInput.fromInts([1, 2]), numSamples: 4, samplingParams: { maxTokens: 16, seed: 7 } });
 */
export interface SampleArgs {
  prompt: ModelInput;
  /** Default 1. */
  numSamples?: number;
  samplingParams?: SamplingParams;
  /** Also return the logprob of every prompt token. */
  includePromptLogprobs?: boolean;
  /** Also return the top-k alternatives at every prompt position. */
  topkPromptLogprobs?: number;
  /** Also return the top-k alternatives of every sampled token (`SampledSequence.topkLogprobs`), k <= 100. */
  topkSampleLogprobs?: number;
  /**
   * Token ids whose logprobs to return at each prompt position: int64 `[prompt length - 1, K]`
   * (K <= 100), cell `[i, j]` scored at position `i + 1`, -1 for none (`SampleResponse.targetPromptLogprobs`).
   */
  targetPromptLogprobs?: TensorData<'int64'>;
  /** Draw this many alternative tokens at every prompt position after the first (`SampleResponse.promptAltTokens`), k <= 100. */
  promptAltTokensK?: number;
}
