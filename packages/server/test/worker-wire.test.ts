import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode } from '@msgpack/msgpack';
import { encodeFrame, FrameReader, floatsToWire, fromWire, tokensToWire, toWire, wireToNumbers } from '../src/index.js';

test('frames survive arbitrary splitting and coalescing', () => {
  const messages = [{ op: 'a', id: 1 }, { op: 'b', id: 2, blob: new Uint8Array(70_000).fill(7) }, { op: 'c', id: 3 }];
  const stream = Buffer.concat(messages.map((m) => encodeFrame(m)));
  for (const piece of [1, 3, 4, 5, 1000, stream.length]) {
    const reader = new FrameReader();
    const out: Record<string, unknown>[] = [];
    for (let i = 0; i < stream.length; i += piece) out.push(...reader.push(stream.subarray(i, i + piece)));
    assert.deepEqual(out.map((m) => m['op']), ['a', 'b', 'c']);
    assert.equal((out[1]?.['blob'] as Uint8Array).length, 70_000);
  }
});

test('a frame header is a big-endian length', () => {
  const frame = encodeFrame({ op: 'x' });
  assert.equal(new DataView(frame.buffer).getUint32(0, false), frame.length - 4);
  assert.deepEqual(decode(frame.subarray(4)), { op: 'x' });
});

test('an oversize or non-map frame is refused', () => {
  const header = new Uint8Array([0xff, 0xff, 0xff, 0xff]);
  assert.throws(() => new FrameReader().push(header), /exceeds/);
  const list = new Uint8Array([0, 0, 0, 1, 0x90]);
  assert.throws(() => new FrameReader().push(list), /not a msgpack map/);
});

test('wire tensors round-trip, including views into pooled Buffers', () => {
  assert.deepEqual(wireToNumbers(tokensToWire([1, 151935, 0])), [1, 151935, 0]);
  const floats = floatsToWire([0.5, -2, 3.25], [3, 1]);
  assert.deepEqual(floats.shape, [3, 1]);
  assert.deepEqual(Array.from(fromWire(floats) as Float32Array), [0.5, -2, 3.25]);
  // A tensor whose bytes sit at an odd offset inside a larger buffer (as msgpack decoding yields).
  const pool = Buffer.alloc(64, 0xee);
  const ints = toWire(new Int32Array([5, -6]));
  pool.set(ints.data, 3);
  const view = { ...ints, data: pool.subarray(3, 3 + ints.data.length) };
  assert.deepEqual(wireToNumbers(view), [5, -6]);
});
