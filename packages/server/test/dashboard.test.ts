/**
 * The dashboard's extension endpoints (`/api/v1/lathe/…`) with a real server and worker, on SQLite
 * and (when `LATHE_TEST_DATABASE_URL` is set) PostgreSQL, driven through the SDK's `LatheExtensions`:
 * run summaries, server-recorded points per forward_backward / optim_step, incremental `?after=`,
 * reported metrics rows (validated; another key's run is unknown), and the service view.
 *
 *   scripts/with-postgres.sh node --conditions=lathe-source --import tsx --test packages/server/test/dashboard.test.ts
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InvalidArgumentError, LatheExtensions, ModelInput, NotFoundError, ServiceClient, type TrainingClient } from '@lathe/sdk';
import { createServer, type LatheServer } from '../src/index.js';

const QWEN = 'lathe/tiny-qwen3';
const MODELS = [{ model_name: QWEN, max_context_length: 2048, vocab_size: 151936, architecture: 'qwen3' }];
const PG_URL = process.env['LATHE_TEST_DATABASE_URL'];
const TOKENS = [9707, 1879, 11, 1246, 525, 498];

/** One step on a 5-token datum (tokens[0..4] predicting tokens[1..5]); returns loss:sum. */
async function trainStep(training: TrainingClient): Promise<number> {
  const datum = { modelInput: ModelInput.fromInts(TOKENS.slice(0, -1)), lossFnInputs: { target_tokens: TOKENS.slice(1), weights: [1, 1, 1, 1, 1] } };
  const fb = training.forwardBackward([datum], 'cross_entropy');
  const step = training.optimStep({ learningRate: 0.01 });
  const loss = (await fb).metrics['loss:sum']!;
  await step;
  return loss;
}

const databases: [string, string | undefined][] = [['sqlite', undefined], ['postgres', PG_URL]];

for (const [dialect, databaseUrl] of databases) {
  describe(`dashboard endpoints (${dialect})`, { skip: dialect === 'postgres' && !PG_URL ? 'LATHE_TEST_DATABASE_URL is not set' : false }, () => {
    let server: LatheServer;
    let baseUrl: string;
    let keys: { alice: string; bob: string };
    let service: ServiceClient;
    let training: TrainingClient;
    const losses: number[] = [];

    before(async () => {
      const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-dashboard-'));
      server = await createServer({ dataDir, models: MODELS, ...(databaseUrl ? { databaseUrl } : {}) });
      await server.app.listen({ host: '127.0.0.1', port: 0 });
      const address = server.app.server.address();
      assert.ok(address && typeof address === 'object');
      baseUrl = `http://127.0.0.1:${address.port}`;
      keys = { alice: (await server.services.store.keys.create('alice')).key, bob: (await server.services.store.keys.create('bob')).key };
      service = new ServiceClient({ baseUrl, apiKey: keys.alice, heartbeatIntervalMs: 0 });
      training = await service.createLoraTrainingClient({ baseModel: QWEN, rank: 4, seed: 1 });
      for (let i = 0; i < 3; i++) losses.push(await trainStep(training));
    });

    after(async () => {
      await service?.close();
      await server?.close();
    });

    test('the run list shows steps, tokens trained, last activity and status for the own key only', async () => {
      const { runs } = await new LatheExtensions({ baseUrl, apiKey: keys.alice }).listRuns();
      const run = runs.find((r) => r.modelId === training.modelId);
      assert.ok(run, JSON.stringify(runs));
      assert.deepEqual([run.baseModel, run.loraRank, run.steps, run.tokensTrained], [QWEN, 4, 3, 15]);
      assert.ok(Date.now() - run.lastActivity < 60_000);
      assert.ok(['active', 'training'].includes(run.status), run.status);
      assert.deepEqual((await new LatheExtensions({ baseUrl, apiKey: keys.bob }).listRuns()).runs, []);
    });

    test('metric points are the server-recorded loss per forward_backward and the optim steps, incremental with after', async () => {
      const lathe = new LatheExtensions({ baseUrl, apiKey: keys.alice });
      const first = await lathe.runMetrics(training.modelId);
      const fb = first.points.filter((p) => p.kind === 'forward_backward');
      const optim = first.points.filter((p) => p.kind === 'optim_step');
      assert.deepEqual(fb.map((p) => p.step), [0, 1, 2]);
      assert.deepEqual(optim.map((p) => p.step), [0, 1, 2]);
      fb.forEach((p, i) => assert.ok(Math.abs(p.values['loss:sum']! - losses[i]!) <= 1e-6 * Math.abs(losses[i]!), `${p.values['loss:sum']} vs ${losses[i]}`));
      assert.deepEqual(fb.map((p) => p.tokens), [5, 5, 5]);
      optim.forEach((p) => assert.ok(Math.abs(p.values['learning_rate:mean']! - 0.01) <= 1e-9));
      assert.deepEqual((await lathe.runMetrics(training.modelId, { after: first.cursor })).points, []);

      losses.push(await trainStep(training));
      const next = await lathe.runMetrics(training.modelId, { after: first.cursor });
      assert.deepEqual(next.points.map((p) => [p.kind, p.step]), [['forward_backward', 3], ['optim_step', 3]]);
      assert.ok(next.points.every((p) => p.id > first.cursor));
    });

    test('reported metrics rows appear as client points; a re-sent step replaces; bad rows get a 400 naming the problem', async () => {
      const lathe = new LatheExtensions({ baseUrl, apiKey: keys.alice });
      const { cursor } = await lathe.runMetrics(training.modelId);
      await lathe.reportMetrics(training.modelId, [{ step: 0, metrics: { train_mean_nll: 2.5, 'env/reward': 0.25, skipped: Number.NaN } }, { step: 1, metrics: { train_mean_nll: 2 } }]);
      await lathe.reportMetrics(training.modelId, [{ step: 1, metrics: { train_mean_nll: 1.5 } }]);
      const points = (await lathe.runMetrics(training.modelId, { after: cursor })).points.filter((p) => p.source === 'client');
      const latest = new Map(points.map((p) => [p.step, p.values]));
      assert.deepEqual(latest.get(0), { train_mean_nll: 2.5, 'env/reward': 0.25 });
      assert.deepEqual(latest.get(1), { train_mean_nll: 1.5 });
      const all = (await lathe.runMetrics(training.modelId)).points.filter((p) => p.source === 'client');
      assert.equal(all.length, 2, 'the replaced row is gone');

      const post = (payload: unknown, key = keys.alice) =>
        server.app.inject({ method: 'POST', url: `/api/v1/lathe/runs/${encodeURIComponent(training.modelId)}/metrics`, headers: { 'x-api-key': key }, payload: payload as Record<string, unknown> });
      const nonNumber = await post({ rows: [{ step: 2, metrics: { loss: null } }] });
      assert.equal(nonNumber.statusCode, 400);
      assert.match(nonNumber.json().error.message, /metrics\/loss must be number/);
      const tooMany = await post({ rows: Array.from({ length: 1001 }, (_, step) => ({ step, metrics: {} })) });
      assert.equal(tooMany.statusCode, 400);
      assert.match(tooMany.json().error.message, /rows must NOT have more than 1000 items/);
      const badStep = await post({ rows: [{ step: -1, metrics: {} }] });
      assert.equal(badStep.statusCode, 400);
      assert.equal((await post({ rows: [{ step: 5, metrics: { x: 1 } }] }, keys.bob)).statusCode, 404);
      await assert.rejects(new LatheExtensions({ baseUrl, apiKey: keys.bob }).runMetrics(training.modelId), NotFoundError);
      await assert.rejects(lathe.reportMetrics(training.modelId, [{ step: 1.5, metrics: {} }]), InvalidArgumentError);
    });

    test('the SDK sends many rows in chunks the server takes', async () => {
      const lathe = new LatheExtensions({ baseUrl, apiKey: keys.alice });
      const { cursor } = await lathe.runMetrics(training.modelId);
      await lathe.reportMetrics(training.modelId, Array.from({ length: 2500 }, (_, step) => ({ step: 100 + step, metrics: { reward: step } })));
      const points = (await lathe.runMetrics(training.modelId, { after: cursor })).points;
      assert.deepEqual(points.map((p) => p.step), Array.from({ length: 2500 }, (_, step) => 100 + step));
    });

    test('the service view lists the worker, queue depth and adapters per model, and tokens/s', async () => {
      const status = await new LatheExtensions({ baseUrl, apiKey: keys.alice }).serviceStatus();
      assert.equal(status.workers.length, 1);
      assert.deepEqual(status.workers[0]!.modelsLoaded, [QWEN]);
      const model = status.models.find((m) => m.modelName === QWEN);
      assert.ok(model);
      assert.deepEqual(model.queue, { training: 0, sampling: 0 });
      assert.equal(model.adapters, 1);
      assert.deepEqual(model.yourAdapters, [training.modelId]);
      assert.equal(status.throughput.perMinute.reduce((sum, b) => sum + b.tokens, 0), 20);
      assert.ok(Math.abs(status.throughput.tokensPerSecond - 20 / status.throughput.windowSeconds) < 1e-9);
      const bob = await new LatheExtensions({ baseUrl, apiKey: keys.bob }).serviceStatus();
      assert.deepEqual(bob.models.find((m) => m.modelName === QWEN)?.yourAdapters, []);
    });

    test('the service view counts sampled tokens in tokens/s (anyone\'s: it shows the shared hardware)', async () => {
      const extensions = new LatheExtensions({ baseUrl, apiKey: keys.bob });
      const windowTokens = async (): Promise<number> => (await extensions.serviceStatus()).throughput.perMinute.reduce((sum, b) => sum + b.tokens, 0);
      const before = await windowTokens();
      const sampler = await service.createSamplingClient({ baseModel: QWEN });
      const response = await sampler.sample({ prompt: ModelInput.fromInts(TOKENS), numSamples: 3, samplingParams: { maxTokens: 7, seed: 5 } });
      const generated = response.sequences.reduce((sum, seq) => sum + seq.tokens.length, 0);
      assert.ok(generated >= 3, `sampled ${generated} tokens`);
      // Counted once: a second poll finds the request already counted and adds nothing.
      assert.equal(await windowTokens(), before + generated);
      const status = await extensions.serviceStatus();
      assert.ok(Math.abs(status.throughput.tokensPerSecond - (before + generated) / status.throughput.windowSeconds) < 1e-9);
    });

    test('the dashboard page is served without a key; files outside the build are not', async () => {
      const page = await server.app.inject({ method: 'GET', url: '/' });
      assert.ok([200, 503].includes(page.statusCode), String(page.statusCode));
      assert.match(page.headers['content-type'] as string, /text\/html/);
      const escape = await server.app.inject({ method: 'GET', url: '/static/..%2f..%2fpackage.json' });
      assert.equal(escape.statusCode, 404);
    });
  });
}
