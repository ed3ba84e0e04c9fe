/**
 * @module Conversions between the public camelCase types and the snake_case wire (JSON bodies,
 * protobuf messages). Every response mapper tolerates missing optional fields and ignores extra ones.
 */
import { APIResponseValidationError, InvalidArgumentError } from '../core/errors.js';
import { denseWithFill, int32Tokens, parseTinkerPath as parseTinker, TinkerPathError, type ChunkIn, type DatumIn, type DecodedForwardBackwardOutput, type SampleResponseMsg, type TensorData as WireTensor, type TensorIn } from '@lathe/protocol';
import { plainInputDtype, TensorData, toTensorData } from '../core/tensor.js';
import type {
  AdamParams,
  Checkpoint,
  DimuonParams,
  CheckpointsListResponse,
  Cursor,
  Datum,
  ForwardBackwardOutput,
  GetInfoResponse,
  GetServerCapabilitiesResponse,
  ModelInput,
  OptimizerConfig,
  SampleResponse,
  SamplingParams,
  TrainingRun,
  WeightsInfoResponse,
} from '../core/types.js';

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// Requests

/** The protobuf form of a datum: int32 token chunks, loss inputs as dense tensors with their shapes. */
export function datumToProto(datum: Datum, index: number): DatumIn & { chunks: ChunkIn[] } {
  const chunks = datum.modelInput.chunks.map((c, j): ChunkIn => {
    if (c.type !== 'encoded_text') return { kind: 'image', data: c.data, format: c.format, expectedTokens: c.expectedTokens };
    try {
      return { kind: 'encoded_text', tokens: int32Tokens(c.tokens, `data[${index}].modelInput.chunks[${j}].tokens`) };
    } catch (error) {
      throw new InvalidArgumentError((error as Error).message, { cause: error });
    }
  });
  const lossFnInputs: Record<string, TensorIn> = {};
  for (const [key, value] of Object.entries(datum.lossFnInputs)) {
    let tensor: TensorData;
    try {
      tensor = toTensorData(key, value);
    } catch (error) {
      throw new InvalidArgumentError(`data[${index}].lossFnInputs['${key}']: ${(error as Error).message}`, { cause: error });
    }
    lossFnInputs[key] = { dtype: tensor.dtype, shape: tensor.shape, data: tensor.data };
  }
  return { chunks, lossFnInputs };
}

/** Estimated bytes of a datum on the protobuf wire (4 per token plus tensor bytes), as the Python SDK counts. */
export function estimateDatumBytes(datum: Datum): number {
  let bytes = 0;
  for (const c of datum.modelInput.chunks) bytes += c.type === 'encoded_text' ? c.tokens.length * 4 : c.data.length;
  for (const [key, value] of Object.entries(datum.lossFnInputs)) {
    if (value instanceof TensorData) bytes += value.data.byteLength;
    else bytes += value.length * (plainInputDtype(key, value) === 'int64' ? 8 : 4);
  }
  return bytes;
}

function base64(bytes: Uint8Array): string {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

/** The JSON form of a model input. */
export function modelInputToJson(input: ModelInput): Json {
  return {
    chunks: input.chunks.map((c) =>
      c.type === 'encoded_text'
        ? { tokens: [...c.tokens], type: 'encoded_text' }
        : { data: base64(c.data), format: c.format, ...(c.expectedTokens !== undefined ? { expected_tokens: c.expectedTokens } : {}), type: 'image' },
    ),
  };
}

/** Sampling params as the Python SDK sends them: unset optional fields omitted, defaults always sent. */
export function samplingParamsToJson(p: SamplingParams | undefined): Json {
  const params = p ?? {};
  const out: Json = {};
  if (params.maxTokens !== undefined) out['max_tokens'] = params.maxTokens;
  if (params.seed !== undefined) out['seed'] = params.seed;
  if (params.stop !== undefined) out['stop'] = typeof params.stop === 'string' ? params.stop : [...params.stop];
  out['temperature'] = params.temperature ?? 1;
  out['top_k'] = params.topK ?? -1;
  out['top_p'] = params.topP ?? 1;
  return out;
}

/** All six Adam fields, with the Python SDK's defaults. */
/** `optimizer_params` of a Dimuon step; unset settings are left out (the server's defaults apply). */
export function dimuonParamsToJson(p: DimuonParams): Json {
  const out: Json = { type: 'dimuon', learning_rate: p.learningRate };
  if (p.gradClipNorm !== undefined) out['grad_clip_norm'] = p.gradClipNorm;
  if (p.beta1 !== undefined) out['beta1'] = p.beta1;
  if (p.damping !== undefined) out['damping'] = p.damping;
  if (p.rankLrCorrectionExponent !== undefined) out['rank_lr_correction_exponent'] = p.rankLrCorrectionExponent;
  return out;
}

/** A wire `OptimizerConfig` (absent: AdamW, as for servers older than SDK 0.29). */
export function optimizerConfigFromJson(value: unknown): OptimizerConfig {
  const c = typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {};
  return c['type'] === 'dimuon' ? { type: 'dimuon', version: 1 } : { type: 'adamw' };
}

export function adamParamsToJson(p: AdamParams): Json {
  return {
    learning_rate: p.learningRate ?? 1e-4,
    beta1: p.beta1 ?? 0.9,
    beta2: p.beta2 ?? 0.95,
    eps: p.eps ?? 1e-12,
    weight_decay: p.weightDecay ?? 0,
    grad_clip_norm: p.gradClipNorm ?? 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Responses

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' ? v : undefined);
const bool = (v: unknown): boolean | undefined => (typeof v === 'boolean' ? v : undefined);
const obj = (v: unknown): Json => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {});

/** A required string field, or an {@link APIResponseValidationError} naming it. */
export function requireString(body: unknown, key: string, what: string): string {
  const value = obj(body)[key];
  if (typeof value !== 'string') throw new APIResponseValidationError(`${what}: expected a string "${key}" in ${JSON.stringify(body)?.slice(0, 200)}`);
  return value;
}

/** A decoded protobuf output as the public type. */
export function forwardBackwardOutputFromProto(pb: DecodedForwardBackwardOutput): ForwardBackwardOutput {
  return {
    lossFnOutputType: pb.lossFnOutputType,
    lossFnOutputs: pb.lossFnOutputs.map((rec) => Object.fromEntries(Object.entries(rec).map(([k, t]) => [k, new TensorData(t.dtype, t.data as never, t.shape)]))),
    metrics: pb.metrics,
  };
}

function tensorFromJson(value: unknown): TensorData {
  const t = obj(value);
  const data = Array.isArray(t['data']) ? (t['data'] as number[]) : [];
  const dtype = t['dtype'] === 'int64' ? 'int64' : 'float32';
  const shape = Array.isArray(t['shape']) ? (t['shape'] as number[]) : undefined;
  return TensorData.from(data, dtype, shape);
}

/** The JSON form of a forward/backward result (older servers), as the public type. */
export function forwardBackwardOutputFromJson(body: unknown): ForwardBackwardOutput {
  const b = obj(body);
  const outputs = Array.isArray(b['loss_fn_outputs']) ? (b['loss_fn_outputs'] as unknown[]) : [];
  return {
    lossFnOutputType: str(b['loss_fn_output_type']) ?? 'ArrayRecord',
    lossFnOutputs: outputs.map((rec) => Object.fromEntries(Object.entries(obj(rec)).map(([k, t]) => [k, tensorFromJson(t)]))),
    metrics: { ...(obj(b['metrics']) as Record<string, number>) },
  };
}

/** A decoded protobuf sample result as the public type; a CSR `targetPromptLogprobs` is densified with NaN ("not requested"). */
export function sampleResponseFromProto(pb: SampleResponseMsg): SampleResponse {
  const floats = (t: WireTensor, what: string): TensorData<'float32'> => {
    if (t.dtype !== 'float32') throw new APIResponseValidationError(`sample result: ${what} is ${t.dtype}, expected float32`);
    return TensorData.float32(t.data, t.shape);
  };
  return {
    sequences: pb.sequences.map((s) => ({ stopReason: s.stopReason, tokens: s.tokens, logprobs: s.logprobs, ...(s.topkLogprobs ? { topkLogprobs: s.topkLogprobs } : {}) })),
    promptLogprobs: pb.promptLogprobs,
    topkPromptLogprobs: pb.topkPromptLogprobs,
    promptCacheHitTokens: pb.promptCacheHitTokens,
    ...(pb.targetPromptLogprobs ? { targetPromptLogprobs: floats(denseWithFill(pb.targetPromptLogprobs, NaN, 'target_prompt_logprobs'), 'target_prompt_logprobs') } : {}),
    ...(pb.promptAltTokens
      ? { promptAltTokens: { tokens: TensorData.int64(pb.promptAltTokens.tokens.data, pb.promptAltTokens.tokens.shape), logprobs: floats(pb.promptAltTokens.logprobs, 'prompt_alt_tokens.logprobs') } }
      : {}),
  };
}

/** A dense JSON `TensorData` of a sample result (null, JSON's stand-in for NaN, read back as NaN). */
function resultTensorFromJson<D extends 'int64' | 'float32'>(value: unknown, dtype: D, what: string): TensorData<D> {
  const t = obj(value);
  if (!Array.isArray(t['data']) || !Array.isArray(t['shape'])) throw new APIResponseValidationError(`sample result: ${what} is not a TensorData`);
  if (t['sparse_crow_indices'] != null) throw new APIResponseValidationError(`sample result: ${what} is sparse; this SDK sends and expects dense tensors`);
  const values = (t['data'] as (number | null)[]).map((v) => v ?? NaN);
  return TensorData.from(values, dtype, t['shape'] as number[]);
}

/** The JSON form of a sample result (older servers), as the public type. */
export function sampleResponseFromJson(body: unknown): SampleResponse {
  const b = obj(body);
  const sequences = Array.isArray(b['sequences']) ? (b['sequences'] as unknown[]) : [];
  const alt = b['prompt_alt_tokens'] == null ? undefined : obj(b['prompt_alt_tokens']);
  return {
    sequences: sequences.map((s) => {
      const seq = obj(s);
      return {
        stopReason: seq['stop_reason'] === 'length' ? 'length' : 'stop',
        tokens: Array.isArray(seq['tokens']) ? (seq['tokens'] as number[]) : [],
        logprobs: Array.isArray(seq['logprobs']) ? (seq['logprobs'] as number[]) : null,
        ...(Array.isArray(seq['topk_logprobs']) ? { topkLogprobs: seq['topk_logprobs'] as ([number, number][] | null)[] } : {}),
      };
    }),
    promptLogprobs: Array.isArray(b['prompt_logprobs']) ? (b['prompt_logprobs'] as (number | null)[]) : null,
    topkPromptLogprobs: Array.isArray(b['topk_prompt_logprobs']) ? (b['topk_prompt_logprobs'] as ([number, number][] | null)[]) : null,
    promptCacheHitTokens: num(b['prompt_cache_hit_tokens']) ?? 0,
    ...(b['target_prompt_logprobs'] != null ? { targetPromptLogprobs: resultTensorFromJson(b['target_prompt_logprobs'], 'float32', 'target_prompt_logprobs') } : {}),
    ...(alt
      ? { promptAltTokens: { tokens: resultTensorFromJson(alt['tokens'], 'int64', 'prompt_alt_tokens.tokens'), logprobs: resultTensorFromJson(alt['logprobs'], 'float32', 'prompt_alt_tokens.logprobs') } }
      : {}),
  };
}

/**
 * The sampling extras of `SampleArgs` as `asample` body keys (docs/protocol.md §5.1); a
 * `targetPromptLogprobs` tensor must be int64 and 2-D, as the Python SDK checks before sending.
 *
 * @throws {InvalidArgumentError} on a negative count or a tensor of another dtype or rank.
 * @example
 * sampleExtrasToJson({ topkSampleLogprobs: 2 }); // { topk_sample_logprobs: 2, prompt_alt_tokens_k: 0 }
 */
export function sampleExtrasToJson(args: { topkSampleLogprobs?: number | undefined; promptAltTokensK?: number | undefined; targetPromptLogprobs?: TensorData | undefined }): Json {
  const count = (value: number | undefined, name: string): number => {
    const n = value ?? 0;
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a whole number >= 0, got ${n}`);
    return n;
  };
  const body: Json = { topk_sample_logprobs: count(args.topkSampleLogprobs, 'topkSampleLogprobs'), prompt_alt_tokens_k: count(args.promptAltTokensK, 'promptAltTokensK') };
  const t = args.targetPromptLogprobs;
  if (t !== undefined) {
    if (t.dtype !== 'int64' || t.shape.length !== 2) {
      throw new InvalidArgumentError(`targetPromptLogprobs must be an int64 tensor of shape [prompt length - 1, K], got ${t.dtype} [${t.shape.join(', ')}]`);
    }
    body['target_prompt_logprobs'] = { data: Array.from(t.data, Number), dtype: 'int64', shape: [...t.shape] };
  }
  return body;
}

export function getInfoFromJson(body: unknown): GetInfoResponse {
  const b = obj(body);
  const data = obj(b['model_data']);
  return {
    modelId: str(b['model_id']) ?? '',
    modelName: str(b['model_name']),
    isLora: bool(b['is_lora']),
    loraRank: num(b['lora_rank']),
    modelData: { arch: str(data['arch']), modelName: str(data['model_name']), tokenizerId: str(data['tokenizer_id']) },
  };
}

export function capabilitiesFromJson(body: unknown): GetServerCapabilitiesResponse {
  const models = obj(body)['supported_models'];
  return {
    supportedModels: (Array.isArray(models) ? models : []).map((m) => {
      const model = obj(m);
      return {
        modelName: str(model['model_name']),
        maxContextLength: num(model['max_context_length']),
        trainable: bool(model['trainable']),
        sampleable: bool(model['sampleable']),
      };
    }),
  };
}

export function weightsInfoFromJson(body: unknown): WeightsInfoResponse {
  const b = obj(body);
  return {
    baseModel: str(b['base_model']) ?? '',
    isLora: bool(b['is_lora']) ?? true,
    loraRank: num(b['lora_rank']),
    trainUnembed: bool(b['train_unembed']),
    trainMlp: bool(b['train_mlp']),
    trainAttn: bool(b['train_attn']),
    optimizerConfig: optimizerConfigFromJson(b['optimizer_config']),
  };
}

/** String-valued metadata, or undefined when absent. */
export function metadataFromJson(value: unknown): Record<string, string> | undefined {
  return typeof value === 'object' && value !== null ? (value as Record<string, string>) : undefined;
}

export function checkpointFromJson(value: unknown): Checkpoint {
  const c = obj(value);
  return {
    checkpointId: str(c['checkpoint_id']) ?? '',
    checkpointType: c['checkpoint_type'] === 'sampler' || c['checkpoint_type'] === 'external' ? c['checkpoint_type'] : 'training',
    time: str(c['time']) ?? '',
    tinkerPath: str(c['tinker_path']) ?? '',
    sizeBytes: num(c['size_bytes']),
    public: bool(c['public']) ?? false,
    expiresAt: str(c['expires_at']),
    userMetadata: metadataFromJson(c['user_metadata']),
  };
}

export function cursorFromJson(value: unknown): Cursor | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const c = obj(value);
  return { offset: num(c['offset']) ?? 0, limit: num(c['limit']) ?? 0, totalCount: num(c['total_count']) ?? 0 };
}

export function trainingRunFromJson(value: unknown): TrainingRun {
  const r = obj(value);
  return {
    trainingRunId: str(r['training_run_id']) ?? '',
    baseModel: str(r['base_model']) ?? '',
    modelOwner: str(r['model_owner']) ?? '',
    isLora: bool(r['is_lora']) ?? true,
    corrupted: bool(r['corrupted']) ?? false,
    loraRank: num(r['lora_rank']),
    lastRequestTime: str(r['last_request_time']) ?? '',
    lastCheckpoint: r['last_checkpoint'] ? checkpointFromJson(r['last_checkpoint']) : undefined,
    lastSamplerCheckpoint: r['last_sampler_checkpoint'] ? checkpointFromJson(r['last_sampler_checkpoint']) : undefined,
    userMetadata: metadataFromJson(r['user_metadata']),
  };
}

export function checkpointsListFromJson(body: unknown): CheckpointsListResponse {
  const b = obj(body);
  return {
    checkpoints: (Array.isArray(b['checkpoints']) ? (b['checkpoints'] as unknown[]) : []).map(checkpointFromJson),
    cursor: cursorFromJson(b['cursor']),
  };
}

/**
 * Splits `tinker://{model_id}/{weights|sampler_weights|external_weights}/{name}` into run id and checkpoint id.
 *
 * @throws {InvalidArgumentError} when it is not such a path.
 */
export function parseTinkerPath(path: string): { trainingRunId: string; checkpointId: string } {
  try {
    const { modelId, checkpointId } = parseTinker(path);
    return { trainingRunId: modelId, checkpointId };
  } catch (error) {
    if (error instanceof TinkerPathError) throw new InvalidArgumentError(error.message, { cause: error });
    throw error;
  }
}

/** A path segment escaped for a URL; checkpoint ids keep their `/`. */
export function escapeSegment(value: string, keepSlashes = false): string {
  return keepSlashes ? value.split('/').map(encodeURIComponent).join('/') : encodeURIComponent(value);
}
