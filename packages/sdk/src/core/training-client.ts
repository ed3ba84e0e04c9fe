/**
 * @module `TrainingClient`: one LoRA training run. Forward/backward passes, optimizer steps,
 * checkpoints, and sampling clients on its weights.
 */
import type { DatumIn } from '@lathe/protocol';
import { APIFuture } from './api-future.js';
import { APIError, APIUserAbortError, InvalidArgumentError, LatheError } from './errors.js';
import type { LoadStateOptions, SaveStateOptions, SaveWeightsExternalOptions, SaveWeightsForSamplerOptions } from './checkpoint-options.js';
import type { RequestOptions } from './request-options.js';
import { createSamplingSession, SamplingClient } from './sampling-client.js';
import { TensorData } from './tensor.js';
import type {
  AdamParams,
  CustomLossFn,
  Datum,
  DimuonParams,
  ForwardBackwardOutput,
  GetInfoResponse,
  LoadWeightsResponse,
  LossFnConfig,
  LossFnType,
  OptimStepResponse,
  SaveWeightsExternalResponse,
  SaveWeightsResponse,
} from './types.js';
import * as api from '../internal/api.js';
import { chunkData, combineOutputs } from '../internal/chunks.js';
import type { ClientContext } from '../internal/context.js';
import { retrieveFuture, type ResultKind, type ResultOf } from '../internal/futures.js';
import { abortable, type ServerClientConfig } from '../internal/session.js';
import { adamParamsToJson, datumToProto, dimuonParamsToJson } from '../internal/wire.js';

/** A place in the client's submission order. */
interface Turn {
  /** Resolves when every earlier turn has been released. */
  ready: Promise<void>;
  release: () => void;
}

/**
 * A LoRA training run. Every training call returns an {@link APIFuture} at once and is sent in
 * call order: each request's `seq_id` is the next of this run (from 1), and the next request is
 * sent only after the server accepted the previous one, so the server applies them in order even
 * when you pipeline. Gradients of consecutive `forwardBackward` calls accumulate until `optimStep`.
 *
 * @example
 * const training = await service.createLoraTrainingClient({ baseModel: 'lathe/tiny-qwen3', rank: 8 });
 * for (const batch of batches) {
 *   const fb = training.forwardBackward(batch, 'cross_entropy');
 *   const step = training.optimStep({ learningRate: 1e-4 });
 *   console.log((await fb).metrics['loss:sum']);
 *   await step;
 * }
 * const sampler = await training.saveWeightsAndGetSamplingClient();
 */
export class TrainingClient {
  /** The run's id (`{session_id}:train:{n}`); also its REST `trainingRunId`. */
  readonly modelId: string;
  readonly #ctx: ClientContext;
  readonly #config: ServerClientConfig;
  /** The `seq_id` of the next request sent. */
  #nextSeq = 1;
  #tail: Promise<void> = Promise.resolve();

  /**
   * Wraps an existing run (normally created for you by `ServiceClient`). `nextSeqId` is the
   * `seq_id` of the next request (1 right after `create_model`).
   *
   * @example
   * const training = new TrainingClient(ctx, config, 'S:train:0');
   */
  constructor(ctx: ClientContext, config: ServerClientConfig, modelId: string, nextSeqId = 1) {
    this.#ctx = ctx;
    this.#config = config;
    this.modelId = modelId;
    this.#nextSeq = nextSeqId;
  }

  // -------------------------------------------------------------------------------------------
  // Ordering

  /** Reserves the next place in the submission order (synchronously, at call time). */
  #reserveTurn(): Turn {
    const ready = this.#tail;
    let release!: () => void;
    this.#tail = new Promise<void>((resolve) => (release = resolve));
    return { ready, release };
  }

  /** Runs `work` in `turn`, releasing the turn afterwards (never before the turns ahead of it). */
  async #inTurn<T>(turn: Turn, signal: AbortSignal | undefined, work: () => Promise<T>): Promise<T> {
    try {
      await abortable(turn.ready, signal);
      return await work();
    } finally {
      void turn.ready.then(turn.release);
    }
  }

  /**
   * Sends one seq-numbered request and returns its request id. The `seq_id` is consumed once the
   * request was sent, as the Python SDK does: a server logs a request it refuses (a 4xx) in that
   * `seq_id`'s place, so the run goes past it. Only a 429 ("send it again later") takes no place.
   */
  async #post(submit: (seqId: number) => Promise<string>, options: RequestOptions | undefined): Promise<string> {
    const seq = this.#nextSeq;
    if (options?.signal?.aborted) throw new APIUserAbortError(undefined, { cause: options.signal.reason });
    // Called outside the try: a body that cannot be built (thrown synchronously) takes no seq_id.
    const sent = submit(seq);
    try {
      const requestId = await sent;
      this.#nextSeq = seq + 1;
      return requestId;
    } catch (error) {
      if (!(error instanceof APIError && error.status === 429)) this.#nextSeq = Math.max(this.#nextSeq, seq + 1);
      throw error;
    }
  }

  #retrieve<K extends ResultKind>(requestId: string, kind: K, requestType: string, options: RequestOptions | undefined): Promise<ResultOf<K>> {
    return retrieveFuture(this.#ctx.transport, requestId, { kind, requestType, pollTimeoutMs: this.#ctx.pollTimeoutMs, signal: options?.signal });
  }

  /** A JSON request in the next turn, then its result. */
  #simple<T>(requestType: string, submit: (seqId: number) => Promise<string>, parse: (result: unknown) => T, options: RequestOptions | undefined): APIFuture<T> {
    const turn = this.#reserveTurn();
    const submitted = this.#inTurn(turn, options?.signal, async () => [await this.#post(submit, options)]);
    const result = submitted.then(async ([id]) => parse(await this.#retrieve(id!, 'json', requestType, options)));
    return new APIFuture(submitted, result);
  }

  // -------------------------------------------------------------------------------------------
  // Forward / backward

  #fwdBwd(data: readonly Datum[], lossFn: LossFnType, lossFnConfig: LossFnConfig | undefined, forwardOnly: boolean, options: RequestOptions | undefined, turn?: Turn): APIFuture<ForwardBackwardOutput> {
    let chunks: DatumIn[][];
    try {
      if (data.length === 0) throw new InvalidArgumentError('forwardBackward needs at least one datum');
      const converted = new Map(data.map((d, i) => [d, datumToProto(d, i)]));
      chunks = chunkData(data, this.#config.fwdbwdMaxChunkLen, this.#config.fwdbwdMaxChunkBytes).map((chunk) => chunk.map((d) => converted.get(d)!));
    } catch (error) {
      if (turn) void turn.ready.then(turn.release);
      const failed = Promise.reject(error as Error);
      return new APIFuture(failed, failed);
    }
    const myTurn = turn ?? this.#reserveTurn();
    const requestType = forwardOnly ? 'Forward' : 'ForwardBackward';
    // Chunks go out one after another, in seq order: a chunk the server refuses stops the rest.
    const submitted = this.#inTurn(myTurn, options?.signal, async () => {
      const ids: string[] = [];
      for (const chunk of chunks) {
        ids.push(
          await this.#post((seq) => api.forwardBackward(this.#ctx.transport, { modelId: this.modelId, seqId: seq, data: chunk, lossFn, lossFnConfig: lossFnConfig ?? {}, forwardOnly }, options), options),
        );
      }
      return ids;
    });
    const result = submitted.then(async (ids) => combineOutputs(await Promise.all(ids.map((id) => this.#retrieve(id, 'fwdbwd', requestType, options)))));
    return new APIFuture(submitted, result);
  }

  /**
   * Runs the model on `data` and computes the loss and its gradient, which accumulates into the
   * adapter's gradient until the next `optimStep`. Large batches are split into several requests
   * (at most 1024 datums or ~5 MB each, as the server's client config says) and the results merged:
   * outputs concatenated in order, metrics combined by their `name:reduction` suffix.
   *
   * @param lossFnConfig extra loss settings, e.g. `{ clip_low_threshold: 0.8, clip_high_threshold: 1.2 }` for `ppo`
   * @example
   * const out = await training.forwardBackward(
   *   [{ modelInput: ModelInput.fromInts(tokens.slice(0, -1)), lossFnInputs: { target_tokens: tokens.slice(1), weights } }],
   *   'cross_entropy',
   * );
   * out.metrics['loss:sum'];
   */
  forwardBackward(data: readonly Datum[], lossFn: LossFnType, lossFnConfig?: LossFnConfig, options?: RequestOptions): APIFuture<ForwardBackwardOutput> {
    return this.#fwdBwd(data, lossFn, lossFnConfig, false, options);
  }

  /**
   * Runs the model on `data` and computes the loss, without gradients (evaluation).
   *
   * @example
   * const { lossFnOutputs } = await training.forward(evalData, 'cross_entropy');
   * lossFnOutputs[0]?.['logprobs']?.data;
   */
  forward(data: readonly Datum[], lossFn: LossFnType, lossFnConfig?: LossFnConfig, options?: RequestOptions): APIFuture<ForwardBackwardOutput> {
    return this.#fwdBwd(data, lossFn, lossFnConfig, true, options);
  }

  /**
   * A training step with a loss computed here, on the client. The SDK runs `forward` to get each
   * datum's logprobs of its `target_tokens`, calls `lossFn(data, logprobs)`, which returns the loss
   * and `dLoss/dLogprobs`, then runs `forwardBackward` with `cross_entropy` and
   * `weights = -dLoss/dLogprobs`, whose gradient is exactly the custom loss's gradient. Datums may
   * carry only `target_tokens` (and optionally `weights`, used in the forward pass only). The
   * returned metrics are the backward pass's plus `lossFn`'s.
   *
   * The step keeps its place in the order: calls made after it are sent after its backward pass.
   *
   * @example
   * // Per-token squared logprob penalty: loss = sum(lp^2), dloss/dlp = 2·lp.
   * const out = await training.forwardBackwardCustom(data, (_data, logprobs) => ({
   *   loss: logprobs.reduce((s, lp) => s + lp.data.reduce((a, v) => a + v * v, 0), 0),
   *   gradients: logprobs.map((lp) => lp.data.map((v) => 2 * v)),
   * }));
   */
  forwardBackwardCustom(data: readonly Datum[], lossFn: CustomLossFn, options?: RequestOptions): APIFuture<ForwardBackwardOutput> {
    const forwardTurn = this.#reserveTurn();
    const backwardTurn = this.#reserveTurn();
    let forwardData: Datum[];
    try {
      forwardData = data.map((datum, i) => {
        const keys = Object.keys(datum.lossFnInputs);
        if (!keys.includes('target_tokens')) throw new InvalidArgumentError(`data[${i}]: forwardBackwardCustom needs target_tokens`);
        const extra = keys.filter((k) => k !== 'target_tokens' && k !== 'weights');
        if (extra.length > 0) throw new InvalidArgumentError(`data[${i}]: forwardBackwardCustom only takes target_tokens and weights, got ${extra.join(', ')}`);
        if (keys.includes('weights')) return datum;
        const targets = datumToProto(datum, i).lossFnInputs['target_tokens']!;
        return { modelInput: datum.modelInput, lossFnInputs: { ...datum.lossFnInputs, weights: TensorData.float32(new Float32Array(targets.data.length), targets.shape) } };
      });
    } catch (error) {
      void forwardTurn.ready.then(forwardTurn.release);
      void backwardTurn.ready.then(backwardTurn.release);
      const failed = Promise.reject(error as Error);
      return new APIFuture(failed, failed);
    }
    const forward = this.#fwdBwd(forwardData, 'cross_entropy', undefined, true, options, forwardTurn);
    let resolveSubmitted: (ids: readonly string[]) => void = () => undefined;
    let rejectSubmitted: (error: unknown) => void = () => undefined;
    const submitted = new Promise<readonly string[]>((resolve, reject) => {
      resolveSubmitted = resolve;
      rejectSubmitted = reject;
    });
    const result = (async (): Promise<ForwardBackwardOutput> => {
      let backward: APIFuture<ForwardBackwardOutput>;
      let metrics: Record<string, number> | undefined;
      try {
        const forwardOut = await forward;
        const logprobs = forwardOut.lossFnOutputs.map((out, i) => {
          const lp = out['logprobs'];
          if (!lp) throw new LatheError(`the forward pass returned no logprobs for datum ${i}`);
          return lp.dtype === 'float32' ? (lp as TensorData<'float32'>) : TensorData.float32(lp.data, lp.shape);
        });
        const custom = await lossFn(data, logprobs);
        metrics = custom.metrics;
        if (custom.gradients.length !== data.length) throw new InvalidArgumentError(`the custom loss returned ${custom.gradients.length} gradients for ${data.length} datums`);
        const linear: Datum[] = data.map((datum, i) => {
          const grad = custom.gradients[i]!;
          const values = grad instanceof TensorData ? grad.data : grad;
          const shape = logprobs[i]!.shape;
          if (values.length !== logprobs[i]!.size) throw new InvalidArgumentError(`gradient ${i} has ${values.length} values; its logprobs have ${logprobs[i]!.size}`);
          const weights = new Float32Array(values.length);
          for (let j = 0; j < values.length; j++) weights[j] = -Number(values[j]);
          return { modelInput: datum.modelInput, lossFnInputs: { target_tokens: datum.lossFnInputs['target_tokens']!, weights: TensorData.float32(weights, shape) } };
        });
        backward = this.#fwdBwd(linear, 'cross_entropy', undefined, false, options, backwardTurn);
      } catch (error) {
        // The backward pass never went out: give its place in the order up.
        void backwardTurn.ready.then(backwardTurn.release);
        throw error;
      }
      backward.submitted().then(resolveSubmitted, rejectSubmitted);
      const out = await backward;
      return { ...out, metrics: { ...out.metrics, ...metrics } };
    })();
    result.catch(rejectSubmitted);
    return new APIFuture(submitted, result);
  }

  // -------------------------------------------------------------------------------------------
  // Optimizer and checkpoints

  /**
   * Applies one optimizer step with the accumulated gradients, then clears them: AdamW (all six
   * settings sent, unset ones taking the defaults of {@link AdamParams}), or Dimuon
   * (`{ type: 'dimuon', … }`, for a run created with that optimizer; sent as `optimizer_params`).
   *
   * @example
   * await training.optimStep({ learningRate: 1e-4, weightDecay: 0.01, gradClipNorm: 1 });
   * await dimuonRun.optimStep({ type: 'dimuon', learningRate: 0.02 });
   */
  optimStep(params: AdamParams | DimuonParams, options?: RequestOptions): APIFuture<OptimStepResponse> {
    const step = 'type' in params && params.type === 'dimuon' ? { optimizer_params: dimuonParamsToJson(params) } : { adam_params: adamParamsToJson(params as AdamParams) };
    return this.#simple('OptimStep', (seq) => api.optimStep(this.#ctx.transport, this.modelId, seq, step, options), api.optimStepResult, options);
  }

  /**
   * Saves the adapter and optimizer state as `tinker://{modelId}/weights/{name}`, for resuming
   * with `loadState*` or `createTrainingClientFromState*`.
   *
   * @example
   * const { path } = await training.saveState('step-100', { ttlSeconds: 86_400 });
   */
  saveState(name: string, options?: SaveStateOptions): APIFuture<SaveWeightsResponse> {
    const body = { name, ttlSeconds: options?.ttlSeconds, overwrite: options?.overwrite ?? false, userMetadata: options?.userMetadata };
    return this.#simple('SaveWeights', (seq) => api.saveWeights(this.#ctx.transport, 'save_weights', this.modelId, seq, body, options), api.saveWeightsResult, options);
  }

  #load(path: string, optimizer: boolean, options: LoadStateOptions | undefined): APIFuture<LoadWeightsResponse> {
    const body = { path, optimizer, optimizerConfig: options?.optimizerConfig };
    return this.#simple('LoadWeights', (seq) => api.loadWeights(this.#ctx.transport, this.modelId, seq, body, options), api.loadWeightsResult, options);
  }

  /**
   * Loads adapter weights from a checkpoint; the optimizer state starts fresh.
   *
   * @example
   * await training.loadState('tinker://S:train:0/weights/step-100');
   */
  loadState(path: string, options?: LoadStateOptions): APIFuture<LoadWeightsResponse> {
    return this.#load(path, false, options);
  }

  /**
   * Loads adapter weights and the optimizer state (Adam moments) from a `weights/` checkpoint.
   *
   * @example
   * await training.loadStateWithOptimizer('tinker://S:train:0/weights/step-100');
   */
  loadStateWithOptimizer(path: string, options?: LoadStateOptions): APIFuture<LoadWeightsResponse> {
    return this.#load(path, true, options);
  }

  /**
   * Saves the adapter for sampling as `tinker://{modelId}/sampler_weights/{name}`.
   *
   * @example
   * const { path } = await training.saveWeightsForSampler('final');
   * const sampler = await service.createSamplingClient({ modelPath: path });
   */
  saveWeightsForSampler(name: string, options?: SaveWeightsForSamplerOptions): APIFuture<SaveWeightsResponse> {
    const body = { name, ttlSeconds: options?.ttlSeconds, userMetadata: options?.userMetadata };
    return this.#simple('SaveWeightsForSampler', (seq) => api.saveWeights(this.#ctx.transport, 'save_weights_for_sampler', this.modelId, seq, body, options), api.saveWeightsResult, options);
  }

  /**
   * Saves the adapter as a Hugging Face PEFT adapter (`adapter_config.json` +
   * `adapter_model.safetensors`, loadable by `peft` and vLLM) at
   * `tinker://{modelId}/external_weights/{name}`; download it with `RestClient.getExternalWeightsUrls`.
   *
   * @example
   * const { path } = await training.saveWeightsExternal('hf');
   * const { urls } = await service.createRestClient().getExternalWeightsUrls(path);
   */
  saveWeightsExternal(name: string, options?: SaveWeightsExternalOptions): APIFuture<SaveWeightsExternalResponse> {
    const body = { name, ttlSeconds: options?.ttlSeconds };
    return this.#simple('SaveWeightsExternal', (seq) => api.saveWeights(this.#ctx.transport, 'save_weights_external', this.modelId, seq, body, options), api.saveWeightsExternalResult, options);
  }

  /**
   * Saves the current weights (unnamed, short-lived) and returns a sampler on them: the quick
   * way to sample mid-training.
   *
   * @example
   * const sampler = await training.saveWeightsAndGetSamplingClient();
   * const res = await sampler.sample({ prompt, numSamples: 1, samplingParams: { maxTokens: 20 } });
   */
  async saveWeightsAndGetSamplingClient(options?: RequestOptions): Promise<SamplingClient> {
    const body = { samplingSessionSeqId: this.#ctx.session.nextSamplingSessionSeqId() };
    const future = this.#simple('SaveWeightsForSampler', (seq) => api.saveWeights(this.#ctx.transport, 'save_weights_for_sampler', this.modelId, seq, body, options), api.samplingSessionResult, options);
    return new SamplingClient(this.#ctx, await future);
  }

  /**
   * A sampler on saved sampler weights (same as `ServiceClient.createSamplingClient({ modelPath })`).
   *
   * @example
   * const sampler = await training.createSamplingClient('tinker://S:train:0/sampler_weights/final');
   */
  async createSamplingClient(modelPath: string, options?: RequestOptions): Promise<SamplingClient> {
    return new SamplingClient(this.#ctx, await createSamplingSession(this.#ctx, { modelPath }, options));
  }

  /**
   * The run's base model, LoRA rank and tokenizer id.
   *
   * @example
   * const info = await training.getInfo();
   * info.loraRank; info.modelData.tokenizerId;
   */
  async getInfo(options?: RequestOptions): Promise<GetInfoResponse> {
    return api.getInfo(this.#ctx.transport, this.modelId, options);
  }
}
