import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import protobuf from 'protobufjs';
import { pythonExecutable } from '../src/index.js';
import {
  decodeForwardBackwardOutput,
  decodeForwardBackwardRequest,
  decodeSampleResponse,
  encodeForwardBackwardOutput,
  encodeForwardBackwardRequest,
  encodeSampleResponse,
  modelInputFromJson,
  ProtoDecodeError,
  tensorFromJson,
  TINKER_PUBLIC_PROTO,
  type ForwardBackwardRequestMsg,
  type SampleResponseMsg,
  type TensorData,
} from '../src/protocol/proto.js';
import { decompressZstd, ZstdDecodeError } from '../src/protocol/zstd.js';

// Raw message builders for inputs our encoders never produce (other dtypes, sparse, images, ...).
const root = protobuf.parse(TINKER_PUBLIC_PROTO, { keepCase: true }).root;
const raw = (name: string, value: Record<string, unknown>): Uint8Array => root.lookupType(`tinker_public.${name}`).encode(value).finish();
const rawDecode = (name: string, body: Uint8Array): Record<string, any> =>
  root.lookupType(`tinker_public.${name}`).toObject(root.lookupType(`tinker_public.${name}`).decode(body), { longs: Number, defaults: true });

const i64 = (...v: number[]): TensorData => ({ dtype: 'int64', shape: [v.length], data: BigInt64Array.from(v, BigInt) });
const f32 = (...v: number[]): TensorData => ({ dtype: 'float32', shape: [v.length], data: Float32Array.from(v) });
const shaped = (t: TensorData, shape: number[]): TensorData => ({ ...t, shape });
const bytes = (a: Int32Array | Float32Array | BigInt64Array | Uint16Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

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

test('the schema is read from tinker_public.proto', () => {
  const file = readFileSync(new URL('../src/protocol/tinker_public.proto', import.meta.url), 'utf8');
  assert.equal(TINKER_PUBLIC_PROTO, file);
});

test('ForwardBackwardRequest round-trips, including (N, K) soft targets and config', () => {
  const msg = request({
    lossFn: 'ppo',
    lossFnConfig: { clip_low_threshold: 0.8, clip_high_threshold: 1.2 },
    forwardOnly: true,
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

test('the request is encoded as the Python SDK does: int32 tokens, dense tensors with dtype and shape', () => {
  const pb = rawDecode('ForwardBackwardRequest', encodeForwardBackwardRequest(request({ lossFnConfig: { beta: 0.05 } })));
  const datum = pb['data'][0];
  assert.equal(datum.model_input.length, 1);
  assert.deepEqual(Array.from(new Int32Array(new Uint8Array(datum.model_input[0].encoded_text.tokens).buffer)), [1, 2, 3]);
  assert.equal(datum.loss_fn_inputs.target_tokens.dtype, 2);
  assert.deepEqual(datum.loss_fn_inputs.target_tokens.shape, [3]);
  assert.equal(datum.loss_fn_inputs.target_tokens.dense.length, 24);
  assert.equal(datum.loss_fn_inputs.weights.dtype, 1);
  assert.deepEqual(pb['loss_fn_config'], { beta: 0.05 });
  assert.deepEqual(pb['loss_fn_config_v2'].beta.number, 0.05);
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

test('ForwardBackwardOutput round-trips; ragged trailing shapes become separate records, in order', () => {
  const out = {
    lossFnOutputs: [
      { logprobs: f32(-1, -2, -3) },
      { logprobs: f32(-4) },
      { logprobs: shaped(f32(-1, -2, -3, -4), [2, 2]) },
      { logprobs: shaped(f32(-5, -6, -7, -8, -9, -10), [2, 3]) },
      { logprobs: shaped(f32(-1, -2, -3), [1, 3]) },
      { logprobs: f32(-0.5), target: i64(5) },
    ],
    metrics: { 'loss:sum': 12.5, 'tokens:sum': 9 },
  };
  const body = encodeForwardBackwardOutput(out);
  assert.deepEqual(decodeForwardBackwardOutput(body), out);

  const pb = rawDecode('ForwardBackwardOutput', body);
  assert.equal(pb['loss_fn_output_type'], 'ArrayRecord');
  assert.deepEqual(
    pb['loss_fn_outputs'].map((r: any) => [r.num_datums, r.fields.logprobs.trailing_shape]),
    [[2, []], [1, [2]], [2, [3]], [1, []]],
  );
  // Offsets are int64 LE byte offsets.
  const first = pb['loss_fn_outputs'][0].fields.logprobs;
  assert.deepEqual(Array.from(new BigInt64Array(new Uint8Array(first.offsets).buffer)), [0n, 12n, 16n]);
  assert.equal(first.dtype, 1);
  assert.equal(pb['loss_fn_outputs'][3].fields.target.dtype, 2);
});

test('ForwardBackwardOutput: no outputs, empty datums, and INT32 / BFLOAT16 batched tensors', () => {
  assert.deepEqual(decodeForwardBackwardOutput(encodeForwardBackwardOutput({ lossFnOutputs: [], metrics: {} })), { lossFnOutputs: [], metrics: {} });
  assert.deepEqual(decodeForwardBackwardOutput(encodeForwardBackwardOutput({ lossFnOutputs: [{}, {}], metrics: {} })).lossFnOutputs, [{}, {}]);
  const body = raw('ForwardBackwardOutput', {
    loss_fn_output_type: 'ArrayRecord',
    loss_fn_outputs: [
      {
        num_datums: 2,
        fields: {
          ids: { data: bytes(Int32Array.of(1, 2, 3, 4, 5, 6)), offsets: bytes(BigInt64Array.of(0n, 8n, 24n)), dtype: 3, trailing_shape: [2] },
          lp: { data: bytes(Uint16Array.of(0x3f80, 0xbf80, 0x4000)), offsets: bytes(BigInt64Array.of(0n, 2n, 6n)), dtype: 4 },
        },
      },
    ],
  });
  assert.deepEqual(decodeForwardBackwardOutput(body).lossFnOutputs, [
    { ids: shaped(i64(1, 2), [1, 2]), lp: f32(1) },
    { ids: shaped(i64(3, 4, 5, 6), [2, 2]), lp: f32(-1, 2) },
  ]);
});

test('malformed ForwardBackwardOutput records are refused', () => {
  const record = (field: Record<string, unknown>, n = 1) =>
    raw('ForwardBackwardOutput', { loss_fn_outputs: [{ num_datums: n, fields: { lp: { dtype: 1, data: bytes(Float32Array.of(1, 2, 3)), ...field } } }] });
  const cases: [Uint8Array, RegExp][] = [
    [record({ offsets: bytes(BigInt64Array.of(0n, 12n)) }, 2), /2 offsets for 2 datums/],
    [record({ offsets: bytes(BigInt64Array.of(0n, 16n)) }), /outside the 12-byte data/],
    [record({ offsets: bytes(BigInt64Array.of(0n, 6n)) }), /not a whole number of float32/],
    [record({ offsets: bytes(BigInt64Array.of(0n, 12n)), trailing_shape: [2] }), /3 values, not a multiple of trailing shape \[2\]/],
    [record({ offsets: bytes(BigInt64Array.of(0n, 12n)), dtype: 0 }), /dtype is unspecified/],
    [Uint8Array.of(0x12, 0x09), /malformed protobuf ForwardBackwardOutput/],
  ];
  for (const [body, message] of cases) {
    assert.throws(() => decodeForwardBackwardOutput(body), (e: unknown) => e instanceof ProtoDecodeError && message.test(e.message), String(message));
  }
});

test('SampleResponse round-trips: NaN prompt logprobs ↔ null, top-k padding and trimming', () => {
  const r: SampleResponseMsg = {
    sequences: [
      { stopReason: 'stop', tokens: [5, 6, 151645], logprobs: [-0.5, -0.25, -1] },
      { stopReason: 'length', tokens: [7], logprobs: null },
    ],
    promptLogprobs: [null, -1.5, -0.125],
    topkPromptLogprobs: [null, [[3, -0.5], [9, -1.25], [0, -3]], [[4, -0.75]]],
    promptCacheHitTokens: 12,
  };
  const body = encodeSampleResponse(r);
  assert.deepEqual(decodeSampleResponse(body), r);

  const pb = rawDecode('SampleResponse', body);
  const lps = new Float32Array(new Uint8Array(pb['prompt_logprobs']).buffer);
  assert.ok(Number.isNaN(lps[0]));
  const topk = pb['topk_prompt_logprobs'];
  assert.deepEqual([topk.k, topk.length], [3, 3]);
  assert.deepEqual(Array.from(new Int32Array(new Uint8Array(topk.token_ids).buffer)), [0, 0, 0, 3, 9, 0, 4, 0, 0]);
  assert.deepEqual(Array.from(new Float32Array(new Uint8Array(topk.logprobs).buffer)), [-99999, -99999, -99999, -0.5, -1.25, -3, -0.75, -99999, -99999]);
  assert.equal(pb['sequences'][1].stop_reason, 1);
});

test('SampleResponse: not-requested fields stay null; empty logprobs read as null; bad bodies refused', () => {
  const bare: SampleResponseMsg = { sequences: [], promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0 };
  assert.deepEqual(decodeSampleResponse(encodeSampleResponse(bare)), bare);
  assert.equal(encodeSampleResponse(bare).length, 0);
  const allNull = decodeSampleResponse(encodeSampleResponse({ ...bare, promptLogprobs: [], topkPromptLogprobs: [null, null] }));
  assert.deepEqual([allNull.promptLogprobs, allNull.topkPromptLogprobs], [[], [null, null]]);
  const empty = raw('SampleResponse', { sequences: [{ tokens: bytes(Int32Array.of(1)), logprobs: new Uint8Array(0) }] });
  assert.equal(decodeSampleResponse(empty).sequences[0]?.logprobs, null);

  const cases: [Uint8Array, RegExp][] = [
    [raw('SampleResponse', { sequences: [{ stop_reason: 7 }] }), /unknown stop_reason 7/],
    [raw('SampleResponse', { sequences: [{ tokens: bytes(Int32Array.of(1, 2)), logprobs: bytes(Float32Array.of(1)) }] }), /1 logprobs for 2 tokens/],
    [raw('SampleResponse', { topk_prompt_logprobs: { token_ids: bytes(Int32Array.of(1)), logprobs: bytes(Float32Array.of(1)), k: 2, length: 1 } }), /for 1 x 2/],
    [raw('SampleResponse', { prompt_logprobs: Uint8Array.of(1, 2) }), /prompt_logprobs: 2 bytes/],
  ];
  for (const [body, message] of cases) {
    assert.throws(() => decodeSampleResponse(body), (e: unknown) => e instanceof ProtoDecodeError && message.test(e.message), String(message));
  }
});

test('encoders refuse inconsistent tensors and sequences (programming errors)', () => {
  assert.throws(() => encodeForwardBackwardOutput({ lossFnOutputs: [{ lp: shaped(f32(1, 2), [3]) }], metrics: {} }), TypeError);
  assert.throws(() => encodeForwardBackwardOutput({ lossFnOutputs: [{ lp: { dtype: 'int64', shape: [1], data: Float32Array.of(1) } }], metrics: {} }), TypeError);
  assert.throws(() => encodeForwardBackwardOutput({ lossFnOutputs: [{ lp: shaped(f32(1), []) }], metrics: {} }), /0-d/);
  assert.throws(() => encodeForwardBackwardRequest(request({ data: [{ modelInput: [2 ** 31], lossFnInputs: {} }] })), RangeError);
  assert.throws(() => encodeSampleResponse({ sequences: [{ stopReason: 'stop', tokens: [1], logprobs: [] }], promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0 }), RangeError);
});

test('tensorFromJson reads TensorData objects and plain lists with the same checks', () => {
  assert.deepEqual(tensorFromJson({ data: [1, 2, 3, 4], dtype: 'int64', shape: [2, 2] }, 'target_tokens'), shaped(i64(1, 2, 3, 4), [2, 2]));
  assert.deepEqual(tensorFromJson({ data: [0.5, 1], dtype: 'float32', shape: null }, 'weights'), f32(0.5, 1));
  assert.deepEqual(tensorFromJson([5, 6], 'target_tokens'), i64(5, 6));
  assert.deepEqual(tensorFromJson([5, 6], 'advantages'), f32(5, 6));
  assert.deepEqual(tensorFromJson([[1, 2], [3, 4], [5, 6]], 'weights'), shaped(f32(1, 2, 3, 4, 5, 6), [3, 2]));
  const sparse = { data: [7, 9], dtype: 'int64', shape: [2, 3], sparse_crow_indices: [0, 1, 2], sparse_col_indices: [2, 0] };
  assert.deepEqual(tensorFromJson(sparse, 'target_tokens'), shaped(i64(0, 0, 7, 9, 0, 0), [2, 3]));

  const cases: [unknown, RegExp][] = [
    ['x', /must be a TensorData object or a list of numbers/],
    [{ data: [1], dtype: 'int32' }, /unknown dtype "int32"/],
    [{ data: 'abc', dtype: 'float32' }, /data must be a flat list/],
    [{ data: [1.5], dtype: 'int64' }, /element 0 \(1.5\) is not an integer/],
    [{ data: ['a'], dtype: 'float32' }, /element 0 \("a"\) is not a number/],
    [{ data: [1, 2, 3], dtype: 'float32', shape: [2, 2] }, /3 float32 values but shape \[2, 2\] needs 4/],
    [{ data: [1], dtype: 'float32', shape: [1], sparse_crow_indices: [0, 1] }, /must be given together/],
    [{ ...sparse, shape: [6] }, /2-D dense shape/],
    [{ ...sparse, sparse_col_indices: [3, 0] }, /outside \[0, 3\)/],
    [[[1, 2], [3]], /ragged/],
    [[1, [2]], /ragged/],
  ];
  for (const [value, message] of cases) {
    assert.throws(() => tensorFromJson(value, 'weights'), (e: unknown) => e instanceof ProtoDecodeError && message.test(e.message), String(message));
  }
});

test('modelInputFromJson concatenates text chunks and refuses the rest', () => {
  assert.deepEqual(modelInputFromJson({ chunks: [{ type: 'encoded_text', tokens: [1, 2] }, { tokens: [3] }] }), [1, 2, 3]);
  assert.deepEqual(modelInputFromJson({ chunks: [] }), []);
  const cases: [unknown, RegExp][] = [
    [[1, 2], /object with a "chunks" list/],
    [{ chunks: [{ type: 'image', data: 'AA==', format: 'png' }] }, /image chunks are not supported by this server/],
    [{ chunks: [{ type: 'image_asset_pointer', location: 'x', format: 'png' }] }, /image chunks are not supported/],
    [{ chunks: [{ type: 'dmel', dmel: 'AA==' }] }, /dmel \(audio\) chunks are not supported/],
    [{ chunks: [{ type: 'video' }] }, /unknown chunk type "video"/],
    [{ chunks: [{ type: 'encoded_text', tokens: [1, -2] }] }, /token id -2 is out of range/],
    [{ chunks: [{ type: 'encoded_text', tokens: [1.5] }] }, /is not an integer/],
  ];
  for (const [value, message] of cases) {
    assert.throws(() => modelInputFromJson(value), (e: unknown) => e instanceof ProtoDecodeError && message.test(e.message), String(message));
  }
});

// ---- zstd: bodies compressed by Python's `zstandard`, as the SDK does ----

const ZSTD_SCRIPT = `
import json, sys, zstandard
payload = sys.stdin.buffer.read()
c = zstandard.ZstdCompressor(level=3)
def stream(data):
    o = c.compressobj()
    return o.compress(data) + o.flush()
print(json.dumps({
    "one_shot": c.compress(payload).hex(),
    "streamed": stream(payload).hex(),
    "two_frames": (c.compress(b"abc") + stream(b"def")).hex(),
    "big_declared": c.compress(bytes(1_000_000)).hex(),
    "big_streamed": stream(bytes(1_000_000)).hex(),
}))
`;

test('zstd: decompresses Python-compressed bodies and refuses oversize or invalid ones', async () => {
  const body = encodeForwardBackwardRequest(request({ data: Array.from({ length: 20 }, () => request().data[0]!) }));
  const run = spawnSync(pythonExecutable(), ['-c', ZSTD_SCRIPT], { input: body, encoding: 'buffer' });
  assert.equal(run.status, 0, run.stderr.toString());
  const fx = Object.fromEntries(Object.entries(JSON.parse(run.stdout.toString()) as Record<string, string>).map(([k, v]) => [k, Uint8Array.from(Buffer.from(v, 'hex'))]));

  for (const name of ['one_shot', 'streamed']) {
    const out = await decompressZstd(fx[name]!, 1 << 20);
    assert.deepEqual(out, new Uint8Array(body), name);
    assert.equal(decodeForwardBackwardRequest(out).data.length, 20);
  }
  assert.equal(Buffer.from(await decompressZstd(fx['two_frames']!, 100)).toString(), 'abcdef');
  assert.equal((await decompressZstd(fx['big_streamed']!, 1_000_000)).length, 1_000_000);

  const refused = (code: string, message: RegExp) => (e: unknown) => e instanceof ZstdDecodeError && e.code === code && message.test(e.message);
  // Declared content size: refused before decoding; without one: refused while streaming.
  await assert.rejects(decompressZstd(fx['big_declared']!, 100_000), refused('limit_exceeded', /declares 1000000 decompressed bytes/));
  await assert.rejects(decompressZstd(fx['big_streamed']!, 100_000), refused('limit_exceeded', /more than 100000 bytes/));
  await assert.rejects(decompressZstd(fx['two_frames']!, 5), refused('limit_exceeded', /more than 5 bytes/));
  // A frame whose window descriptor asks for 2^41 bytes (fzstd would allocate it up front).
  const hugeWindow = Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0x01, 0x00, 0x00);
  await assert.rejects(decompressZstd(hugeWindow, 1 << 20), refused('limit_exceeded', /window/));

  const oneShot = fx['one_shot']!;
  await assert.rejects(decompressZstd(new Uint8Array(0), 100), refused('invalid_data', /empty body/));
  await assert.rejects(decompressZstd(body, 1 << 20), refused('invalid_data', /bad magic number/));
  await assert.rejects(decompressZstd(oneShot.subarray(0, oneShot.length - 3), 1 << 20), refused('invalid_data', /truncated/));
  await assert.rejects(decompressZstd(Uint8Array.from([...oneShot, 1, 2, 3, 4, 5, 6, 7, 8]), 1 << 20), refused('invalid_data', /trailing bytes/));
  const corrupt = Uint8Array.from(oneShot);
  corrupt.fill(0xff, 12, corrupt.length - 4);
  await assert.rejects(decompressZstd(corrupt, 1 << 20), (e: unknown) => e instanceof ZstdDecodeError);
});
