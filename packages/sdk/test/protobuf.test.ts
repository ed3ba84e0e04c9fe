// The SDK's hand-written protobuf codec against the server's protobufjs codec (an independent
// implementation of the same schema): what one writes, the other must read, field for field.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import protobuf from 'protobufjs';
// The server's codec is not part of @lathe/server's public exports, so it is imported by path.
import {
  decodeForwardBackwardRequest,
  encodeForwardBackwardOutput,
  encodeSampleResponse,
  TINKER_PUBLIC_PROTO,
  type TensorData as ServerTensor,
} from '../../server/src/protocol/proto.js';
import { InvalidArgumentError } from '../src/index.js';
import { decodeForwardBackwardOutput, decodeSampleResponse, encodeForwardBackwardRequest, ProtobufDecodeError } from '../src/internal/protobuf.js';

const root = protobuf.parse(TINKER_PUBLIC_PROTO, { keepCase: true }).root;
const raw = (name: string, value: Record<string, unknown>): Uint8Array => root.lookupType(`tinker_public.${name}`).encode(value).finish();
const bytes = (a: Int32Array | Float32Array | BigInt64Array | Uint16Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const f32 = (shape: number[], ...v: number[]): ServerTensor => ({ dtype: 'float32', shape, data: Float32Array.from(v) });
const i64 = (shape: number[], ...v: number[]): ServerTensor => ({ dtype: 'int64', shape, data: BigInt64Array.from(v, BigInt) });

describe('ForwardBackwardRequest: SDK encoder → server decoder', () => {
  test('every field, several datums, 1-D and 2-D tensors', () => {
    const body = encodeForwardBackwardRequest({
      modelId: 'S:train:0',
      seqId: 300, // a two-byte varint
      lossFn: 'ppo',
      lossFnConfig: { clip_low_threshold: 0.8, clip_high_threshold: 1.25 },
      forwardOnly: true,
      data: [
        {
          chunks: [{ kind: 'encoded_text', tokens: [1, 2, 151935] }],
          lossFnInputs: {
            target_tokens: { dtype: 'int64', shape: [3], data: BigInt64Array.of(2n, 151935n, 9n) },
            advantages: { dtype: 'float32', shape: [3], data: Float32Array.of(0.5, -1, 2) },
          },
        },
        {
          chunks: [
            { kind: 'encoded_text', tokens: [7] },
            { kind: 'encoded_text', tokens: [8, 9] },
          ],
          lossFnInputs: {
            target_tokens: { dtype: 'int64', shape: [3, 2], data: BigInt64Array.of(1n, 2n, 3n, 4n, 5n, 6n) },
            weights: { dtype: 'float32', shape: [3, 2], data: Float32Array.of(1, 0, 0.25, 0.75, 1, 1) },
          },
        },
      ],
    });
    const msg = decodeForwardBackwardRequest(body);
    assert.equal(msg.modelId, 'S:train:0');
    assert.equal(msg.seqId, 300);
    assert.equal(msg.lossFn, 'ppo');
    assert.equal(msg.forwardOnly, true);
    assert.deepEqual(msg.lossFnConfig, { clip_low_threshold: 0.8, clip_high_threshold: 1.25 });
    assert.equal(msg.data.length, 2);
    assert.deepEqual(msg.data[0]!.modelInput, [1, 2, 151935]);
    assert.deepEqual(msg.data[0]!.lossFnInputs['target_tokens'], i64([3], 2, 151935, 9));
    assert.deepEqual(msg.data[0]!.lossFnInputs['advantages'], f32([3], 0.5, -1, 2));
    assert.deepEqual(msg.data[1]!.modelInput, [7, 8, 9]);
    assert.deepEqual(msg.data[1]!.lossFnInputs['target_tokens'], i64([3, 2], 1, 2, 3, 4, 5, 6));
    assert.deepEqual(msg.data[1]!.lossFnInputs['weights'], f32([3, 2], 1, 0, 0.25, 0.75, 1, 1));
  });

  test('defaults: no config, forward_only false, the legacy map and v2 both carry the config', () => {
    const plain = decodeForwardBackwardRequest(
      encodeForwardBackwardRequest({ modelId: 'm', seqId: 1, lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: false, data: [] }),
    );
    assert.deepEqual(plain.lossFnConfig, {});
    assert.equal(plain.forwardOnly, false);
    // Read the raw message to see both maps.
    const body = encodeForwardBackwardRequest({ modelId: 'm', seqId: 1, lossFn: 'dro', lossFnConfig: { beta: 0.05 }, forwardOnly: false, data: [] });
    const decoded = root.lookupType('tinker_public.ForwardBackwardRequest').toObject(root.lookupType('tinker_public.ForwardBackwardRequest').decode(body), { oneofs: true });
    assert.deepEqual(decoded['loss_fn_config'], { beta: 0.05 });
    assert.deepEqual(decoded['loss_fn_config_v2'], { beta: { number: 0.05, value: 'number' } });
  });

  test('empty tensors and empty token lists survive; large token ids and float specials are exact', () => {
    const msg = decodeForwardBackwardRequest(
      encodeForwardBackwardRequest({
        modelId: 'm',
        seqId: 2 ** 31 - 1,
        lossFn: 'cross_entropy',
        lossFnConfig: {},
        forwardOnly: false,
        data: [
          {
            chunks: [{ kind: 'encoded_text', tokens: [2 ** 31 - 1, 0] }],
            lossFnInputs: {
              weights: { dtype: 'float32', shape: [0], data: new Float32Array(0) },
              logprobs: { dtype: 'float32', shape: [2], data: Float32Array.of(-Infinity, 3.4e38) },
            },
          },
        ],
      }),
    );
    assert.equal(msg.seqId, 2 ** 31 - 1);
    assert.deepEqual(msg.data[0]!.modelInput, [2 ** 31 - 1, 0]);
    assert.deepEqual(msg.data[0]!.lossFnInputs['weights'], f32([0]));
    assert.deepEqual(Array.from(msg.data[0]!.lossFnInputs['logprobs']!.data as Float32Array), [-Infinity, Float32Array.of(3.4e38)[0]]);
  });

  test('matches protobufjs byte for byte on a typical SFT request', () => {
    const tokens = [9707, 1879, 11];
    const sdk = encodeForwardBackwardRequest({
      modelId: 'S:train:0',
      seqId: 5,
      lossFn: 'cross_entropy',
      lossFnConfig: {},
      forwardOnly: false,
      data: [{ chunks: [{ kind: 'encoded_text', tokens }], lossFnInputs: { target_tokens: { dtype: 'int64', shape: [3], data: BigInt64Array.of(1n, 2n, 3n) } } }],
    });
    const reference = raw('ForwardBackwardRequest', {
      model_id: 'S:train:0',
      seq_id: 5,
      data: [{ model_input: [{ encoded_text: { tokens: bytes(Int32Array.from(tokens)) } }], loss_fn_inputs: { target_tokens: { dense: bytes(BigInt64Array.of(1n, 2n, 3n)), dtype: 2, shape: [3] } } }],
      loss_fn: 'cross_entropy',
    });
    assert.deepEqual(sdk, new Uint8Array(reference));
  });

  test('refuses token ids that are not int32', () => {
    assert.throws(
      () => encodeForwardBackwardRequest({ modelId: 'm', seqId: 1, lossFn: 'x', lossFnConfig: {}, forwardOnly: false, data: [{ chunks: [{ kind: 'encoded_text', tokens: [2 ** 31] }], lossFnInputs: {} }] }),
      InvalidArgumentError,
    );
  });
});

describe('ForwardBackwardOutput: server encoder → SDK decoder', () => {
  test('per-datum logprobs with shapes, metrics as doubles', () => {
    const out = decodeForwardBackwardOutput(
      encodeForwardBackwardOutput({
        lossFnOutputs: [{ logprobs: f32([3], -1, -2, -3) }, { logprobs: f32([1], -0.5) }],
        metrics: { 'loss:sum': 6.5, 'tokens:sum': 4 },
      }),
    );
    assert.equal(out.lossFnOutputType, 'ArrayRecord');
    assert.deepEqual(out.metrics, { 'loss:sum': 6.5, 'tokens:sum': 4 });
    assert.equal(out.lossFnOutputs.length, 2);
    assert.deepEqual(out.lossFnOutputs[0]!['logprobs'], f32([3], -1, -2, -3));
    assert.deepEqual(out.lossFnOutputs[1]!['logprobs'], f32([1], -0.5));
  });

  test('ragged trailing shapes split into records, concatenated back in order; int64 fields', () => {
    const out = decodeForwardBackwardOutput(
      encodeForwardBackwardOutput({
        lossFnOutputs: [
          { logprobs: f32([2, 2], 1, 2, 3, 4), ids: i64([2], 5, 6) },
          { logprobs: f32([1, 3], 7, 8, 9), ids: i64([1], 7) },
          { logprobs: f32([1, 3], 10, 11, 12), ids: i64([1], 8) },
        ],
        metrics: {},
      }),
    );
    assert.deepEqual(
      out.lossFnOutputs.map((d) => d['logprobs']),
      [f32([2, 2], 1, 2, 3, 4), f32([1, 3], 7, 8, 9), f32([1, 3], 10, 11, 12)],
    );
    assert.deepEqual(
      out.lossFnOutputs.map((d) => d['ids']),
      [i64([2], 5, 6), i64([1], 7), i64([1], 8)],
    );
  });

  test('INT32 widens to int64 and BFLOAT16 to float32, as the Python SDK does', () => {
    const body = raw('ForwardBackwardOutput', {
      loss_fn_output_type: 'tinker:ArrayRecord',
      loss_fn_outputs: [
        {
          type_tag: 'ArrayRecord',
          num_datums: 1,
          fields: {
            a: { data: bytes(Int32Array.of(-3, 4)), offsets: bytes(BigInt64Array.of(0n, 8n)), dtype: 3 },
            b: { data: bytes(Uint16Array.of(0x3f80, 0xc000)), offsets: bytes(BigInt64Array.of(0n, 4n)), dtype: 4 },
          },
        },
      ],
    });
    const out = decodeForwardBackwardOutput(body);
    assert.equal(out.lossFnOutputType, 'ArrayRecord');
    assert.deepEqual(out.lossFnOutputs[0]!['a'], i64([2], -3, 4));
    assert.deepEqual(out.lossFnOutputs[0]!['b'], f32([2], 1, -2));
  });

  test('unknown fields (any wire type) are skipped; unpacked trailing_shape is read', () => {
    const inner = new protobuf.Writer();
    inner.uint32((1 << 3) | 2).bytes(bytes(Float32Array.of(1, 2, 3, 4)));
    inner.uint32((2 << 3) | 2).bytes(bytes(BigInt64Array.of(0n, 16n)));
    inner.uint32((3 << 3) | 0).uint32(1);
    inner.uint32((4 << 3) | 0).int64(2); // unpacked repeated int64
    inner.uint32((9 << 3) | 5).fixed32(7); // unknown fixed32
    const field = inner.finish();
    const entry = new protobuf.Writer().uint32((1 << 3) | 2).string('x').uint32((2 << 3) | 2).bytes(field).finish();
    const record = new protobuf.Writer().uint32((2 << 3) | 2).bytes(entry).uint32((3 << 3) | 0).int64(1).uint32((15 << 3) | 1).fixed64(9).finish();
    const body = new protobuf.Writer().uint32((2 << 3) | 2).bytes(record).uint32((20 << 3) | 0).int64(-5).finish();
    const out = decodeForwardBackwardOutput(body);
    assert.deepEqual(out.lossFnOutputs[0]!['x'], f32([2, 2], 1, 2, 3, 4));
  });

  test('malformed bodies raise ProtobufDecodeError', () => {
    assert.throws(() => decodeForwardBackwardOutput(Uint8Array.of(0x12, 0x05, 0x01)), ProtobufDecodeError);
    const badOffsets = raw('ForwardBackwardOutput', {
      loss_fn_outputs: [{ num_datums: 2, fields: { x: { data: bytes(Float32Array.of(1)), offsets: bytes(BigInt64Array.of(0n, 4n)), dtype: 1 } } }],
    });
    assert.throws(() => decodeForwardBackwardOutput(badOffsets), /2 datums/);
  });
});

describe('SampleResponse: server encoder → SDK decoder', () => {
  test('sequences, stop reasons, logprobs, NaN prompt logprobs, top-k with padding', () => {
    const out = decodeSampleResponse(
      encodeSampleResponse({
        sequences: [
          { stopReason: 'stop', tokens: [5, 151645], logprobs: [-0.25, -0.5] },
          { stopReason: 'length', tokens: [1, 2, 3], logprobs: [-1, -2, -3] },
        ],
        promptLogprobs: [null, -1.5, -2.5],
        topkPromptLogprobs: [null, [[7, -0.5], [8, -1]], [[9, -0.25]]],
        promptCacheHitTokens: 3,
      }),
    );
    assert.deepEqual(out.sequences, [
      { stopReason: 'stop', tokens: [5, 151645], logprobs: [-0.25, -0.5] },
      { stopReason: 'length', tokens: [1, 2, 3], logprobs: [-1, -2, -3] },
    ]);
    assert.deepEqual(out.promptLogprobs, [null, -1.5, -2.5]);
    assert.deepEqual(out.topkPromptLogprobs, [null, [[7, -0.5], [8, -1]], [[9, -0.25]]]);
    assert.equal(out.promptCacheHitTokens, 3);
  });

  test('absent optional parts are null; empty logprobs are null', () => {
    const out = decodeSampleResponse(
      encodeSampleResponse({ sequences: [{ stopReason: 'stop', tokens: [], logprobs: null }], promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0 }),
    );
    assert.deepEqual(out, { sequences: [{ stopReason: 'stop', tokens: [], logprobs: null }], promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0 });
    // Present but empty prompt logprobs ([] requested for an empty prompt) stay an empty list.
    const empty = decodeSampleResponse(raw('SampleResponse', { prompt_logprobs: new Uint8Array(0) }));
    assert.deepEqual(empty.promptLogprobs, []);
  });

  test('SDK 0.32 fields: sampled top-k, target prompt logprobs (dense, and CSR densified with NaN), alternative prompt tokens', () => {
    const base = { promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0 };
    const out = decodeSampleResponse(
      encodeSampleResponse({
        ...base,
        sequences: [{ stopReason: 'length', tokens: [4, 5], logprobs: [-0.5, -1], topkLogprobs: [[[4, -0.5], [9, -2]], [[5, -1], [3, -1.5]]] }],
        targetPromptLogprobs: f32([2, 2], NaN, -1.25, -2.5, NaN),
        promptAltTokens: { tokens: { dtype: 'int64', shape: [2, 1], data: BigInt64Array.of(11n, 12n) }, logprobs: f32([2, 1], -0.75, -3) },
      }),
    );
    assert.deepEqual(out.sequences[0]?.topkLogprobs, [[[4, -0.5], [9, -2]], [[5, -1], [3, -1.5]]]);
    assert.deepEqual(out.targetPromptLogprobs?.shape, [2, 2]);
    assert.deepEqual(Array.from(out.targetPromptLogprobs!.data as Float32Array), [NaN, -1.25, -2.5, NaN]);
    assert.deepEqual(out.promptAltTokens?.tokens, { dtype: 'int64', shape: [2, 1], data: BigInt64Array.of(11n, 12n) });
    assert.deepEqual(Array.from(out.promptAltTokens!.logprobs.data as Float32Array), [-0.75, -3]);
    const sparse = decodeSampleResponse(
      encodeSampleResponse({ ...base, sequences: [], targetPromptLogprobs: { ...f32([2, 3], -0.5, -4), csr: { crow: [0, 1, 2], col: [2, 0] } } }),
    );
    assert.deepEqual(Array.from(sparse.targetPromptLogprobs!.data as Float32Array), [NaN, NaN, -0.5, -4, NaN, NaN]);
    const badCsr = raw('SampleResponse', { target_prompt_logprobs: { sparse_csr: { values: bytes(Float32Array.of(1)), crow_indices: bytes(BigInt64Array.of(0n, 1n)), col_indices: bytes(BigInt64Array.of(5n)) }, dtype: 1, shape: [1, 2] } });
    assert.throws(() => decodeSampleResponse(badCsr), /target_prompt_logprobs: sparse cell 0 is outside the shape/);
  });

  test('an unknown stop reason is an error', () => {
    assert.throws(() => decodeSampleResponse(raw('SampleResponse', { sequences: [{ stop_reason: 7 }] })), /stop_reason 7/);
  });
});
