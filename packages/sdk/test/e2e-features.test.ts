// End to end against a real Lathe server on loopback (real worker, tiny model): no mocks. One
// server for the file (fixtures/e2e.ts): the newest SDK features (Tinker 0.26 to 0.39) and the
// hello-lathe example.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, test } from 'node:test';
import { BadRequestError, ServiceClient } from '../src/index.js';
import { apiKey, baseUrl, DATA, fingerprint, maxRelDiff, MODEL, REPO, service, useE2eServer } from './fixtures/e2e.js';

useE2eServer();

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
