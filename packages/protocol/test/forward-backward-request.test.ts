// ForwardBackwardRequest: our encoder and decoder against each other and against protobufjs
// (worker/tests/test_proto_conformance.py checks both against Google's protobuf).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import protobuf from 'protobufjs';
import { decodeForwardBackwardEnvelope, decodeForwardBackwardRequest, encodeForwardBackwardRequest, ProtoDecodeError, type ForwardBackwardRequestMsg } from '../src/index.js';
import { bytes, f32, i64, raw, rawDecode, shaped } from './raw.js';

const request = (over: Partial<ForwardBackwardRequestMsg> = {}): ForwardBackwardRequestMsg => ({
  modelId: 'S:train:0',
  seqId: 3,
  lossFn: 'cross_entropy',
  lossFnConfig: {},
  forwardOnly: false,
  data: [{ modelInput: [1, 2, 3], lossFnInputs: { target_tokens: i64(2, 3, 4), weights: f32(0, 1, 1) } }],
  ...over,
});

/** A ForwardBackwardRequest with one datum holding the given raw chunks and tensors. */
const rawRequest = (datum: Record<string, unknown>, extra: Record<string, unknown> = {}): Uint8Array =>
  raw('ForwardBackwardRequest', { model_id: 'm', seq_id: 1, loss_fn: 'cross_entropy', data: [datum], ...extra });
const textChunk = (...tokens: number[]) => ({ encoded_text: { tokens: bytes(Int32Array.from(tokens)) } });

test('round-trips, including (N, K) soft targets, config, forward_only and an empty datum', () => {
  const msg = request({
    lossFn: 'ppo',
    lossFnConfig: { clip_low_threshold: 0.8, clip_high_threshold: 1.2 },
    forwardOnly: true,
    seqId: 300, // a two-byte varint
    data: [
      { modelInput: [10, 11], lossFnInputs: { target_tokens: i64(11, 12), logprobs: f32(-1, -2), advantages: f32(0.5, 0.5) } },
      {
        modelInput: [151643, 0, 7],
        lossFnInputs: { target_tokens: shaped(i64(1, 2, 3, 4, 5, 6), [3, 2]), weights: shaped(f32(0.5, 0.5, 1, 0, 0.25, 0.75), [3, 2]) },
      },
      { modelInput: [], lossFnInputs: {} },
    ],
  });
  assert.deepEqual(decodeForwardBackwardRequest(encodeForwardBackwardRequest(msg)), msg);
});

test('chunked datums: text chunks concatenate; empty tensors, int32 extremes and float specials are exact', () => {
  const msg = decodeForwardBackwardRequest(
    encodeForwardBackwardRequest({
      ...request({ seqId: 2 ** 31 - 1 }),
      data: [
        {
          chunks: [{ kind: 'encoded_text', tokens: [7, 2 ** 31 - 1] }, { kind: 'encoded_text', tokens: Int32Array.of(0, 9) }],
          lossFnInputs: { weights: f32(), logprobs: f32(-Infinity, 3.4e38) },
        },
      ],
    }),
  );
  assert.equal(msg.seqId, 2 ** 31 - 1);
  assert.deepEqual(msg.data[0]!.modelInput, [7, 2 ** 31 - 1, 0, 9]);
  assert.deepEqual(msg.data[0]!.lossFnInputs['weights'], f32());
  assert.deepEqual(Array.from(msg.data[0]!.lossFnInputs['logprobs']!.data as Float32Array), [-Infinity, Float32Array.of(3.4e38)[0]]);
});

test('encoded as the Python SDK does: int32 tokens, dense tensors with dtype and shape, both config maps', () => {
  const pb = rawDecode('ForwardBackwardRequest', encodeForwardBackwardRequest(request({ lossFnConfig: { beta: 0.05 } })));
  const datum = pb['data'][0];
  assert.equal(datum.model_input.length, 1);
  assert.deepEqual(Array.from(new Int32Array(new Uint8Array(datum.model_input[0].encoded_text.tokens).buffer)), [1, 2, 3]);
  assert.equal(datum.loss_fn_inputs.target_tokens.dtype, 2);
  assert.deepEqual(datum.loss_fn_inputs.target_tokens.shape, [3]);
  assert.equal(datum.loss_fn_inputs.target_tokens.dense.length, 24);
  assert.equal(datum.loss_fn_inputs.weights.dtype, 1);
  assert.deepEqual(pb['loss_fn_config'], { beta: 0.05 });
  assert.deepEqual([pb['loss_fn_config_v2'].beta.value, pb['loss_fn_config_v2'].beta.number], ['number', 0.05]);
  const plain = rawDecode('ForwardBackwardRequest', encodeForwardBackwardRequest(request()));
  assert.deepEqual([plain['loss_fn_config'], plain['loss_fn_config_v2'], plain['forward_only']], [{}, {}, false]);
});

test('matches protobufjs byte for byte on a typical SFT request, and writes image chunks', () => {
  const tokens = [9707, 1879, 11];
  const ours = encodeForwardBackwardRequest({ ...request({ seqId: 5 }), data: [{ chunks: [{ kind: 'encoded_text', tokens }], lossFnInputs: { target_tokens: i64(1, 2, 3) } }] });
  const reference = raw('ForwardBackwardRequest', {
    model_id: 'S:train:0',
    seq_id: 5,
    data: [{ model_input: [{ encoded_text: { tokens: bytes(Int32Array.from(tokens)) } }], loss_fn_inputs: { target_tokens: { dense: bytes(BigInt64Array.of(1n, 2n, 3n)), dtype: 2, shape: [3] } } }],
    loss_fn: 'cross_entropy',
  });
  assert.deepEqual(ours, new Uint8Array(reference));

  const image = encodeForwardBackwardRequest({ ...request(), data: [{ chunks: [{ kind: 'image', data: Uint8Array.of(0x89, 0x50), format: 'png', expectedTokens: 4 }], lossFnInputs: {} }] });
  const chunk = rawDecode('ForwardBackwardRequest', image)['data'][0].model_input[0];
  assert.deepEqual([chunk.chunk, Array.from(chunk.image.data), chunk.image.format, chunk.image.expected_tokens], ['image', [0x89, 0x50], 'png', 4]);
  assert.throws(() => decodeForwardBackwardRequest(image), /image chunks are not supported by this server/);
});

test('decoding: several text chunks concatenate; INT32 → int64, BFLOAT16 → float32; no shape → 1-D; spans ignored', () => {
  const bf16 = Uint16Array.of(0x3f80, 0xc000, 0x3e80); // 1, -2, 0.25
  const body = rawRequest({
    model_input: [textChunk(1, 2), textChunk(3)],
    loss_fn_inputs: {
      target_tokens: { dense: bytes(Int32Array.of(4, 5, 6)), dtype: 3, shape: [3] },
      weights: { dense: bytes(bf16), dtype: 4 },
    },
    model_input_spans: [{ prompt_tokens: { sequence_id: 'x', offset: 0, length: 2 } }],
    loss_fn_input_spans: [{ sampled_tokens: { sequence_id: 'y', offset: 1, length: 1 } }],
  });
  const [d] = decodeForwardBackwardRequest(body).data;
  assert.deepEqual(d?.modelInput, [1, 2, 3]);
  assert.deepEqual(d?.lossFnInputs['target_tokens'], i64(4, 5, 6));
  assert.deepEqual(d?.lossFnInputs['weights'], f32(1, -2, 0.25));
});

test('decoding: sparse CSR tensors are densified', () => {
  // [[0, 7, 0], [0, 0, 0], [5, 0, 9]]
  const csr = (values: Uint8Array, dtype: number) => ({
    sparse_csr: { values, crow_indices: bytes(BigInt64Array.of(0n, 1n, 1n, 3n)), col_indices: bytes(BigInt64Array.of(1n, 0n, 2n)) },
    dtype,
    shape: [3, 3],
  });
  const body = rawRequest({
    model_input: [textChunk(1, 2, 3)],
    loss_fn_inputs: { target_tokens: csr(bytes(BigInt64Array.of(7n, 5n, 9n)), 2), weights: csr(bytes(Float32Array.of(0.5, 1, 2)), 1) },
  });
  const inputs = decodeForwardBackwardRequest(body).data[0]!.lossFnInputs;
  assert.deepEqual(inputs['target_tokens'], shaped(i64(0, 7, 0, 0, 0, 0, 5, 0, 9), [3, 3]));
  assert.deepEqual(inputs['weights'], shaped(f32(0, 0.5, 0, 0, 0, 0, 1, 0, 2), [3, 3]));
});

test('decoding: loss_fn_config_v2 wins when non-empty, else the legacy map', () => {
  const datum = { model_input: [textChunk(1)] };
  const both = rawRequest(datum, { loss_fn_config: { beta: 1 }, loss_fn_config_v2: { beta: { number: 2 }, gamma: { number: 0 } } });
  assert.deepEqual(decodeForwardBackwardRequest(both).lossFnConfig, { beta: 2, gamma: 0 });
  assert.deepEqual(decodeForwardBackwardRequest(rawRequest(datum, { loss_fn_config: { beta: 1 } })).lossFnConfig, { beta: 1 });
});

test('the envelope gives the address at once and refuses bad content only when read', () => {
  const body = rawRequest({ model_input: [{ dmel: { dmel: Uint8Array.of(1) } }] }, { model_id: 'S:train:4', seq_id: 9, forward_only: true });
  const envelope = decodeForwardBackwardEnvelope(body);
  assert.deepEqual([envelope.modelId, envelope.seqId, envelope.forwardOnly], ['S:train:4', 9, true]);
  assert.throws(() => envelope.read(), /dmel \(audio\) chunks are not supported/);
});

test('unknown fields of any wire type are skipped', () => {
  const datum = new protobuf.Writer().uint32((1 << 3) | 2).bytes(bytes(Int32Array.of(5))).finish(); // EncodedTextChunk
  const chunk = new protobuf.Writer().uint32((1 << 3) | 2).bytes(datum).uint32((9 << 3) | 5).fixed32(7).finish();
  const d = new protobuf.Writer().uint32((1 << 3) | 2).bytes(chunk).uint32((12 << 3) | 1).fixed64(3).finish();
  const body = new protobuf.Writer().uint32((2 << 3) | 0).int32(1).uint32((3 << 3) | 2).bytes(d).uint32((20 << 3) | 0).int64(-5).finish();
  assert.deepEqual(decodeForwardBackwardRequest(body).data, [{ modelInput: [5], lossFnInputs: {} }]);
});

test('every malformed request is a ProtoDecodeError naming the problem', () => {
  const ok = { model_input: [textChunk(1, 2)] };
  const tensor = (t: Record<string, unknown>) => rawRequest({ ...ok, loss_fn_inputs: { weights: t } });
  const csr = (crow: bigint[], col: bigint[], values: number[], shape: number[] | undefined) =>
    tensor({
      sparse_csr: { values: bytes(Float32Array.from(values)), crow_indices: bytes(BigInt64Array.from(crow)), col_indices: bytes(BigInt64Array.from(col)) },
      dtype: 1,
      ...(shape ? { shape } : {}),
    });
  const cases: [Uint8Array, RegExp][] = [
    [Uint8Array.of(0x0a, 0x05, 0x41), /malformed protobuf ForwardBackwardRequest/],
    [Uint8Array.of(0x0f), /malformed protobuf/],
    [Uint8Array.of(0x1a, 0x02, 0x0a, 0x05), /malformed protobuf ForwardBackwardRequest: length-delimited field runs past the end/],
    [raw('ForwardBackwardRequest', { model_id: 'm', data: [ok] }), /seq_id must be >= 1/],
    [raw('ForwardBackwardRequest', { model_id: 'm', seq_id: -4, data: [ok] }), /seq_id must be >= 1/],
    [rawRequest({ model_input: [{ image: { data: Uint8Array.of(1), format: 'png' } }] }), /model_input\[0\]: image chunks are not supported by this server/],
    [rawRequest({ model_input: [{ dmel: { dmel: Uint8Array.of(1) } }] }), /dmel \(audio\) chunks are not supported/],
    [rawRequest({ model_input: [{}] }), /unknown chunk kind/],
    [rawRequest({ model_input: [{ encoded_text: { tokens: Uint8Array.of(1, 0, 0) } }] }), /3 bytes is not a whole number of int32/],
    [rawRequest({ model_input: [textChunk(5, -1)] }), /token id -1 is negative/],
    [tensor({ dense: bytes(Float32Array.of(1, 2)), dtype: 0 }), /weights'\]: dtype is unspecified/],
    [tensor({ dense: bytes(Float32Array.of(1, 2)), dtype: 9 }), /unknown dtype 9/],
    [tensor({ dense: Uint8Array.of(1, 2, 3), dtype: 1 }), /3 bytes is not a whole number of float32/],
    [tensor({ dense: bytes(Float32Array.of(1, 2, 3)), dtype: 1, shape: [2, 2] }), /3 float32 values but shape \[2, 2\] needs 4/],
    [tensor({ dense: bytes(Float32Array.of(1)), dtype: 1, shape: [-1] }), /invalid dimension -1/],
    [tensor({}), /dtype is unspecified/],
    [csr([0n, 1n], [0n], [1], undefined), /needs its 2-D dense shape, got none/],
    [csr([0n, 1n], [0n], [1], [1, 1, 1]), /needs its 2-D dense shape, got \[1, 1, 1\]/],
    [csr([0n, 1n], [0n], [1], [2, 2]), /crow_indices has 2 entries but shape \[2, 2\] needs rows \+ 1 = 3/],
    [csr([0n, 1n, 2n], [0n], [1, 2], [2, 2]), /col_indices has 1 entries but there are 2 values/],
    [csr([1n, 1n, 2n], [0n, 1n], [1, 2], [2, 2]), /must start at 0/],
    [csr([0n, 2n, 1n], [0n, 1n], [1, 2], [2, 2]), /non-decreasing/],
    [csr([0n, 1n, 1n], [0n, 1n], [1, 2], [2, 2]), /ends at 1 but there are 2 values/],
    [csr([0n, 1n, 2n], [0n, 2n], [1, 2], [2, 2]), /col_indices\[1\] = 2 is outside \[0, 2\)/],
    [csr([0n, 0n, 0n], [], [], [2, 1 << 30]), /above the limit/],
    [rawRequest(ok, { loss_fn_config_v2: { mode: { text: 'fast' } } }), /loss_fn_config_v2\['mode'\] is text \("fast"\)/],
    [rawRequest(ok, { loss_fn_config_v2: { beta: {} } }), /loss_fn_config_v2\['beta'\] has no value/],
  ];
  for (const [body, message] of cases) {
    assert.throws(() => decodeForwardBackwardRequest(body), (e: unknown) => e instanceof ProtoDecodeError && message.test(e.message), String(message));
  }
});

test('the encoder refuses token ids that are not int32 and inconsistent tensors (programming errors)', () => {
  assert.throws(() => encodeForwardBackwardRequest(request({ data: [{ modelInput: [2 ** 31], lossFnInputs: {} }] })), RangeError);
  assert.throws(() => encodeForwardBackwardRequest({ ...request(), data: [{ chunks: [{ kind: 'encoded_text', tokens: [1.5] }], lossFnInputs: {} }] }), /chunks\[0\]\.tokens\[0\] = 1.5 is not an int32/);
  assert.throws(() => encodeForwardBackwardRequest(request({ data: [{ modelInput: [1], lossFnInputs: { w: shaped(f32(1, 2), [3]) } }] })), TypeError);
});
