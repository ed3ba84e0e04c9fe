// The server's JSON tensor and model-input forms, and zstd bodies as the Python SDK compresses
// them. The protobuf codec's own tests are in packages/protocol/test.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { decodeForwardBackwardRequest, encodeForwardBackwardRequest, ProtoDecodeError, type TensorData } from '@lathe/protocol';
import { pythonExecutable } from '../src/index.js';
import { modelInputFromJson, tensorFromJson } from '../src/protocol/proto.js';
import { decompressZstd, ZstdDecodeError } from '../src/protocol/zstd.js';

const i64 = (...v: number[]): TensorData => ({ dtype: 'int64', shape: [v.length], data: BigInt64Array.from(v, BigInt) });
const f32 = (...v: number[]): TensorData => ({ dtype: 'float32', shape: [v.length], data: Float32Array.from(v) });
const shaped = (t: TensorData, shape: number[]): TensorData => ({ ...t, shape });

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
  const datum = { modelInput: [1, 2, 3], lossFnInputs: { target_tokens: i64(2, 3, 4), weights: f32(0, 1, 1) } };
  const body = encodeForwardBackwardRequest({ modelId: 'S:train:0', seqId: 3, lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: false, data: Array(20).fill(datum) });
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
