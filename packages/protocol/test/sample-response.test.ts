// SampleResponse: our encoder and decoder against each other and against protobufjs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeSampleResponse, denseWithFill, encodeSampleResponse, ProtoDecodeError, type SampleResponseMsg } from '../src/index.js';
import { bytes, f32, raw, rawDecode, shaped } from './raw.js';

const bare: SampleResponseMsg = { sequences: [], promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0 };

test('round-trips: NaN prompt logprobs ↔ null, top-k padding and trimming', () => {
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
  assert.ok(Number.isNaN(new Float32Array(new Uint8Array(pb['prompt_logprobs']).buffer)[0]));
  const topk = pb['topk_prompt_logprobs'];
  assert.deepEqual([topk.k, topk.length], [3, 3]);
  assert.deepEqual(Array.from(new Int32Array(new Uint8Array(topk.token_ids).buffer)), [0, 0, 0, 3, 9, 0, 4, 0, 0]);
  assert.deepEqual(Array.from(new Float32Array(new Uint8Array(topk.logprobs).buffer)), [-99999, -99999, -99999, -0.5, -1.25, -3, -0.75, -99999, -99999]);
  assert.equal(pb['sequences'][1].stop_reason, 1);
  assert.equal(pb['sequences'][1].logprobs, undefined); // optional: absent, not empty
});

test('not-requested fields stay null; empty logprobs read as null; present-but-empty prompt logprobs stay []', () => {
  assert.deepEqual(decodeSampleResponse(encodeSampleResponse(bare)), bare);
  assert.equal(encodeSampleResponse(bare).length, 0);
  const allNull = decodeSampleResponse(encodeSampleResponse({ ...bare, promptLogprobs: [], topkPromptLogprobs: [null, null] }));
  assert.deepEqual([allNull.promptLogprobs, allNull.topkPromptLogprobs], [[], [null, null]]);
  const empty = raw('SampleResponse', { sequences: [{ tokens: bytes(Int32Array.of(1)), logprobs: new Uint8Array(0) }] });
  assert.equal(decodeSampleResponse(empty).sequences[0]?.logprobs, null);
  assert.deepEqual(decodeSampleResponse(encodeSampleResponse({ ...bare, sequences: [{ stopReason: 'stop', tokens: [], logprobs: null }] })).sequences, [{ stopReason: 'stop', tokens: [], logprobs: null }]);
});

test('SDK 0.32 fields: sampled top-k, target prompt logprobs dense and CSR (kept sparse), alternative prompt tokens', () => {
  const out = decodeSampleResponse(
    encodeSampleResponse({
      ...bare,
      sequences: [{ stopReason: 'length', tokens: [4, 5], logprobs: [-0.5, -1], topkLogprobs: [[[4, -0.5], [9, -2]], [[5, -1], [3, -1.5]]] }],
      targetPromptLogprobs: shaped(f32(NaN, -1.25, -2.5, NaN), [2, 2]),
      promptAltTokens: { tokens: { dtype: 'int64', shape: [2, 1], data: BigInt64Array.of(11n, 12n) }, logprobs: shaped(f32(-0.75, -3), [2, 1]) },
    }),
  );
  assert.deepEqual(out.sequences[0]?.topkLogprobs, [[[4, -0.5], [9, -2]], [[5, -1], [3, -1.5]]]);
  assert.deepEqual(out.targetPromptLogprobs, shaped(f32(NaN, -1.25, -2.5, NaN), [2, 2]));
  assert.deepEqual(out.promptAltTokens, { tokens: { dtype: 'int64', shape: [2, 1], data: BigInt64Array.of(11n, 12n) }, logprobs: shaped(f32(-0.75, -3), [2, 1]) });

  const csr = { crow: [0, 1, 2], col: [2, 0] };
  const sparse = decodeSampleResponse(encodeSampleResponse({ ...bare, targetPromptLogprobs: { ...shaped(f32(-0.5, -4), [2, 3]), csr } }));
  assert.deepEqual(sparse.targetPromptLogprobs, { ...shaped(f32(-0.5, -4), [2, 3]), csr });
  assert.deepEqual(Array.from(denseWithFill(sparse.targetPromptLogprobs!, NaN, 't').data as Float32Array), [NaN, NaN, -0.5, -4, NaN, NaN]);
});

test('bad bodies are a ProtoDecodeError naming the problem', () => {
  const badCsr = { sparse_csr: { values: bytes(Float32Array.of(1)), crow_indices: bytes(BigInt64Array.of(0n, 1n)), col_indices: bytes(BigInt64Array.of(5n)) }, dtype: 1, shape: [1, 2] };
  const cases: [Uint8Array, RegExp][] = [
    [raw('SampleResponse', { sequences: [{ stop_reason: 7 }] }), /unknown stop_reason 7/],
    [raw('SampleResponse', { sequences: [{ tokens: bytes(Int32Array.of(1, 2)), logprobs: bytes(Float32Array.of(1)) }] }), /1 logprobs for 2 tokens/],
    [raw('SampleResponse', { topk_prompt_logprobs: { token_ids: bytes(Int32Array.of(1)), logprobs: bytes(Float32Array.of(1)), k: 2, length: 1 } }), /for 1 x 2/],
    [raw('SampleResponse', { prompt_logprobs: Uint8Array.of(1, 2) }), /prompt_logprobs: 2 bytes/],
    [raw('SampleResponse', { target_prompt_logprobs: badCsr }), /target_prompt_logprobs: col_indices\[0\] = 5 is outside \[0, 2\)/],
    [raw('SampleResponse', { prompt_alt_tokens: { tokens: { dense: bytes(BigInt64Array.of(1n)), dtype: 2 } } }), /prompt_alt_tokens: needs both tokens and logprobs/],
    [Uint8Array.of(0x0a, 0x03, 0x08), /malformed protobuf SampleResponse/],
  ];
  for (const [body, message] of cases) {
    assert.throws(() => decodeSampleResponse(body), (e: unknown) => e instanceof ProtoDecodeError && message.test(e.message), String(message));
  }
  const twice = { dtype: 'float32' as const, shape: [1, 2], data: Float32Array.of(1, 2), csr: { crow: [0, 2], col: [1, 1] } };
  assert.throws(() => denseWithFill(twice, NaN, 't'), /cell \[0, 1\] is stored twice/);
});

test('the encoder refuses inconsistent sequences (programming errors)', () => {
  assert.throws(() => encodeSampleResponse({ ...bare, sequences: [{ stopReason: 'stop', tokens: [1], logprobs: [] }] }), RangeError);
  assert.throws(() => encodeSampleResponse({ ...bare, sequences: [{ stopReason: 'stop', tokens: [2 ** 31], logprobs: null }] }), RangeError);
});
