/**
 * @module Future results: stored once in the request log in a compact form (msgpack, tensors as
 * raw bytes), then served as protobuf or JSON depending on what the polling client accepts.
 */
import { decode, encode } from '@msgpack/msgpack';
import { fromWire, wireToNumbers, type WireTensor } from '../worker/tensor.js';
import { encodeForwardBackwardOutput, encodeSampleResponse, inLayout, type CsrIndex, type LaidOutTensor, type TensorData, type TopkRows } from '@lathe/protocol';

/** The sampling outputs as the worker replies them (worker/README.md "Sampling extras"). */
export interface StoredSample {
  kind: 'sample';
  sequences: {
    tokens: WireTensor;
    logprobs: WireTensor;
    stop_reason: 'stop' | 'length';
    /** int64 / float32 [N, k] for the N sampled tokens. */
    topk_logprobs?: { token_ids: WireTensor; logprobs: WireTensor };
  }[];
  prompt_logprobs?: (number | null)[];
  topk_prompt_logprobs?: TopkRows;
  /** float32 [P - 1, K], NaN where nothing was asked. */
  target_prompt_logprobs?: WireTensor;
  /** The CSR index of the request's `target_prompt_logprobs`: the answer uses the same layout. */
  target_csr?: CsrIndex;
  prompt_alt_tokens?: { tokens: WireTensor; logprobs: WireTensor };
}

/** A stored result: training outputs, sampling outputs, or any JSON value. */
export type StoredResult =
  | { kind: 'fwdbwd'; loss_fn_outputs: Record<string, WireTensor>[]; metrics: Record<string, number> }
  | StoredSample
  | { kind: 'json'; value: unknown };

/**
 * The stored form of a worker's `sample` reply; `targetCsr` is the request's CSR index of
 * `target_prompt_logprobs`, if it came sparse.
 *
 * @example
 * const stored = sampleResult(reply, undefined);
 * stored.sequences[0]?.stop_reason; // 'length'
 */
export function sampleResult(reply: Record<string, unknown>, targetCsr: CsrIndex | undefined): StoredSample {
  const pick = <K extends keyof StoredSample>(key: K): Partial<StoredSample> => (reply[key] ? { [key]: reply[key] as StoredSample[K] } : {});
  return {
    kind: 'sample',
    sequences: reply['sequences'] as StoredSample['sequences'],
    ...pick('prompt_logprobs'),
    ...pick('topk_prompt_logprobs'),
    ...pick('target_prompt_logprobs'),
    ...(reply['target_prompt_logprobs'] && targetCsr ? { target_csr: targetCsr } : {}),
    ...pick('prompt_alt_tokens'),
  };
}

export function packResult(result: StoredResult): Uint8Array {
  return encode(result);
}

export function unpackResult(bytes: Uint8Array): StoredResult {
  return decode(bytes) as StoredResult;
}

function toTensorData(tensor: WireTensor): TensorData {
  const values = fromWire(tensor);
  if (values instanceof BigInt64Array) return { dtype: 'int64', shape: tensor.shape, data: values };
  return { dtype: 'float32', shape: tensor.shape, data: values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>) };
}

/** Tinker's JSON `TensorData` (NaN, which JSON cannot carry, as null), keeping a CSR layout. */
function tensorJson(t: LaidOutTensor): Record<string, unknown> {
  return {
    data: Array.from(t.data as ArrayLike<number | bigint>, (v) => (typeof v === 'bigint' ? Number(v) : Number.isNaN(v) ? null : v)),
    dtype: t.dtype,
    shape: t.shape,
    ...(t.csr ? { sparse_crow_indices: t.csr.crow, sparse_col_indices: t.csr.col } : {}),
  };
}

/** int64 ids and float32 logprobs [N, k] as rows of `[id, logprob]` pairs. */
function topkRows(ids: WireTensor, logprobs: WireTensor): TopkRows {
  const [n, k] = [ids.shape[0] ?? 0, ids.shape[1] ?? 0];
  const [i64, f32] = [wireToNumbers(ids), wireToNumbers(logprobs)];
  return Array.from({ length: n }, (_, i) => Array.from({ length: k }, (_, j): [number, number] => [i64[i * k + j]!, f32[i * k + j]!]));
}

/** A rendered HTTP body with its content type. */
export interface RenderedResult {
  contentType: 'application/json' | 'application/x-protobuf';
  body: Uint8Array | unknown;
}

/**
 * Renders a stored result for a client. Protobuf only for training and sampling outputs, and only
 * when the client's `Accept` header asks for it (Tinker SDK >= 0.25 always does).
 */
export function renderResult(result: StoredResult, accept: string | undefined): RenderedResult {
  const wantsProto = (accept ?? '').includes('application/x-protobuf');
  if (result.kind === 'fwdbwd') {
    const outputs = result.loss_fn_outputs.map((fields) => Object.fromEntries(Object.entries(fields).map(([k, t]) => [k, toTensorData(t)])));
    if (wantsProto) {
      return { contentType: 'application/x-protobuf', body: encodeForwardBackwardOutput({ lossFnOutputs: outputs, metrics: result.metrics }) };
    }
    return {
      contentType: 'application/json',
      body: {
        loss_fn_output_type: 'ArrayRecord',
        loss_fn_outputs: result.loss_fn_outputs.map((fields) => Object.fromEntries(Object.entries(fields).map(([k, t]) => [k, tensorJson(toTensorData(t))]))),
        metrics: result.metrics,
      },
    };
  }
  if (result.kind === 'sample') {
    const sequences = result.sequences.map((s) => ({
      stop_reason: s.stop_reason,
      tokens: wireToNumbers(s.tokens),
      logprobs: wireToNumbers(s.logprobs),
      ...(s.topk_logprobs ? { topk_logprobs: topkRows(s.topk_logprobs.token_ids, s.topk_logprobs.logprobs) } : {}),
    }));
    const target = result.target_prompt_logprobs ? inLayout(toTensorData(result.target_prompt_logprobs), result.target_csr) : undefined;
    const alt = result.prompt_alt_tokens ? { tokens: toTensorData(result.prompt_alt_tokens.tokens), logprobs: toTensorData(result.prompt_alt_tokens.logprobs) } : undefined;
    if (wantsProto) {
      return {
        contentType: 'application/x-protobuf',
        body: encodeSampleResponse({
          sequences: sequences.map((s) => ({ stopReason: s.stop_reason, tokens: s.tokens, logprobs: s.logprobs, ...(s.topk_logprobs ? { topkLogprobs: s.topk_logprobs } : {}) })),
          promptLogprobs: result.prompt_logprobs ?? null,
          topkPromptLogprobs: result.topk_prompt_logprobs ?? null,
          promptCacheHitTokens: 0,
          ...(target ? { targetPromptLogprobs: target } : {}),
          ...(alt ? { promptAltTokens: alt } : {}),
        }),
      };
    }
    return {
      contentType: 'application/json',
      body: {
        type: 'sample',
        sequences,
        prompt_logprobs: result.prompt_logprobs ?? null,
        topk_prompt_logprobs: result.topk_prompt_logprobs ?? null,
        prompt_cache_hit_tokens: 0,
        ...(target ? { target_prompt_logprobs: tensorJson(target) } : {}),
        ...(alt ? { prompt_alt_tokens: { tokens: tensorJson(alt.tokens), logprobs: tensorJson(alt.logprobs) } } : {}),
      },
    };
  }
  return { contentType: 'application/json', body: result.value };
}
