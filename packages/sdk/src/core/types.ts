/**
 * @module The SDK's data types: model inputs, training data, sampling and optimizer parameters,
 * and the results of every call. Option and field names are camelCase; the wire stays snake_case
 * (loss-input keys such as `target_tokens` keep their wire names). Results are plain objects.
 */
import type { LossFnType as ProtocolLossFnType } from '@lathe/protocol';
import { InvalidArgumentError } from './errors.js';
import type { LossFnInput, TensorData } from './tensor.js';

// ---------------------------------------------------------------------------------------------
// Model input

/**
 * A run of token ids.
 *
 * @example
 * const chunk: EncodedTextChunk = { type: 'encoded_text', tokens: [9707, 1879] };
 */
export interface EncodedTextChunk {
  readonly type: 'encoded_text';
  readonly tokens: readonly number[];
}

/**
 * An image, for servers that serve vision models (Lathe does not). `expectedTokens` is how many
 * positions it takes.
 *
 * @example
 * const chunk: ImageChunk = { type: 'image', data: pngBytes, format: 'png', expectedTokens: 256 };
 */
export interface ImageChunk {
  readonly type: 'image';
  readonly data: Uint8Array;
  readonly format: 'png' | 'jpeg';
  readonly expectedTokens?: number;
}

/**
 * One piece of a {@link ModelInput}.
 *
 * @example
 * const chunks: ModelInputChunk[] = [{ type: 'encoded_text', tokens: [1, 2] }];
 */
export type ModelInputChunk = EncodedTextChunk | ImageChunk;

/**
 * The input of a model: a sequence of chunks (usually one run of token ids). Immutable:
 * `append` returns a new `ModelInput`.
 *
 * @example
 * const prompt = ModelInput.fromInts([9707, 1879, 11]);
 * prompt.length;                  // 3
 * prompt.appendInt(30).toInts();  // [9707, 1879, 11, 30]
 */
export class ModelInput {
  /** The chunks, in order. */
  readonly chunks: readonly ModelInputChunk[];

  /**
   * @example
   * new ModelInput([{ type: 'encoded_text', tokens: [1, 2] }]);
   */
  constructor(chunks: readonly ModelInputChunk[]) {
    this.chunks = Object.freeze([...chunks]);
  }

  /**
   * One text chunk holding `tokens`.
   *
   * @throws {InvalidArgumentError} on a token that is not a non-negative integer.
   * @example
   * ModelInput.fromInts([1, 2, 3]);
   */
  static fromInts(tokens: ArrayLike<number>): ModelInput {
    const list = Array.from(tokens);
    list.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0) throw new InvalidArgumentError(`ModelInput.fromInts: token ${i} (${t}) is not a non-negative integer`);
    });
    return new ModelInput([{ type: 'encoded_text', tokens: list }]);
  }

  /**
   * An input with no chunks.
   *
   * @example
   * ModelInput.empty().length; // 0
   */
  static empty(): ModelInput {
    return new ModelInput([]);
  }

  /**
   * All token ids, in order.
   *
   * @throws {InvalidArgumentError} if the input holds a non-text chunk.
   * @example
   * ModelInput.fromInts([1, 2]).append({ type: 'encoded_text', tokens: [3] }).toInts(); // [1, 2, 3]
   */
  toInts(): number[] {
    const out: number[] = [];
    for (const chunk of this.chunks) {
      if (chunk.type !== 'encoded_text') throw new InvalidArgumentError(`toInts only supports text chunks, got a ${chunk.type} chunk`);
      out.push(...chunk.tokens);
    }
    return out;
  }

  /**
   * The number of positions (tokens, plus each image's `expectedTokens`).
   *
   * @example
   * ModelInput.fromInts([1, 2, 3]).length; // 3
   */
  get length(): number {
    let n = 0;
    for (const chunk of this.chunks) {
      if (chunk.type === 'encoded_text') n += chunk.tokens.length;
      else if (chunk.expectedTokens !== undefined) n += chunk.expectedTokens;
      else throw new InvalidArgumentError('the length of an image chunk without expectedTokens is unknown');
    }
    return n;
  }

  /**
   * A new input with `chunk` added at the end.
   *
   * @example
   * ModelInput.empty().append({ type: 'encoded_text', tokens: [1] });
   */
  append(chunk: ModelInputChunk): ModelInput {
    return new ModelInput([...this.chunks, chunk]);
  }

  /**
   * A new input with one more token.
   *
   * @example
   * ModelInput.fromInts([1]).appendInt(2).toInts(); // [1, 2]
   */
  appendInt(token: number): ModelInput {
    return this.append({ type: 'encoded_text', tokens: [token] });
  }
}

// ---------------------------------------------------------------------------------------------
// Training data and losses

/**
 * The built-in loss functions (tinker-protocol.md §6.3). All are per token and summed.
 *
 * @example
 * const loss: LossFnType = 'importance_sampling';
 */
export type LossFnType = ProtocolLossFnType;

/**
 * One training example. Every loss input has first dimension `modelInput.length`; position `i`
 * predicts `target_tokens[i]`. Inputs may be `TensorData`, typed arrays or number lists (their
 * dtype is inferred from the key: `target_tokens` is int64, `weights`/`advantages`/`logprobs` float32).
 *
 * @example
 * const seq = [9707, 1879, 11, 1246];
 * const datum: Datum = {
 *   modelInput: ModelInput.fromInts(seq.slice(0, -1)),
 *   lossFnInputs: { target_tokens: seq.slice(1), weights: [0, 1, 1] },
 * };
 */
export interface Datum {
  readonly modelInput: ModelInput;
  readonly lossFnInputs: Readonly<Record<string, LossFnInput>>;
}

/**
 * Extra settings of a loss function, e.g. `{ clip_low_threshold: 0.8, clip_high_threshold: 1.2 }`
 * for `ppo`, `{ beta: 0.05 }` for `dro`. Keys are the wire names.
 *
 * @example
 * const config: LossFnConfig = { clip_low_threshold: 0.8, clip_high_threshold: 1.2 };
 */
export type LossFnConfig = Readonly<Record<string, number>>;

/**
 * The result of `forward` / `forwardBackward`: one output record per datum (usually
 * `{ logprobs }`, shaped like the datum's `target_tokens`) and metrics such as `'loss:sum'`.
 *
 * @example
 * const out = await training.forwardBackward(data, 'cross_entropy');
 * out.metrics['loss:sum'];
 * out.lossFnOutputs[0]?.['logprobs']?.data; // Float32Array
 */
export interface ForwardBackwardOutput {
  /** The output record class (`'ArrayRecord'`). */
  lossFnOutputType: string;
  /** Per datum, in input order: output name → tensor. */
  lossFnOutputs: Record<string, TensorData>[];
  /** Metrics named `name:reduction` (e.g. `'loss:sum'`). */
  metrics: Record<string, number>;
}

/**
 * What a custom loss function returns: the loss value, its gradient with respect to each datum's
 * logprobs (same shape), and optional metrics merged into the result.
 *
 * @example
 * const result: CustomLossResult = { loss: 1.5, gradients: [Float32Array.of(-1, -1)], metrics: { 'my_loss:sum': 1.5 } };
 */
export interface CustomLossResult {
  loss: number;
  gradients: readonly (Float32Array | readonly number[] | TensorData)[];
  metrics?: Record<string, number>;
}

/**
 * A loss computed on the client from per-datum logprobs (`forwardBackwardCustom`). It gets the
 * data and each datum's logprobs tensor and returns the loss and `dLoss/dLogprobs`.
 *
 * @example
 * // Mean negative log-likelihood over all tokens, by hand:
 * const nll: CustomLossFn = (data, logprobs) => {
 *   const n = logprobs.reduce((s, lp) => s + lp.size, 0);
 *   const loss = -logprobs.reduce((s, lp) => s + lp.data.reduce((a, b) => a + b, 0), 0) / n;
 *   return { loss, gradients: logprobs.map((lp) => new Float32Array(lp.size).fill(-1 / n)) };
 * };
 */
export type CustomLossFn = (data: readonly Datum[], logprobs: readonly TensorData<'float32'>[]) => CustomLossResult | Promise<CustomLossResult>;

/**
 * AdamW settings for one `optimStep` (decoupled weight decay, as `torch.optim.AdamW`).
 *
 * @example
 * const adam: AdamParams = { learningRate: 1e-4, weightDecay: 0.01 };
 */
export interface AdamParams {
  /** Default 1e-4. */
  learningRate?: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.95. */
  beta2?: number;
  /** Default 1e-12. */
  eps?: number;
  /** Decoupled weight decay; default 0. */
  weightDecay?: number;
  /** Global gradient-norm clipping; 0 (default) turns it off. */
  gradClipNorm?: number;
}

/**
 * Dimuon settings for one `optimStep` of a run created with `optimizerConfig: { type: 'dimuon' }`
 * (Tinker SDK >= 0.29): momentum, then an orthogonalised update of each LoRA factor. Unset
 * settings take the server's defaults on every step.
 *
 * @example
 * await training.optimStep({ type: 'dimuon', learningRate: 0.02, beta1: 0.9 });
 */
export interface DimuonParams {
  type: 'dimuon';
  learningRate: number;
  /** Global gradient-norm clipping; 0 (default) turns it off. */
  gradClipNorm?: number;
  /** Momentum; default 0.9, in [0, 1). */
  beta1?: number;
  /** SDK 0.29's damping (> 0); accepted, no effect on Lathe. */
  damping?: number;
  /** Scales the step by (32 / rank) ** exponent; default 0 (off). */
  rankLrCorrectionExponent?: number;
}

/**
 * A run's optimizer, chosen when it is created and fixed for its life (default AdamW).
 *
 * @example
 * await service.createLoraTrainingClient({ baseModel, optimizerConfig: { type: 'dimuon' } });
 */
export type OptimizerConfig = { type: 'adamw' } | { type: 'dimuon'; version?: 1 };

/**
 * The result of `optimStep`.
 *
 * @example
 * const { metrics } = await training.optimStep({ learningRate: 1e-4 });
 */
export interface OptimStepResponse {
  metrics: Record<string, number>;
}

/**
 * The result of `saveState` / `saveWeightsForSampler`: the checkpoint's `tinker://` path.
 *
 * @example
 * const { path } = await training.saveState('step-10'); // tinker://<run>/weights/step-10
 */
export interface SaveWeightsResponse {
  path: string;
}

/**
 * The result of `loadState` / `loadStateWithOptimizer`.
 *
 * @example
 * const { path } = await training.loadState('tinker://run/weights/step-10');
 */
export interface LoadWeightsResponse {
  path: string | undefined;
}

/**
 * What `getInfo` reports about a training run.
 *
 * @example
 * const info = await training.getInfo();
 * info.modelData.modelName; // 'lathe/tiny-qwen3'
 */
export interface GetInfoResponse {
  modelId: string;
  modelName: string | undefined;
  isLora: boolean | undefined;
  loraRank: number | undefined;
  modelData: { arch: string | undefined; modelName: string | undefined; tokenizerId: string | undefined };
}

// ---------------------------------------------------------------------------------------------
// Sampling

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

// ---------------------------------------------------------------------------------------------
// Service

/**
 * A model the server can train or sample.
 *
 * @example
 * const { supportedModels } = await service.getServerCapabilities();
 * supportedModels.map((m) => m.modelName);
 */
export interface SupportedModel {
  modelName: string | undefined;
  maxContextLength: number | undefined;
  trainable: boolean | undefined;
  sampleable: boolean | undefined;
}

/**
 * The result of `getServerCapabilities`.
 *
 * @example
 * (await service.getServerCapabilities()).supportedModels[0]?.maxContextLength;
 */
export interface GetServerCapabilitiesResponse {
  supportedModels: SupportedModel[];
}

/**
 * What a `tinker://` checkpoint holds (`weights_info`).
 *
 * @example
 * const info = await rest.getWeightsInfoByTinkerPath(path);
 * info.loraRank;
 */
export interface WeightsInfoResponse {
  baseModel: string;
  isLora: boolean;
  loraRank: number | undefined;
  trainUnembed: boolean | undefined;
  trainMlp: boolean | undefined;
  trainAttn: boolean | undefined;
  /** The optimizer of the run it was saved from (`{ type: 'adamw' }` when the server names none). */
  optimizerConfig: OptimizerConfig;
}

/**
 * The result of `saveWeightsExternal`: the external checkpoint's path and size.
 *
 * @example
 * const { path, sizeBytes } = await training.saveWeightsExternal('hf');
 */
export interface SaveWeightsExternalResponse {
  /** `tinker://{run}/external_weights/{name}`. */
  path: string;
  sizeBytes: number | undefined;
}

/**
 * Signed, expiring download links of an external checkpoint's files (a Hugging Face PEFT adapter).
 *
 * @example
 * const { urls } = await rest.getExternalWeightsUrls(path);
 * await fetch(urls['adapter_model.safetensors']!);
 */
export interface ExternalWeightsUrlsResponse {
  /** File path within the checkpoint folder → URL. */
  urls: Record<string, string>;
  /** ISO-8601. */
  expires: string;
}

/**
 * What this key's checkpoints hold now (`billing/usage/checkpoints/current`).
 *
 * @example
 * const { checkpointCount, sizeBytes } = await rest.getCurrentCheckpointStorageUsage();
 */
export interface CheckpointStorageUsage {
  checkpointCount: number;
  sizeBytes: number;
}

// ---------------------------------------------------------------------------------------------
// REST

/**
 * A saved checkpoint. `checkpointId` is `weights/<name>`, `sampler_weights/<name>` or `external_weights/<name>`.
 *
 * @example
 * const { checkpoints } = await rest.listCheckpoints(training.modelId);
 * checkpoints.map((c) => c.tinkerPath);
 */
export interface Checkpoint {
  checkpointId: string;
  /** `external`: a Hugging Face PEFT adapter from `saveWeightsExternal`. */
  checkpointType: 'training' | 'sampler' | 'external';
  /** ISO-8601 creation time. */
  time: string;
  tinkerPath: string;
  sizeBytes: number | undefined;
  public: boolean;
  /** ISO-8601 expiry, when a TTL is set. */
  expiresAt: string | undefined;
  /** What was attached at save time. */
  userMetadata: Record<string, string> | undefined;
}

/**
 * A training run (one LoRA adapter being trained).
 *
 * @example
 * const run = await rest.getTrainingRun(training.modelId);
 * run.baseModel; run.lastCheckpoint?.tinkerPath;
 */
export interface TrainingRun {
  trainingRunId: string;
  baseModel: string;
  modelOwner: string;
  isLora: boolean;
  corrupted: boolean;
  loraRank: number | undefined;
  /** ISO-8601. */
  lastRequestTime: string;
  lastCheckpoint: Checkpoint | undefined;
  lastSamplerCheckpoint: Checkpoint | undefined;
  userMetadata: Record<string, string> | undefined;
}

/**
 * Where a page sits in a list.
 *
 * @example
 * const { cursor } = await rest.listTrainingRuns({ limit: 10 });
 * const more = cursor.offset + cursor.limit < cursor.totalCount;
 */
export interface Cursor {
  offset: number;
  limit: number;
  totalCount: number;
}

/**
 * One page of training runs.
 *
 * @example
 * const page = await rest.listTrainingRuns({ limit: 20, offset: 0 });
 */
export interface TrainingRunsResponse {
  trainingRuns: TrainingRun[];
  cursor: Cursor;
}

/**
 * A list of checkpoints (one page for `listUserCheckpoints`; all of a run's for `listCheckpoints`).
 *
 * @example
 * const { checkpoints, cursor } = await rest.listUserCheckpoints({ limit: 50 });
 */
export interface CheckpointsListResponse {
  checkpoints: Checkpoint[];
  cursor: Cursor | undefined;
}

/**
 * A signed, expiring download link for a checkpoint archive (a tar of the PEFT adapter).
 *
 * @example
 * const { url, expires } = await rest.getCheckpointArchiveUrlFromTinkerPath(path);
 */
export interface CheckpointArchiveUrlResponse {
  url: string;
  /** ISO-8601. */
  expires: string;
}

/**
 * What a session holds.
 *
 * @example
 * const { trainingRunIds } = await rest.getSession(sessionId);
 */
export interface GetSessionResponse {
  trainingRunIds: string[];
  samplerIds: string[];
  /** The session's metadata (`ClientOptions.userMetadata`). */
  userMetadata: Record<string, string> | undefined;
}

/**
 * One page of session ids.
 *
 * @example
 * const { sessions } = await rest.listSessions({ limit: 10 });
 */
export interface ListSessionsResponse {
  sessions: string[];
}

/**
 * A sampling session.
 *
 * @example
 * const s = await rest.getSampler(samplerId);
 * s.baseModel; s.modelPath;
 */
export interface GetSamplerResponse {
  samplerId: string;
  baseModel: string;
  modelPath: string | undefined;
}

/**
 * Which runs a listing covers: those of this key, or all this key may read.
 *
 * @example
 * rest.listTrainingRuns({ accessScope: 'accessible' });
 */
export type AccessScope = 'owned' | 'accessible';
