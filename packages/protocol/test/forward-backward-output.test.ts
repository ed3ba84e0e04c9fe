// ForwardBackwardOutput: our encoder and decoder against each other and against protobufjs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import protobuf from 'protobufjs';
import { decodeForwardBackwardOutput, encodeForwardBackwardOutput, ProtoDecodeError } from '../src/index.js';
import { bytes, f32, i64, raw, rawDecode, shaped } from './raw.js';

test('round-trips; ragged trailing shapes become separate records, in order; int64 byte offsets', () => {
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
  assert.deepEqual(decodeForwardBackwardOutput(body), { lossFnOutputType: 'ArrayRecord', ...out });

  const pb = rawDecode('ForwardBackwardOutput', body);
  assert.equal(pb['loss_fn_output_type'], 'ArrayRecord');
  assert.deepEqual(
    pb['loss_fn_outputs'].map((r: any) => [r.type_tag, r.num_datums, r.fields.logprobs.trailing_shape]),
    [['ArrayRecord', 2, []], ['ArrayRecord', 1, [2]], ['ArrayRecord', 2, [3]], ['ArrayRecord', 1, []]],
  );
  const first = pb['loss_fn_outputs'][0].fields.logprobs;
  assert.deepEqual(Array.from(new BigInt64Array(new Uint8Array(first.offsets).buffer)), [0n, 12n, 16n]);
  assert.equal(first.dtype, 1);
  assert.equal(pb['loss_fn_outputs'][3].fields.target.dtype, 2);
  assert.deepEqual(pb['metrics'], out.metrics);
});

test('no outputs, empty datums, and INT32 / BFLOAT16 batched tensors (widened as the Python SDK does)', () => {
  assert.deepEqual(decodeForwardBackwardOutput(encodeForwardBackwardOutput({ lossFnOutputs: [], metrics: {} })), { lossFnOutputType: 'ArrayRecord', lossFnOutputs: [], metrics: {} });
  assert.deepEqual(decodeForwardBackwardOutput(encodeForwardBackwardOutput({ lossFnOutputs: [{}, {}], metrics: {} })).lossFnOutputs, [{}, {}]);
  const body = raw('ForwardBackwardOutput', {
    loss_fn_output_type: 'tinker:ArrayRecord',
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
  const out = decodeForwardBackwardOutput(body);
  assert.equal(out.lossFnOutputType, 'ArrayRecord');
  assert.deepEqual(out.lossFnOutputs, [
    { ids: shaped(i64(1, 2), [1, 2]), lp: f32(1) },
    { ids: shaped(i64(3, 4, 5, 6), [2, 2]), lp: f32(-1, 2) },
  ]);
});

test('unknown fields (any wire type) are skipped; an unpacked trailing_shape is read', () => {
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
  assert.deepEqual(decodeForwardBackwardOutput(body).lossFnOutputs[0]!['x'], shaped(f32(1, 2, 3, 4), [2, 2]));
});

test('malformed records are a ProtoDecodeError naming the problem', () => {
  const record = (field: Record<string, unknown>, n = 1) =>
    raw('ForwardBackwardOutput', { loss_fn_outputs: [{ num_datums: n, fields: { lp: { dtype: 1, data: bytes(Float32Array.of(1, 2, 3)), ...field } } }] });
  const cases: [Uint8Array, RegExp][] = [
    [record({ offsets: bytes(BigInt64Array.of(0n, 12n)) }, 2), /2 offsets for 2 datums/],
    [record({ offsets: bytes(BigInt64Array.of(0n, 16n)) }), /outside the 12-byte data/],
    [record({ offsets: bytes(BigInt64Array.of(0n, 6n)) }), /not a whole number of float32/],
    [record({ offsets: bytes(BigInt64Array.of(0n, 12n)), trailing_shape: [2] }), /3 values, not a multiple of trailing shape \[2\]/],
    [record({ offsets: bytes(BigInt64Array.of(0n, 12n)), trailing_shape: [0] }), /has a zero dimension/],
    [record({ offsets: bytes(BigInt64Array.of(0n, 12n)), dtype: 0 }), /dtype is unspecified/],
    [record({ offsets: bytes(BigInt64Array.of(0n)) }, -1), /num_datums -1 is out of range/],
    [Uint8Array.of(0x12, 0x09), /malformed protobuf ForwardBackwardOutput/],
    [Uint8Array.of(0x12, 0x05, 0x01), /malformed protobuf ForwardBackwardOutput/],
  ];
  for (const [body, message] of cases) {
    assert.throws(() => decodeForwardBackwardOutput(body), (e: unknown) => e instanceof ProtoDecodeError && message.test(e.message), String(message));
  }
});

test('the encoder refuses inconsistent tensors (programming errors)', () => {
  assert.throws(() => encodeForwardBackwardOutput({ lossFnOutputs: [{ lp: shaped(f32(1, 2), [3]) }], metrics: {} }), TypeError);
  assert.throws(() => encodeForwardBackwardOutput({ lossFnOutputs: [{ lp: { dtype: 'int64', shape: [1], data: Float32Array.of(1) } }], metrics: {} }), TypeError);
  assert.throws(() => encodeForwardBackwardOutput({ lossFnOutputs: [{ lp: shaped(f32(1), []) }], metrics: {} }), /0-d/);
  assert.throws(() => encodeForwardBackwardOutput({ lossFnOutputs: [{ lp: shaped(f32(), [1, 0]) }], metrics: {} }), /trailing dimensions must be non-zero/);
});
