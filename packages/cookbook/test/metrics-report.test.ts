// MetricsLogger's dashboard reporting through a training loop's `reportMetrics` option, against a
// real Lathe server (real worker, tiny model): every metrics.jsonl row reaches the run's dashboard
// curves; an unreachable server costs a warning, never the training.
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '@lathe/server';
import { LatheExtensions, ServiceClient } from '@lathe/sdk';
import { conversationDatasets, loadTokenizer, MetricsLogger, readConversationsJsonl, readMetrics, roleColonExample, trainSupervised, type SupervisedConfig } from '../src/index.js';

const MODEL = 'lathe/tiny-qwen3';
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const CONVERSATIONS = readConversationsJsonl(path.join(REPO, 'examples/data/capitals.jsonl'));

let server: LatheServer;
let root: string;
let service: ServiceClient;
let baseUrl: string;
let apiKey: string;

function config(logPath: string, reportMetrics: LatheExtensions): SupervisedConfig {
  const { train } = conversationDatasets(CONVERSATIONS, roleColonExample(loadTokenizer('qwen3')), { batchSize: 1, testSize: 0, seed: 0 });
  return { service, logPath, modelName: MODEL, dataset: train, loraRank: 4, seed: 0, learningRate: 1e-2, maxSteps: 2, saveEvery: 0, evalEvery: 0, console: () => {}, reportMetrics };
}

/** A loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const probe = createHttpServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

before(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), 'lathe-cookbook-report-'));
  server = await createServer({ dataDir: path.join(root, 'server'), modelsDir: MODELS_DIR });
  baseUrl = await server.app.listen({ host: '127.0.0.1', port: 0 });
  apiKey = (await server.services.store.keys.create('cookbook-report')).key;
  service = new ServiceClient({ baseUrl, apiKey });
});

after(async () => {
  await service?.close();
  await server?.close();
  rmSync(root, { recursive: true, force: true });
});

test('with reportMetrics, every metrics.jsonl row of an SFT run reaches its dashboard curves', async () => {
  const lathe = new LatheExtensions({ baseUrl, apiKey });
  const logPath = path.join(root, 'sft');
  const result = await trainSupervised(config(logPath, lathe));
  const logged = readMetrics(logPath);
  assert.ok(logged.length >= 2, JSON.stringify(logged));
  // Reports run in the background; poll the server until the last row is there.
  const deadline = Date.now() + 30_000;
  let reported: Map<number, Record<string, number>> = new Map();
  while (reported.size < logged.length && Date.now() < deadline) {
    const { points } = await lathe.runMetrics(result.training.modelId);
    reported = new Map(points.filter((p) => p.source === 'client').map((p) => [p.step, p.values]));
    if (reported.size < logged.length) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  for (const { step, ...metrics } of logged) {
    const values = reported.get(step);
    assert.ok(values, `step ${step} was not reported`);
    for (const [name, value] of Object.entries(metrics)) assert.ok(Math.abs(values[name]! - value) <= 1e-12 * Math.max(1, Math.abs(value)), `${name} at step ${step}`);
  }
});

test('an unreachable dashboard costs one warning and never stops the logger', async () => {
  const errors: unknown[] = [];
  const unreachable = new LatheExtensions({ baseUrl: `http://127.0.0.1:${await closedPort()}`, apiKey, maxRetries: 0 });
  const logger = new MetricsLogger(path.join(root, 'unreachable'), { console: () => {}, report: { to: unreachable, modelId: () => 'some-run', onError: (error) => errors.push(error) } });
  logger.logMetrics(0, { train_mean_nll: 1 });
  logger.logMetrics(1, { train_mean_nll: 0.5 });
  await logger.flushReports();
  assert.equal(errors.length, 2);
  assert.match(String(errors[0]), /Connection error/);
  assert.deepEqual(readMetrics(path.join(root, 'unreachable')).map((r) => r.step), [0, 1]);
});
