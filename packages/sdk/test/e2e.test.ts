// End to end against a real Lathe server on loopback (real worker, tiny model): no mocks.
// One server for the whole file; tests run in order and share it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { createServer, type LatheServer } from '@lathe/server';
import {
  BadRequestError,
  ModelInput,
  NotFoundError,
  RequestFailedError,
  ServiceClient,
  TensorData,
  type Datum,
  type TrainingClient,
} from '../src/index.js';

const MODEL = 'lathe/tiny-qwen3';
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
// Shared across runs: the tiny model is materialized here once.
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
// A fixed "dataset": token sequences from the Qwen3 vocabulary.
const DATASET = [
  [9707, 1879, 11, 1246, 525, 498, 30],
  [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13],
  [40, 1075, 311, 3270, 2038, 13],
];

/** input = seq[:-1], targets = seq[1:], every position weighted. */
const sft = (seq: number[]): Datum => ({
  modelInput: ModelInput.fromInts(seq.slice(0, -1)),
  lossFnInputs: { target_tokens: seq.slice(1), weights: seq.slice(1).map(() => 1) },
});
const DATA = DATASET.map(sft);

/** The model's logprobs of the dataset: a fingerprint of the adapter's weights. */
async function fingerprint(training: TrainingClient): Promise<number[]> {
  const out = await training.forward(DATA, 'cross_entropy');
  return out.lossFnOutputs.flatMap((o) => Array.from(o['logprobs']!.data as Float32Array));
}

function maxAbsDiff(a: number[], b: number[]): number {
  assert.equal(a.length, b.length);
  return a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
}

/**
 * {@link maxAbsDiff} relative to the largest |b|: two ways of computing the same numbers differ by
 * float32 rounding that grows with their size (and with the CPU's kernels), so equality is judged
 * relative to magnitude.
 */
function maxRelDiff(a: number[], b: number[]): number {
  const scale = b.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  return maxAbsDiff(a, b) / (scale || 1);
}

/** |a - b| relative to |b| (a loss sum, say). */
function relDiff(a: number, b: number): number {
  return Math.abs(a - b) / (Math.abs(b) || 1);
}

let server: LatheServer;
let dataDir: string;
let baseUrl: string;
let apiKey: string;
let service: ServiceClient;

before(async () => {
  dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-sdk-e2e-'));
  server = await createServer({ dataDir, modelsDir: MODELS_DIR });
  const address = await server.app.listen({ host: '127.0.0.1', port: 0 });
  baseUrl = address;
  apiKey = (await server.services.store.keys.create('sdk-e2e')).key;
  service = new ServiceClient({ baseUrl, apiKey });
});

after(async () => {
  await service?.close();
  await server?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

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

describe('checkpoints, sampling and REST', () => {
  let run: TrainingClient;
  let statePath: string;
  let samplerPath: string;

  test('save/load state round trip, and new runs from the state (with and without optimizer)', async () => {
    run = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 4 });
    run.forwardBackward(DATA, 'cross_entropy');
    run.optimStep({ learningRate: 1e-2 });
    const saved = await run.saveState('one-step', { ttlSeconds: 3600 });
    statePath = saved.path;
    assert.equal(statePath, `tinker://${run.modelId}/weights/one-step`);
    const atSave = await fingerprint(run);

    await run.forwardBackward(DATA, 'cross_entropy');
    await run.optimStep({ learningRate: 1e-2 });
    const moved = await fingerprint(run);
    assert.ok(maxAbsDiff(moved, atSave) > 1e-2);

    const loaded = await run.loadState(statePath);
    assert.equal(loaded.path, statePath);
    assert.ok(maxRelDiff(await fingerprint(run), atSave) < 1e-6, 'loadState restores the weights');

    const restored = await service.createTrainingClientFromState(statePath);
    assert.notEqual(restored.modelId, run.modelId);
    assert.equal((await restored.getInfo()).loraRank, 8);
    assert.ok(maxRelDiff(await fingerprint(restored), atSave) < 1e-6);

    // With the optimizer state, the next step is the one the original would take (Adam moments included).
    const resumed = await service.createTrainingClientFromStateWithOptimizer(statePath);
    await run.loadStateWithOptimizer(statePath);
    for (const client of [run, resumed]) {
      await client.forwardBackward(DATA, 'cross_entropy');
      await client.optimStep({ learningRate: 1e-2 });
    }
    const [x, y] = [await fingerprint(run), await fingerprint(resumed)];
    assert.ok(maxRelDiff(x, y) < 1e-5, `resumed run differs by ${maxRelDiff(x, y)} (relative)`);
    // ...and differs from a resume that dropped the moments.
    await restored.forwardBackward(DATA, 'cross_entropy');
    await restored.optimStep({ learningRate: 1e-2 });
    assert.ok(maxAbsDiff(x, await fingerprint(restored)) > 1e-4, 'optimizer state made a difference');
  });

  test('sampling: saved weights reach the sampler; seeds are reproducible; prompt logprobs', async () => {
    const saved = await run.saveWeightsForSampler('final');
    samplerPath = saved.path;
    assert.equal(samplerPath, `tinker://${run.modelId}/sampler_weights/final`);
    const sampler = await service.createSamplingClient({ modelPath: samplerPath });
    assert.equal(await sampler.getBaseModel(), MODEL);

    // The sampler's logprobs of a sequence are the training run's.
    const seq = DATASET[1]!;
    const fromSampler = await sampler.computeLogprobs(ModelInput.fromInts(seq));
    assert.equal(fromSampler.length, seq.length);
    assert.equal(fromSampler[0], null);
    const fromTraining = (await run.forward([sft(seq)], 'cross_entropy')).lossFnOutputs[0]!['logprobs']!;
    assert.ok(maxRelDiff(fromSampler.slice(1) as number[], Array.from(fromTraining.data as Float32Array)) < 1e-4);

    const prompt = ModelInput.fromInts(DATASET[0]!.slice(0, 3));
    const args = { prompt, numSamples: 3, samplingParams: { maxTokens: 8, temperature: 1, seed: 1234 } };
    const [first, second] = await Promise.all([sampler.sample(args), sampler.sample(args)]);
    assert.equal(first.sequences.length, 3);
    for (const s of first.sequences) {
      assert.equal(s.tokens.length, 8);
      assert.equal(s.logprobs?.length, 8);
      assert.equal(s.stopReason, 'length');
    }
    assert.deepEqual(
      first.sequences.map((s) => [s.tokens, s.logprobs]),
      second.sequences.map((s) => [s.tokens, s.logprobs]),
    );
    const other = await sampler.sample({ ...args, samplingParams: { ...args.samplingParams, seed: 99 } });
    assert.notDeepEqual(
      other.sequences.map((s) => s.tokens),
      first.sequences.map((s) => s.tokens),
    );
    // The whole seed reaches the generator: one 2^32 apart is another draw (JSON, msgpack and the
    // worker keep every bit below 2^53).
    const high = await sampler.sample({ ...args, samplingParams: { ...args.samplingParams, seed: 1234 + 2 ** 32 } });
    assert.notDeepEqual(
      high.sequences.map((s) => s.tokens),
      first.sequences.map((s) => s.tokens),
    );

    const withPrompt = await sampler.sample({ prompt, numSamples: 1, samplingParams: { maxTokens: 2, seed: 1 }, includePromptLogprobs: true, topkPromptLogprobs: 3 });
    assert.equal(withPrompt.promptLogprobs?.length, 3);
    assert.equal(withPrompt.promptLogprobs?.[0], null);
    assert.equal(withPrompt.topkPromptLogprobs?.length, 3);
    assert.equal(withPrompt.topkPromptLogprobs?.[1]?.length, 3);

    // A stop token ends the sequence and is included.
    const greedy = await sampler.sample({ prompt, samplingParams: { maxTokens: 8, temperature: 0 } });
    const stopAt = greedy.sequences[0]!.tokens[1]!;
    const stopped = await sampler.sample({ prompt, samplingParams: { maxTokens: 8, temperature: 0, stop: [stopAt] } });
    assert.equal(stopped.sequences[0]!.stopReason, 'stop');
    assert.equal(stopped.sequences[0]!.tokens.at(-1), stopAt);

    // The quick path: unnamed weights and a sampler in one call; base-model sampling.
    const quick = await run.saveWeightsAndGetSamplingClient();
    const fromQuick = await quick.computeLogprobs(ModelInput.fromInts(seq));
    assert.ok(maxRelDiff(fromQuick.slice(1) as number[], fromSampler.slice(1) as number[]) < 1e-6);
    const base = await service.createSamplingClient({ baseModel: MODEL });
    const baseLogprobs = await base.computeLogprobs(ModelInput.fromInts(seq));
    assert.ok(maxAbsDiff(baseLogprobs.slice(1) as number[], fromSampler.slice(1) as number[]) > 1e-2, 'the base model is not the tuned one');
  });

  test('sampling extras: sampled top-k, target prompt logprobs and alternative prompt tokens agree with the plain logprobs', async () => {
    const sampler = await service.createSamplingClient({ baseModel: MODEL });
    const tokens = DATASET[1]!.slice(0, 6);
    const prompt = ModelInput.fromInts(tokens);
    const greedy = { maxTokens: 3, temperature: 0 };
    const plain = await sampler.sample({ prompt, samplingParams: greedy, includePromptLogprobs: true, topkPromptLogprobs: 2 });
    // Column 0: the real next token; column 1: nothing, except the top-1 id at position 2.
    const top = plain.topkPromptLogprobs!;
    const ids = tokens.slice(1).flatMap((next, i) => [next, i === 1 ? top[2]![0]![0] : -1]);
    const res = await sampler.sample({
      prompt,
      samplingParams: greedy,
      topkSampleLogprobs: 2,
      promptAltTokensK: 3,
      targetPromptLogprobs: TensorData.int64(ids, [5, 2]),
    });
    const close = (a: number, b: number) => relDiff(a, b) < 1e-3;
    const target = res.targetPromptLogprobs!;
    assert.deepEqual(target.shape, [5, 2]);
    for (let i = 0; i < 5; i++) {
      assert.ok(close(target.data[i * 2]!, plain.promptLogprobs![i + 1]!), `position ${i + 1}`);
      if (i === 1) assert.ok(close(target.data[i * 2 + 1]!, top[2]![0]![1]));
      else assert.ok(Number.isNaN(target.data[i * 2 + 1]!));
    }
    // Greedy draws and greedy tokens are the top-1 choice, with its logprob.
    const alt = res.promptAltTokens!;
    assert.deepEqual([alt.tokens.shape, alt.logprobs.shape], [[5, 3], [5, 3]]);
    for (let i = 0; i < 5; i++) {
      const [bestId, bestLp] = top[i + 1]![0]!;
      assert.deepEqual(Array.from(alt.tokens.data.subarray(i * 3, i * 3 + 3), Number), [bestId, bestId, bestId]);
      assert.ok(close(alt.logprobs.data[i * 3]!, bestLp));
    }
    const [seq] = res.sequences;
    assert.deepEqual(seq!.tokens, plain.sequences[0]!.tokens);
    assert.equal(seq!.topkLogprobs?.length, 3);
    seq!.topkLogprobs!.forEach((row, j) => {
      assert.equal(row?.[0]?.[0], seq!.tokens[j]);
      assert.ok(close(row![0]![1], seq!.logprobs![j]!) && row![0]![1] >= row![1]![1]);
    });
    // Not asked for, not there.
    assert.equal(plain.targetPromptLogprobs, undefined);
    assert.equal(plain.sequences[0]!.topkLogprobs, undefined);
    await assert.rejects(async () => sampler.sample({ prompt, targetPromptLogprobs: TensorData.int64([5, 6], [2, 1]) }), (e: unknown) => e instanceof BadRequestError && /target_prompt_logprobs/.test(e.message));
  });

  test('REST: the run, its checkpoints, TTL, publish, archive, sessions, samplers, delete', async () => {
    const rest = service.createRestClient();
    const { trainingRuns, cursor } = await rest.listTrainingRuns({ limit: 100 });
    assert.ok(trainingRuns.some((r) => r.trainingRunId === run.modelId));
    assert.ok(cursor.totalCount >= trainingRuns.length);
    const ids: string[] = [];
    for await (const r of rest.iterTrainingRuns({ limit: 2 })) ids.push(r.trainingRunId);
    assert.equal(ids.length, cursor.totalCount);

    const detail = await rest.getTrainingRun(run.modelId);
    assert.equal(detail.baseModel, MODEL);
    assert.equal(detail.loraRank, 8);
    assert.equal(detail.lastCheckpoint?.tinkerPath, statePath);
    assert.equal(detail.lastSamplerCheckpoint?.tinkerPath, samplerPath);
    assert.equal((await rest.getTrainingRunByTinkerPath(statePath)).trainingRunId, run.modelId);

    const { checkpoints } = await rest.listCheckpoints(run.modelId);
    const byId = Object.fromEntries(checkpoints.map((c) => [c.checkpointId, c]));
    assert.equal(byId['weights/one-step']?.checkpointType, 'training');
    assert.ok(byId['weights/one-step']?.expiresAt, 'saved with a TTL');
    assert.equal(byId['sampler_weights/final']?.checkpointType, 'sampler');
    assert.ok((byId['sampler_weights/final']?.sizeBytes ?? 0) > 0);

    const mine = [];
    for await (const c of rest.iterUserCheckpoints({ limit: 2 })) mine.push(c.tinkerPath);
    assert.ok(mine.includes(statePath) && mine.includes(samplerPath));

    const info = await rest.getWeightsInfoByTinkerPath(statePath);
    assert.deepEqual(info, { baseModel: MODEL, isLora: true, loraRank: 8, trainUnembed: true, trainMlp: true, trainAttn: true, optimizerConfig: { type: 'adamw' } });

    await rest.setCheckpointTtlFromTinkerPath(statePath, null);
    await rest.publishCheckpointFromTinkerPath(samplerPath);
    let listed = (await rest.listCheckpoints(run.modelId)).checkpoints;
    assert.equal(listed.find((c) => c.tinkerPath === statePath)?.expiresAt, undefined);
    assert.equal(listed.find((c) => c.tinkerPath === samplerPath)?.public, true);
    await rest.unpublishCheckpointFromTinkerPath(samplerPath);
    await rest.setCheckpointTtlFromTinkerPath(statePath, 7200);
    listed = (await rest.listCheckpoints(run.modelId)).checkpoints;
    assert.equal(listed.find((c) => c.tinkerPath === samplerPath)?.public, false);
    assert.ok(listed.find((c) => c.tinkerPath === statePath)?.expiresAt);

    const archive = await rest.getCheckpointArchiveUrlFromTinkerPath(samplerPath);
    assert.ok(Date.parse(archive.expires) > Date.now());
    const tar = await fetch(archive.url);
    assert.equal(tar.status, 200);
    const tarBytes = new Uint8Array(await tar.arrayBuffer());
    assert.ok(new TextDecoder().decode(tarBytes.subarray(0, 512)).includes('adapter'), 'a tar of the PEFT adapter');

    const session = await rest.getSession(service.sessionId!);
    assert.ok(session.trainingRunIds.includes(run.modelId));
    assert.ok(session.samplerIds.length > 0);
    assert.ok((await rest.listSessions({ limit: 100 })).sessions.includes(service.sessionId!));
    const sampler = await rest.getSampler(session.samplerIds[0]!);
    assert.equal(sampler.baseModel, MODEL);

    await rest.deleteCheckpointFromTinkerPath(samplerPath);
    assert.ok(!(await rest.listCheckpoints(run.modelId)).checkpoints.some((c) => c.tinkerPath === samplerPath));
    const missing = await rest.getTrainingRun('no-such-run').catch((e: unknown) => e);
    assert.ok(missing instanceof NotFoundError);
    assert.equal(missing.message, 'training run "no-such-run" not found');
  });
});

describe('the newest SDK features (Tinker 0.26 to 0.39)', () => {
  test('Dimuon: created, stepped, saved, copied and resumed exactly with its optimizer', async () => {
    const dimuon = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 4, seed: 3, optimizerConfig: { type: 'dimuon' } });
    const start = await dimuon.forward(DATA, 'cross_entropy');
    for (let i = 0; i < 3; i++) {
      await dimuon.forwardBackward(DATA, 'cross_entropy');
      await dimuon.optimStep({ type: 'dimuon', learningRate: 0.02, beta1: 0.9, gradClipNorm: 0 });
    }
    assert.ok((await dimuon.forward(DATA, 'cross_entropy')).metrics['loss:sum']! < start.metrics['loss:sum']!);
    // AdamW parameters do not apply to a Dimuon run: a 400 naming the field, and the run goes on.
    await assert.rejects(async () => dimuon.optimStep({ learningRate: 1e-3 }), (e: unknown) => e instanceof BadRequestError && /^adam_params/.test(e.message));
    const { path } = await dimuon.saveState('dimuon', { userMetadata: { kind: 'dimuon' } });
    const rest = service.createRestClient();
    assert.deepEqual((await rest.getWeightsInfoByTinkerPath(path)).optimizerConfig, { type: 'dimuon', version: 1 });
    const listed = (await rest.listCheckpoints(dimuon.modelId)).checkpoints.find((c) => c.tinkerPath === path);
    assert.deepEqual(listed?.userMetadata, { kind: 'dimuon' });

    // The copy resumes like the original (createTrainingClientFromState* picks the optimizer up).
    const { tinkerPath } = await service.copyWeights(path, { ttlSeconds: 3600 });
    assert.notEqual(tinkerPath, path);
    const resumed = await service.createTrainingClientFromStateWithOptimizer(tinkerPath);
    for (const run of [dimuon, resumed]) {
      await run.forwardBackward(DATA, 'cross_entropy');
      await run.optimStep({ type: 'dimuon', learningRate: 0.02 });
    }
    assert.ok(maxRelDiff(await fingerprint(resumed), await fingerprint(dimuon)) < 1e-5);
    const adam = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 4 });
    await assert.rejects(async () => adam.loadState(path, { optimizerConfig: { type: 'dimuon' } }), (e: unknown) => e instanceof BadRequestError && /^optimizer_config/.test(e.message));
    await adam.loadState(path, { optimizerConfig: { type: 'adamw' } });
  });

  test('saveWeightsExternal: a PEFT adapter by signed URLs; storage usage counts it', async () => {
    const training = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 4 });
    const rest = service.createRestClient();
    const before = await rest.getCurrentCheckpointStorageUsage();
    const saved = await training.saveWeightsExternal('hf', { ttlSeconds: 3600 });
    assert.equal(saved.path, `tinker://${training.modelId}/external_weights/hf`);
    assert.ok(saved.sizeBytes !== undefined && saved.sizeBytes > 0);
    const after = await rest.getCurrentCheckpointStorageUsage();
    assert.deepEqual(after, { checkpointCount: before.checkpointCount + 1, sizeBytes: before.sizeBytes + saved.sizeBytes });
    const { urls, expires } = await rest.getExternalWeightsUrls(saved.path);
    assert.ok(Date.parse(expires) > Date.now());
    assert.deepEqual(Object.keys(urls).sort(), ['adapter_config.json', 'adapter_model.safetensors']);
    const config = (await (await fetch(urls['adapter_config.json']!)).json()) as { r: number; peft_type: string };
    assert.equal(config.r, 4);
    assert.equal(config.peft_type, 'LORA');
    const weights = await fetch(urls['adapter_model.safetensors']!);
    assert.equal(weights.status, 200);
    // safetensors: an 8-byte header length, then a JSON header naming every tensor.
    const bytes = new Uint8Array(await weights.arrayBuffer());
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength))) as Record<string, { shape: number[] }>;
    assert.deepEqual(header['base_model.model.lm_head.lora_A.weight']?.shape[0], 4);
    assert.equal((await rest.listCheckpoints(training.modelId)).checkpoints.find((c) => c.tinkerPath === saved.path)?.checkpointType, 'external');
  });

  test('finish: the session keeps its metadata, is finished with a reason, and heartbeats get 410', async () => {
    const own = new ServiceClient({ baseUrl, apiKey, userMetadata: { team: 'sdk' }, heartbeatIntervalMs: 0 });
    await own.createSamplingClient({ baseModel: MODEL });
    const sessionId = own.sessionId!;
    assert.deepEqual((await own.createRestClient().getSession(sessionId)).userMetadata, { team: 'sdk' });
    await own.finish('interrupted', 'stopped by the test');
    const beat = await fetch(`${baseUrl}/api/v1/session_heartbeat`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': apiKey },
      body: JSON.stringify({ session_id: sessionId, type: 'session_heartbeat' }),
    });
    assert.equal(beat.status, 410);
    await own.close(); // finishing twice does nothing
    await assert.rejects(async () => own.createSamplingClient({ baseModel: MODEL }), /closed/);
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

describe('examples', () => {
  test('examples/hello-lathe.ts trains the tiny model and samples from it', async () => {
    const child = spawn(process.execPath, ['--conditions=lathe-source', '--import', 'tsx', 'examples/hello-lathe.ts'], {
      cwd: REPO,
      env: { ...process.env, LATHE_BASE_URL: baseUrl, LATHE_API_KEY: apiKey, HELLO_STEPS: '3' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 0, output);
    const losses = [...output.matchAll(/loss (\d+\.\d+)/g)].map((m) => Number(m[1]));
    assert.equal(losses.length, 3, output);
    assert.ok(losses.at(-1)! < losses[0]!, output);
    assert.match(output, /sample: ".*" \((stop|length)\)/);
  });
});
