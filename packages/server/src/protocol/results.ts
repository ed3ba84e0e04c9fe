/**
 * @module Future results: stored once in the request log in a compact form (msgpack, tensors as
 * raw bytes), then served as protobuf or JSON depending on what the polling client accepts.
 */
import { decode, encode } from '@msgpack/msgpack';
import { fromWire, wireToNumbers, type WireTensor } from '../worker/tensor.js';
import { encodeForwardBackwardOutput, encodeSampleResponse, type TensorData } from './proto.js';

/** A stored result: training outputs, sampling outputs, or any JSON value. */
export type StoredResult =
  | { kind: 'fwdbwd'; loss_fn_outputs: Record<string, WireTensor>[]; metrics: Record<string, number> }
  | {
      kind: 'sample';
      sequences: { tokens: WireTensor; logprobs: WireTensor; stop_reason: 'stop' | 'length' }[];
      prompt_logprobs?: (number | null)[];
      topk_prompt_logprobs?: ([number, number][] | null)[];
    }
  | { kind: 'json'; value: unknown };

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
        loss_fn_outputs: result.loss_fn_outputs.map((fields) =>
          Object.fromEntries(Object.entries(fields).map(([k, t]) => [k, { data: wireToNumbers(t), dtype: t.dtype === 'int64' ? 'int64' : 'float32', shape: t.shape }])),
        ),
        metrics: result.metrics,
      },
    };
  }
  if (result.kind === 'sample') {
    const sequences = result.sequences.map((s) => ({ stop_reason: s.stop_reason, tokens: wireToNumbers(s.tokens), logprobs: wireToNumbers(s.logprobs) }));
    if (wantsProto) {
      return {
        contentType: 'application/x-protobuf',
        body: encodeSampleResponse({
          sequences: sequences.map((s) => ({ stopReason: s.stop_reason, tokens: s.tokens, logprobs: s.logprobs })),
          promptLogprobs: result.prompt_logprobs ?? null,
          topkPromptLogprobs: result.topk_prompt_logprobs ?? null,
          promptCacheHitTokens: 0,
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
      },
    };
  }
  return { contentType: 'application/json', body: result.value };
}
