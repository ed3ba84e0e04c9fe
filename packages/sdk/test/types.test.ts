// Public data types (ModelInput, TensorData, loss-input conversion) and the chunking/merging rules.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { InvalidArgumentError, LatheError, ModelInput, TensorData, toTensorData, type Datum, type ForwardBackwardOutput } from '../src/index.js';
import { chunkData, combineOutputs, mergeMetrics } from '../src/internal/chunks.js';
import { adamParamsToJson, datumToProto, modelInputToJson, parseTinkerPath, sampleResponseFromProto, samplingParamsToJson } from '../src/internal/wire.js';

/** An assert.throws validator: an {@link InvalidArgumentError} whose message matches `pattern`. */
function invalid(pattern: RegExp): (error: unknown) => boolean {
  return (error) => {
    assert.ok(error instanceof InvalidArgumentError, `expected an InvalidArgumentError, got ${String(error)}`);
    assert.match(error.message, pattern);
    return true;
  };
}

describe('ModelInput', () => {
  test('fromInts, toInts, length, append, appendInt, empty', () => {
    const input = ModelInput.fromInts([1, 2, 3]);
    assert.equal(input.length, 3);
    assert.deepEqual(input.toInts(), [1, 2, 3]);
    const longer = input.append({ type: 'encoded_text', tokens: [4, 5] }).appendInt(6);
    assert.deepEqual(longer.toInts(), [1, 2, 3, 4, 5, 6]);
    assert.equal(longer.chunks.length, 3);
    assert.equal(input.length, 3, 'append returns a new input');
    assert.equal(ModelInput.empty().length, 0);
    assert.deepEqual(ModelInput.fromInts(Int32Array.of(7, 8)).toInts(), [7, 8]);
  });

  test('images count their expected tokens; toInts refuses them', () => {
    const withImage = ModelInput.fromInts([1]).append({ type: 'image', data: Uint8Array.of(1, 2, 3), format: 'png', expectedTokens: 4 });
    assert.equal(withImage.length, 5);
    assert.throws(() => withImage.toInts(), invalid(/text chunks/));
    assert.deepEqual(modelInputToJson(withImage), {
      chunks: [
        { tokens: [1], type: 'encoded_text' },
        { data: 'AQID', format: 'png', expected_tokens: 4, type: 'image' },
      ],
    });
  });

  test('rejects non-integer tokens', () => {
    assert.throws(() => ModelInput.fromInts([1.5]), InvalidArgumentError);
    assert.throws(() => ModelInput.fromInts([-1]), InvalidArgumentError);
    assert.throws(() => ModelInput.fromInts([-1]), LatheError, 'bad input is a LatheError too');
  });
});

describe('TensorData', () => {
  test('typed arrays in, typed arrays out, shape kept', () => {
    const t = TensorData.float32([1, 2, 3, 4, 5, 6], [2, 3]);
    assert.ok(t.data instanceof Float32Array);
    assert.deepEqual(t.shape, [2, 3]);
    assert.deepEqual(t.toNested(), [
      [1, 2, 3],
      [4, 5, 6],
    ]);
    assert.deepEqual(t.reshape([3, 2]).shape, [3, 2]);
    const ids = TensorData.int64(Int32Array.of(1, 2));
    assert.ok(ids.data instanceof BigInt64Array);
    assert.deepEqual(ids.toArray(), [1, 2]);
    const same = new Float32Array([1, 2]);
    assert.equal(TensorData.float32(same).data, same, 'a Float32Array is not copied');
  });

  test('validates dtype, shape and integers', () => {
    assert.throws(() => TensorData.float32([1, 2, 3], [2, 2]), invalid(/needs 4 values/));
    assert.throws(() => TensorData.int64([1.5]), invalid(/not an integer/));
    assert.throws(() => new TensorData('int64', new Float32Array(1) as never), invalid(/BigInt64Array/));
  });

  test('loss inputs: dtype by key as the Python SDK does, else by array type', () => {
    assert.equal(toTensorData('target_tokens', [1, 2]).dtype, 'int64');
    assert.equal(toTensorData('target_tokens', Float32Array.of(1, 2)).dtype, 'int64');
    for (const key of ['weights', 'advantages', 'logprobs', 'clip_low_threshold', 'clip_high_threshold']) {
      assert.equal(toTensorData(key, [1, 2]).dtype, 'float32', key);
      assert.equal(toTensorData(key, Int32Array.of(1, 2)).dtype, 'float32', key);
    }
    assert.equal(toTensorData('mask', Int32Array.of(1)).dtype, 'int64');
    assert.equal(toTensorData('mask', [1]).dtype, 'float32');
    const given = TensorData.float32([1], [1, 1]);
    assert.equal(toTensorData('target_tokens', given), given, 'a TensorData is kept as given');
  });
});

describe('request bodies', () => {
  test('sampling params: unset optional fields omitted, defaults sent (as the Python SDK)', () => {
    assert.deepEqual(samplingParamsToJson(undefined), { temperature: 1, top_k: -1, top_p: 1 });
    assert.deepEqual(samplingParamsToJson({ maxTokens: 5, seed: 0, stop: [1, 2], temperature: 0, topK: 3, topP: 0.5 }), {
      max_tokens: 5,
      seed: 0,
      stop: [1, 2],
      temperature: 0,
      top_k: 3,
      top_p: 0.5,
    });
  });

  test('adam params: all six fields with defaults', () => {
    assert.deepEqual(adamParamsToJson({ learningRate: 0.01 }), { learning_rate: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-12, weight_decay: 0, grad_clip_norm: 0 });
  });

  test('tinker paths', () => {
    assert.deepEqual(parseTinkerPath('tinker://S:train:0/sampler_weights/final'), { trainingRunId: 'S:train:0', checkpointId: 'sampler_weights/final' });
    assert.throws(() => parseTinkerPath('tinker://S:train:0/other/x'), invalid(/invalid tinker path/));
    assert.throws(() => parseTinkerPath('s3://x'), invalid(/not a tinker/));
  });

  test('protobuf datums: token ids that are not int32 are refused before anything is sent', () => {
    const datum = (tokens: number[]): Datum => ({ modelInput: ModelInput.fromInts(tokens), lossFnInputs: {} });
    assert.deepEqual(datumToProto(datum([1, 2 ** 31 - 1]), 0).chunks, [{ kind: 'encoded_text', tokens: Int32Array.of(1, 2 ** 31 - 1) }]);
    assert.throws(() => datumToProto(datum([1, 2 ** 31]), 3), invalid(/data\[3\]\.modelInput\.chunks\[0\]\.tokens\[1\] = 2147483648 is not an int32/));
  });

  test('protobuf sample results: a CSR targetPromptLogprobs is densified with NaN', () => {
    const csr = { crow: [0, 1, 2], col: [2, 0] };
    const out = sampleResponseFromProto({
      sequences: [],
      promptLogprobs: null,
      topkPromptLogprobs: null,
      promptCacheHitTokens: 0,
      targetPromptLogprobs: { dtype: 'float32', shape: [2, 3], data: Float32Array.of(-0.5, -4), csr },
    });
    assert.deepEqual(out.targetPromptLogprobs?.shape, [2, 3]);
    assert.deepEqual(Array.from(out.targetPromptLogprobs!.data), [NaN, NaN, -0.5, -4, NaN, NaN]);
  });
});

describe('chunking and merging (Python SDK rules)', () => {
  const datum = (n: number): Datum => ({ modelInput: ModelInput.fromInts(Array(n).fill(1)), lossFnInputs: { target_tokens: Array(n).fill(1), weights: Array(n).fill(1) } });

  test('splits by datum count and by estimated bytes (4/token + tensor bytes)', () => {
    const data = Array.from({ length: 5 }, () => datum(10)); // 10*4 + 10*8 + 10*4 = 160 bytes each
    assert.deepEqual(chunkData(data, 2, 1e9).map((c) => c.length), [2, 2, 1]);
    assert.deepEqual(chunkData(data, 100, 320).map((c) => c.length), [2, 2, 1]);
    assert.deepEqual(chunkData(data, 100, 100).map((c) => c.length), [1, 1, 1, 1, 1], 'an oversized datum goes alone');
    assert.deepEqual(chunkData(data, 1024, 5_000_000).map((c) => c.length), [5]);
  });

  test('metrics merge by their reduction suffix', () => {
    const out = (n: number, metrics: Record<string, number>): ForwardBackwardOutput => ({
      lossFnOutputType: 'ArrayRecord',
      lossFnOutputs: Array.from({ length: n }, () => ({ logprobs: TensorData.float32([0]) })),
      metrics,
    });
    const merged = mergeMetrics([
      out(1, { 'loss:sum': 1, 'acc:mean': 1, 'lo:min': 3, 'hi:max': 3, 's:slack': 2, 'id:unique': 7, 'odd:median': 1, nocolon: 1, 'only:sum': 1 }),
      out(3, { 'loss:sum': 2, 'acc:mean': 0, 'lo:min': 1, 'hi:max': 5, 's:slack': 4, 'id:unique': 8, 'odd:median': 1, nocolon: 1 }),
    ]);
    assert.deepEqual(merged, { 'loss:sum': 3, 'acc:mean': 0.25, 'lo:min': 1, 'hi:max': 5, 's:slack': 4 - 3.5, 'id:unique': 7, 'id:unique_1': 8 });
    assert.equal(Object.keys(mergeMetrics([out(1, { 'h:hash_unordered': 1 }), out(1, { 'h:hash_unordered': 2 })])).length, 1);
    assert.equal(
      mergeMetrics([out(1, { 'h:hash_unordered': 1 }), out(1, { 'h:hash_unordered': 2 })])['h:hash_unordered'],
      mergeMetrics([out(1, { 'h:hash_unordered': 2 }), out(1, { 'h:hash_unordered': 1 })])['h:hash_unordered'],
      'order-insensitive',
    );
    const combined = combineOutputs([out(1, { 'loss:sum': 1 }), out(2, { 'loss:sum': 1 })]);
    assert.equal(combined.lossFnOutputs.length, 3);
    assert.deepEqual(mergeMetrics([out(1, { weird: 1 })]), { weird: 1 }, 'one chunk: metrics pass through unchanged');
  });
});

describe('runtime-agnostic core', () => {
  test('src/ (and @lathe/protocol\'s) import nothing from Node or other packages, and touch `process` only behind a typeof guard', async () => {
    const { readdirSync, readFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    for (const root of [join(import.meta.dirname, '../src'), join(import.meta.dirname, '../../protocol/src')]) {
      const files = (readdirSync(root, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'));
      assert.ok(files.length > 5, root);
      for (const file of files) {
        // Code only: doc comments may show `import … from '@lathe/sdk'`.
        const text = readFileSync(join(root, file), 'utf8')
          .split('\n')
          .filter((l) => !/^\s*(\*|\/\*\*|\/\/)/.test(l))
          .join('\n');
        for (const [, spec] of text.matchAll(/(?:from|import)\s*\(?\s*'([^']+)'/g)) {
          assert.ok(spec!.startsWith('.') || spec === '@lathe/protocol', `${file} imports ${spec}`);
        }
        assert.doesNotMatch(text, /\bBuffer\.|\brequire\(/, file);
        for (const line of text.split('\n').filter((l) => /\bprocess\./.test(l))) {
          assert.match(line, /typeof process !== 'undefined'/, `${file}: ${line.trim()}`);
        }
      }
    }
  });
});
