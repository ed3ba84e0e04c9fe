// End to end against a real Lathe server on loopback (real worker, tiny model): no mocks. One
// server for the file (fixtures/e2e.ts): checkpoints, sampling and REST (these tests run in order
// and share one run).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BadRequestError, ModelInput, NotFoundError, TensorData, type TrainingClient } from '../src/index.js';
import { DATA, DATASET, fingerprint, maxAbsDiff, maxRelDiff, MODEL, relDiff, service, sft, useE2eServer } from './fixtures/e2e.js';

useE2eServer();

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
