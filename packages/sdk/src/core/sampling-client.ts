/**
 * @module `SamplingClient`: generates from a base model or from saved LoRA weights.
 */
import { APIFuture } from './api-future.js';
import { FutureExpiredError, InvalidArgumentError, LatheError } from './errors.js';
import type { RequestOptions } from './request-options.js';
import type { ModelInput, SampleArgs, SampleResponse } from './types.js';
import * as api from '../internal/api.js';
import type { ClientContext } from '../internal/context.js';
import { retrieveFuture } from '../internal/futures.js';
import { modelInputToJson, sampleExtrasToJson, samplingParamsToJson } from '../internal/wire.js';

/**
 * What to sample from: saved sampler weights (`tinker://…/sampler_weights/…`, or any checkpoint
 * path the server accepts) or a base model.
 *
 * @example
 * const a: SamplingClientTarget = { modelPath: 'tinker://run/sampler_weights/final' };
 * const b: SamplingClientTarget = { baseModel: 'lathe/tiny-qwen3' };
 */
export type SamplingClientTarget = { modelPath: string; baseModel?: undefined } | { baseModel: string; modelPath?: undefined };

/**
 * Creates a sampling session on the server and returns its id (used by the client factories; not
 * exported from the package).
 *
 * @internal
 * @example
 * const id = await createSamplingSession(ctx, { baseModel: 'lathe/tiny-qwen3' });
 */
export async function createSamplingSession(ctx: ClientContext, target: SamplingClientTarget, options?: RequestOptions): Promise<string> {
  if (target.modelPath !== undefined && !target.modelPath.startsWith('tinker://')) {
    throw new InvalidArgumentError(`modelPath must start with tinker://, got ${JSON.stringify(target.modelPath)}`);
  }
  if (target.modelPath === undefined && target.baseModel === undefined) throw new InvalidArgumentError('createSamplingClient needs modelPath or baseModel');
  const { sessionId } = await ctx.session.ensure(options?.signal);
  const body = { sessionId, samplingSessionSeqId: ctx.session.nextSamplingSessionSeqId(), modelPath: target.modelPath, baseModel: target.modelPath === undefined ? target.baseModel : undefined };
  return api.createSamplingSession(ctx.transport, body, options);
}

/**
 * Samples from one sampling session. Get one from `ServiceClient.createSamplingClient` or
 * `TrainingClient.saveWeightsAndGetSamplingClient`. Requests carry a per-client `seq_id` (from 0),
 * reused when a submit is retried so the server runs it once.
 *
 * @example
 * const sampler = await service.createSamplingClient({ baseModel: 'lathe/tiny-qwen3' });
 * const res = await sampler.sample({ prompt: ModelInput.fromInts([9707, 1879]), numSamples: 2, samplingParams: { maxTokens: 16, seed: 1 } });
 * for (const seq of res.sequences) console.log(seq.tokens, seq.stopReason);
 */
export class SamplingClient {
  /** The server's id of this sampling session. */
  readonly samplingSessionId: string;
  readonly #ctx: ClientContext;
  #seq = 0;

  /**
   * Wraps an existing sampling session (normally created for you by the factories).
   *
   * @example
   * const sampler = new SamplingClient(ctx, 'S:sample:0');
   */
  constructor(ctx: ClientContext, samplingSessionId: string) {
    this.#ctx = ctx;
    this.samplingSessionId = samplingSessionId;
  }

  /**
   * Generates `numSamples` continuations of `prompt`, with each token's logprob, and optionally
   * the prompt's logprobs (`includePromptLogprobs`) and top-k alternatives (`topkPromptLogprobs`),
   * each sampled token's top-k (`topkSampleLogprobs`), the logprobs of chosen ids at prompt
   * positions (`targetPromptLogprobs`) and alternative tokens drawn there (`promptAltTokensK`).
   * Sampling with a `seed` is reproducible.
   *
   * @example
   * const res = await sampler.sample({
   *   prompt: ModelInput.fromInts(promptTokens),
   *   numSamples: 4,
   *   samplingParams: { maxTokens: 64, temperature: 0.8, stop: [151645], seed: 42 },
   * });
   * res.sequences[0]?.tokens;
   */
  sample(args: SampleArgs, options?: RequestOptions): APIFuture<SampleResponse> {
    const numSamples = args.numSamples ?? 1;
    let submittedIds: (ids: readonly string[]) => void = () => undefined;
    let submitFailed: (error: unknown) => void = () => undefined;
    const submitted = new Promise<readonly string[]>((resolve, reject) => {
      submittedIds = resolve;
      submitFailed = reject;
    });
    const run = async (): Promise<SampleResponse> => {
      const maxResubmits = options?.maxRetries ?? this.#ctx.transport.config.maxRetries;
      for (let attempt = 0; ; attempt++) {
        const { requestId, sequenceIds } = await this.#submit(args, numSamples, options);
        if (attempt === 0) submittedIds([requestId]);
        try {
          const result = await retrieveFuture(this.#ctx.transport, requestId, { kind: 'sample', requestType: 'Sample', pollTimeoutMs: this.#ctx.pollTimeoutMs, signal: options?.signal });
          if (sequenceIds && sequenceIds.length === result.sequences.length) result.sequences.forEach((s, i) => (s.sequenceId = sequenceIds[i]!));
          if (args.promptAltTokensK && !result.promptAltTokens) {
            // A server that predates the draws ignores the request key (the Python SDK raises too).
            throw new LatheError(`promptAltTokensK=${args.promptAltTokensK} was requested but the server returned no prompt_alt_tokens; it may predate this feature`);
          }
          return result;
        } catch (error) {
          // An expired future is resubmitted as a new request (new seq_id), as the Python SDK does.
          if (error instanceof FutureExpiredError && attempt < maxResubmits) continue;
          throw error;
        }
      }
    };
    const result = run();
    result.catch(submitFailed);
    return new APIFuture(submitted, result);
  }

  async #submit(args: SampleArgs, numSamples: number, options: RequestOptions | undefined): Promise<{ requestId: string; sequenceIds: string[] | undefined }> {
    const extras = sampleExtrasToJson(args); // checked before a seq_id is taken
    const body = {
      num_samples: numSamples,
      prompt: modelInputToJson(args.prompt),
      sampling_params: samplingParamsToJson(args.samplingParams),
      sampling_session_id: this.samplingSessionId,
      seq_id: this.#seq++,
      prompt_logprobs: args.includePromptLogprobs ?? false,
      topk_prompt_logprobs: args.topkPromptLogprobs ?? 0,
      ...extras,
    };
    return api.asample(this.#ctx.transport, body, options);
  }

  /**
   * The logprob of every prompt token under the model (`null` for the first, which nothing predicts).
   *
   * @example
   * const lps = await sampler.computeLogprobs(ModelInput.fromInts([9707, 1879, 11]));
   * lps; // [null, -3.2, -1.1]
   */
  computeLogprobs(prompt: ModelInput, options?: RequestOptions): APIFuture<(number | null)[]> {
    const inner = this.sample({ prompt, numSamples: 1, samplingParams: { maxTokens: 1 }, includePromptLogprobs: true }, options);
    const result = inner.then((res) => {
      if (!res.promptLogprobs) throw new LatheError('the server returned no prompt logprobs');
      return res.promptLogprobs;
    });
    return new APIFuture(inner.submitted(), result);
  }

  /**
   * The base model behind this sampler (`GET /samplers/{id}`).
   *
   * @example
   * await sampler.getBaseModel(); // 'lathe/tiny-qwen3'
   */
  async getBaseModel(options?: RequestOptions): Promise<string> {
    return (await api.getSampler(this.#ctx.transport, this.samplingSessionId, options)).baseModel;
  }
}
