// End to end against a real Lathe server on loopback (real worker, tiny model): no mocks. One
// server for the file (fixtures/e2e.ts): training: SFT with falling loss, pipelined steps, custom
// losses, chunking; errors that reach the user intact.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BadRequestError, ModelInput, NotFoundError, RequestFailedError, ServiceClient, TensorData, type Datum } from '../src/index.js';
import { apiKey, baseUrl, DATA, DATASET, fingerprint, maxAbsDiff, maxRelDiff, MODEL, relDiff, service, sft, useE2eServer } from './fixtures/e2e.js';

useE2eServer();

describe('training', () => {
  test('capabilities, then SFT steps with falling loss', async () => {
    const caps = await service.getServerCapabilities();
    const tiny = caps.supportedModels.find((m) => m.modelName === MODEL);
    assert.equal(tiny?.maxContextLength, 2048);

    const training = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 0, userMetadata: { test: 'sft' } });
    assert.match(training.modelId, /:train:\d+$/);
    const info = await training.getInfo();
    assert.equal(info.modelData.modelName, MODEL);
    assert.equal(info.loraRank, 8);

    const losses: number[] = [];
    for (let step = 0; step < 4; step++) {
      const fb = training.forwardBackward(DATA, 'cross_entropy');
      const update = training.optimStep({ learningRate: 1e-2 });
      const out = await fb;
      const { metrics } = await update;
      assert.equal(typeof metrics, 'object');
      losses.push(out.metrics['loss:sum']!);
      assert.deepEqual(
        out.lossFnOutputs.map((o) => o['logprobs']!.shape),
        DATASET.map((s) => [s.length - 1]),
      );
      assert.ok(out.lossFnOutputs[0]!['logprobs']!.data instanceof Float32Array);
    }
    assert.ok(losses.at(-1)! < losses[0]! / 2, `loss ${losses.map((l) => l.toFixed(2)).join(' → ')}`);
    for (let i = 1; i < losses.length; i++) assert.ok(losses[i]! < losses[i - 1]!, `loss rose at step ${i}: ${losses.join(', ')}`);
  });

  test('10 pipelined steps give the same weights as 10 awaited steps', async () => {
    const lr = 5e-3;
    const pipelined = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 1 });
    const futures: PromiseLike<unknown>[] = [];
    const losses: PromiseLike<number>[] = [];
    for (let step = 0; step < 10; step++) {
      const fb = pipelined.forwardBackward([DATA[0]!], 'cross_entropy');
      losses.push(fb.then((out) => out.metrics['loss:sum']!));
      futures.push(fb, pipelined.optimStep({ learningRate: lr }));
    }
    await Promise.all(futures);
    const [first, last] = [await losses[0]!, await losses[9]!];
    assert.ok(last < first / 2, `training moved the weights: loss ${first} → ${last}`);
    const a = await fingerprint(pipelined);

    const awaited = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 1 });
    for (let step = 0; step < 10; step++) {
      await awaited.forwardBackward([DATA[0]!], 'cross_entropy');
      await awaited.optimStep({ learningRate: lr });
    }
    const b = await fingerprint(awaited);

    assert.ok(maxRelDiff(a, b) < 1e-5, `pipelined and awaited differ by ${maxRelDiff(a, b)} (relative)`);
  });

  test('forwardBackwardCustom with a hand-written importance-sampling loss takes the same step as the built-in loss', async () => {
    const reference = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 2 });
    // Sampler logprobs q (a little off the learner's) and per-token advantages.
    const before = await reference.forward(DATA, 'cross_entropy');
    const q = before.lossFnOutputs.map((o) => Float32Array.from(o['logprobs']!.data as Float32Array, (v) => v - 0.1));
    const advantages = DATASET.map((s, d) => Float32Array.from(s.slice(1), (_, i) => ((i + d) % 3) - 1));
    const isData: Datum[] = DATASET.map((s, d) => ({
      modelInput: ModelInput.fromInts(s.slice(0, -1)),
      lossFnInputs: { target_tokens: s.slice(1), logprobs: q[d]!, advantages: advantages[d]! },
    }));
    const builtIn = await reference.forwardBackward(isData, 'importance_sampling');
    await reference.optimStep({ learningRate: 1e-3 });

    const custom = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 2 });
    const targetsOnly: Datum[] = DATASET.map((s) => ({ modelInput: ModelInput.fromInts(s.slice(0, -1)), lossFnInputs: { target_tokens: s.slice(1) } }));
    // loss = -Σ exp(lp - q)·A, so dloss/dlp = -exp(lp - q)·A.
    const out = await custom.forwardBackwardCustom(targetsOnly, (_data, logprobs) => {
      let loss = 0;
      const gradients = logprobs.map((lp, d) =>
        lp.data.map((v, i) => {
          const ratio = Math.exp(v - q[d]![i]!);
          loss -= ratio * advantages[d]![i]!;
          return -ratio * advantages[d]![i]!;
        }),
      );
      return { loss, gradients, metrics: { 'custom_loss:sum': loss } };
    });
    await custom.optimStep({ learningRate: 1e-3 });

    assert.ok(relDiff(out.metrics['custom_loss:sum']!, builtIn.metrics['loss:sum']!) < 1e-4, `${out.metrics['custom_loss:sum']} vs ${builtIn.metrics['loss:sum']}`);
    const [a, b] = [await fingerprint(reference), await fingerprint(custom)];
    const start = before.lossFnOutputs.flatMap((o) => Array.from(o['logprobs']!.data as Float32Array));
    assert.ok(maxAbsDiff(a, start) > 1e-2, 'the step moved the weights');
    assert.ok(maxRelDiff(a, b) < 1e-5, `custom and built-in steps differ by ${maxRelDiff(a, b)} (relative)`);
  });

  test('chunked forwardBackward (server config fwdbwd_max_chunk_len = 2) equals one request', async () => {
    // Same server, but this client is told to send at most 2 datums per request.
    const chunking = new ServiceClient({
      baseUrl,
      apiKey,
      fetch: async (input, init) => {
        const res = await fetch(input, init);
        if (!String(input).endsWith('/client/config')) return res;
        return new Response(JSON.stringify({ ...((await res.json()) as Record<string, unknown>), fwdbwd_max_chunk_len: 2 }), { status: res.status, headers: res.headers });
      },
    });
    try {
      const chunked = await chunking.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 3 });
      const whole = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 3 });
      const a = chunked.forwardBackward(DATA, 'cross_entropy');
      const b = whole.forwardBackward(DATA, 'cross_entropy');
      assert.equal((await a.submitted()).length, 2);
      assert.equal((await b.submitted()).length, 1);
      const [outA, outB] = [await a, await b];
      assert.ok(relDiff(outA.metrics['loss:sum']!, outB.metrics['loss:sum']!) < 1e-5, `${outA.metrics['loss:sum']} vs ${outB.metrics['loss:sum']}`);
      assert.deepEqual(
        outA.lossFnOutputs.map((o) => o['logprobs']!.shape),
        outB.lossFnOutputs.map((o) => o['logprobs']!.shape),
      );
      await Promise.all([chunked.optimStep({ learningRate: 1e-2 }), whole.optimStep({ learningRate: 1e-2 })]);
      const diff = maxRelDiff(await fingerprint(chunked), await fingerprint(whole));
      assert.ok(diff < 1e-4, `chunked and whole differ by ${diff} (relative)`);
    } finally {
      await chunking.close();
    }
  });
});

describe('errors from the server reach the user intact', () => {
  test('submit-time 400s, failed futures with their category, and no stall after a refused request', async () => {
    const unknown = await service.createLoraTrainingClient({ baseModel: 'no/such-model' }).catch((e: unknown) => e);
    assert.ok(unknown instanceof BadRequestError);
    assert.match(unknown.message, /^unknown base model "no\/such-model"; this server serves: .*lathe\/tiny-qwen3/);
    assert.equal(unknown.type, 'unknown_model');

    const training = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 5 });
    const outOfVocab = await training.forwardBackward([sft([1, 2, 999_999])], 'cross_entropy').catch((e: unknown) => e);
    assert.ok(outOfVocab instanceof BadRequestError);
    assert.equal(outOfVocab.message, 'data[0].loss_fn_inputs.target_tokens: token id 999999 at position 1 is outside the vocabulary [0, 151936) of lathe/tiny-qwen3');

    // The worker refuses an RL loss without its inputs: a failed future, category "user".
    const noAdvantages = await training
      .forwardBackward([{ modelInput: ModelInput.fromInts([1, 2]), lossFnInputs: { target_tokens: [2, 3], logprobs: [-1, -1] } }], 'importance_sampling')
      .catch((e: unknown) => e);
    assert.ok(noAdvantages instanceof RequestFailedError, String(noAdvantages));
    assert.equal(noAdvantages.category, 'user');
    assert.match(noAdvantages.message, /advantages/);

    // The run goes on: the refused request did not leave a seq_id gap.
    const step = await training.optimStep({ learningRate: 1e-3 }).result({ timeoutMs: 30_000 });
    assert.equal(typeof step.metrics, 'object');
    const loadSampler = await training.loadStateWithOptimizer(`tinker://${training.modelId}/sampler_weights/none`).catch((e: unknown) => e);
    assert.ok(loadSampler instanceof NotFoundError);
    const out = await training.forwardBackward([{ modelInput: ModelInput.fromInts([1, 2]), lossFnInputs: { target_tokens: TensorData.int64([2, 3]) } }], 'cross_entropy');
    assert.equal(out.lossFnOutputs.length, 1);
  });
});
