// The SFT loop end to end against a real Lathe server on loopback (real worker, tiny model).
// One server for the file; the uninterrupted run of the first test is the reference of the second.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '@lathe/server';
import { ServiceClient, type Datum, type TensorData } from '@lathe/sdk';
import {
  conversationDatasets,
  datumWeights,
  type DatumDataset,
  loadTokenizer,
  readCheckpoints,
  readConversationsJsonl,
  readMetrics,
  roleColonExample,
  trainSupervised,
  type MetricsRecord,
  type SupervisedConfig,
} from '../src/index.js';

const MODEL = 'lathe/tiny-qwen3';
// Shared with the other packages' tests: the tiny model is materialized here once.
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');

// A tiny conversation set with a shared answer template, so training on some generalises to the rest.
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const CONVERSATIONS = readConversationsJsonl(path.join(REPO, 'examples/data/capitals.jsonl'));
// 10 training conversations in batches of 2 (5 per epoch), 2 held out; 2 epochs = 10 steps.
const STEPS = 10;

let server: LatheServer;
let root: string;
let service: ServiceClient;
let baseUrl: string;
let apiKey: string;
let reference: MetricsRecord[];

const tokenizer = loadTokenizer('qwen3');
const datasets = (): { train: DatumDataset; test: Datum[] } => conversationDatasets(CONVERSATIONS, roleColonExample(tokenizer), { batchSize: 2, testSize: 2, seed: 0 });

function config(logPath: string): SupervisedConfig {
  const { train, test: heldOut } = datasets();
  return {
    service,
    logPath,
    modelName: MODEL,
    dataset: train,
    testData: heldOut,
    loraRank: 8,
    seed: 0,
    learningRate: 2e-2,
    lrSchedule: 'linear',
    numEpochs: 2,
    saveEvery: 3,
    evalEvery: 5,
    console: () => {},
  };
}

const relDiff = (a: number, b: number): number => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);

before(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), 'lathe-cookbook-sft-'));
  server = await createServer({ dataDir: path.join(root, 'server'), modelsDir: MODELS_DIR });
  baseUrl = await server.app.listen({ host: '127.0.0.1', port: 0 });
  apiKey = (await server.services.store.keys.create('cookbook-sft')).key;
  service = new ServiceClient({ baseUrl, apiKey });
});

after(async () => {
  await service?.close();
  await server?.close();
  rmSync(root, { recursive: true, force: true });
});

test('SFT lowers held-out NLL and writes metrics, config and checkpoints', async () => {
  const logPath = path.join(root, 'full');
  const result = await trainSupervised(config(logPath));
  assert.equal(result.interrupted, false);
  assert.equal(result.steps, STEPS);

  reference = readMetrics(logPath);
  assert.deepEqual(reference.map((r) => r.step), [...Array(STEPS + 1).keys()]);
  const steps = reference.slice(0, STEPS);
  for (const [i, r] of steps.entries()) {
    assert.equal(r['progress/batch'], i);
    assert.equal(r['progress/epoch'], Math.floor(i / 5));
    assert.ok(relDiff(r['progress/done_frac']!, (i + 1) / STEPS) < 1e-12);
    assert.ok(relDiff(r['learning_rate']!, 2e-2 * (1 - i / STEPS)) < 1e-12, `linear schedule at step ${i}`);
    assert.equal(r['num_sequences'], 2);
    assert.ok(r['num_loss_tokens']! > 0 && r['num_loss_tokens']! < r['num_tokens']!);
    assert.ok(Number.isFinite(r['train_mean_nll']));
  }
  // Held-out NLL at steps 0 and 5 (before those updates) and after the last step.
  assert.deepEqual(reference.filter((r) => 'test/nll' in r).map((r) => r.step), [0, 5, STEPS]);
  // Bits per byte: the NLL in bits over the weighted mean bytes per loss token of the same data.
  const { train, test: heldOut } = datasets();
  const bytesPerToken = (data: readonly Datum[]): number => {
    const pairs = data.flatMap((d) => datumWeights(d).map((w, i) => [w, tokenizer.byteLength(Number((d.lossFnInputs['target_tokens'] as TensorData).data[i]))] as const));
    return pairs.reduce((n, [w, b]) => n + w * b, 0) / pairs.reduce((n, [w]) => n + w, 0);
  };
  for (const r of reference) {
    if (r.step < STEPS) {
      train.setEpoch(Math.floor(r.step / 5));
      const expected = r['train_mean_nll']! / Math.LN2 / bytesPerToken(train.getBatch(r.step % 5));
      assert.ok(relDiff(r['train_mean_bpb']!, expected) < 1e-9, `step ${r.step} train_mean_bpb ${r['train_mean_bpb']} vs ${expected}`);
    }
    assert.equal('test/bpb' in r, 'test/nll' in r);
    if ('test/nll' in r) assert.ok(relDiff(r['test/bpb']!, r['test/nll']! / Math.LN2 / bytesPerToken(heldOut)) < 1e-9, `step ${r.step} test/bpb`);
  }
  const before = reference[0]!['test/nll']!;
  const afterTraining = reference[STEPS]!['test/nll']!;
  // The tiny model's weights are random: its predictions start far from the data.
  assert.ok(before > 9, `initial held-out NLL ${before}`);
  assert.ok(afterTraining < before * 0.6, `held-out NLL ${before.toFixed(3)} → ${afterTraining.toFixed(3)} dropped by less than 40%`);
  assert.ok(steps.at(-1)!['train_mean_nll']! < steps[0]!['train_mean_nll']! * 0.6);

  const checkpoints = readCheckpoints(logPath);
  assert.deepEqual(checkpoints.map((c) => [c.name, c.step, c.epoch, c.batch, c.final]), [
    ['000003', 3, 0, 3, false],
    ['000006', 6, 1, 1, false],
    ['000009', 9, 1, 4, false],
    ['final', 10, 2, 0, true],
  ]);
  for (const c of checkpoints) {
    assert.match(c.state_path!, new RegExp(`^tinker://.+/weights/${c.name}$`));
    assert.match(c.sampler_path!, new RegExp(`^tinker://.+/sampler_weights/${c.name}$`));
  }
  const savedConfig = JSON.parse(readFileSync(path.join(logPath, 'config.json'), 'utf8')) as Record<string, unknown>;
  assert.equal(savedConfig['modelName'], MODEL);
  assert.equal(savedConfig['totalSteps'], STEPS);
  assert.equal(savedConfig['learningRate'], 2e-2);

  // Running a complete log dir again trains nothing and logs nothing.
  const again = await trainSupervised(config(logPath));
  assert.equal(again.finalCheckpoint?.name, 'final');
  assert.equal(again.steps, STEPS);
  assert.deepEqual(readMetrics(logPath), reference);
  assert.equal(readCheckpoints(logPath).length, checkpoints.length);
  console.log(`held-out NLL ${before.toFixed(3)} → ${afterTraining.toFixed(3)}; train NLL ${steps[0]!['train_mean_nll']!.toFixed(3)} → ${steps.at(-1)!['train_mean_nll']!.toFixed(3)}`);
});

test('an interrupted run resumes from its log dir at the next batch with optimizer state', async () => {
  assert.ok(reference !== undefined, 'needs the uninterrupted run of the previous test');
  const logPath = path.join(root, 'interrupted');
  const stop = new AbortController();
  const first = await trainSupervised({
    ...config(logPath),
    signal: stop.signal,
    onStep: (step) => {
      if (step === 3) stop.abort();
    },
  });
  assert.equal(first.interrupted, true);
  // Step 4 was already submitted (pipelining) when step 3's results came in; it ran and was logged.
  assert.deepEqual(readMetrics(logPath).map((r) => r.step), [0, 1, 2, 3, 4]);
  assert.deepEqual(readCheckpoints(logPath).map((c) => c.step), [3]);
  assert.ok(!readCheckpoints(logPath).some((c) => c.final));

  const resumedSteps: number[] = [];
  const second = await trainSupervised({ ...config(logPath), onStep: (step) => resumedSteps.push(step) });
  assert.equal(second.resumedFrom?.step, 3);
  assert.equal(second.interrupted, false);
  // It picks up at batch 3, redoing the steps logged after the checkpoint, and logs each step once.
  assert.deepEqual(resumedSteps, [3, 4, 5, 6, 7, 8, 9, STEPS]);
  const resumed = readMetrics(logPath);
  assert.deepEqual(resumed.map((r) => r.step), [...Array(STEPS + 1).keys()]);
  assert.deepEqual(readCheckpoints(logPath).map((c) => c.step), [3, 6, 9, STEPS]);
  assert.ok(existsSync(path.join(logPath, 'config.json')));

  // Same weights, optimizer moments and batches as the uninterrupted run, so the same losses
  // (resuming with fresh Adam moments instead is off by about 40% at step 4).
  let worst = 0;
  for (const [i, r] of resumed.entries()) {
    const ref = reference[i]!;
    for (const key of ['train_mean_nll', 'test/nll', 'learning_rate'] as const) {
      assert.equal(key in r, key in ref, `step ${i} ${key} present in one run only`);
      if (!(key in r)) continue;
      worst = Math.max(worst, relDiff(r[key]!, ref[key]!));
      assert.ok(relDiff(r[key]!, ref[key]!) < 1e-3, `step ${i} ${key}: resumed ${r[key]} vs uninterrupted ${ref[key]}`);
    }
  }
  console.log(`resumed vs uninterrupted: largest relative difference ${worst.toExponential(2)}`);
});

/** Runs examples/sft-conversations.ts against the test server; `kill` may end it early. */
function runExample(logPath: string): { exited: Promise<number | null>; output: () => string; kill: () => void } {
  const child = spawn(process.execPath, ['--conditions=lathe-source', '--import', 'tsx', 'examples/sft-conversations.ts'], {
    cwd: REPO,
    env: { ...process.env, LATHE_BASE_URL: baseUrl, LATHE_API_KEY: apiKey, SFT_LOG_DIR: logPath },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return {
    exited: new Promise((resolve) => child.on('close', resolve)),
    output: () => output,
    kill: () => child.kill('SIGKILL'),
  };
}

test('examples/sft-conversations.ts killed mid-run resumes from its log dir and ends as the uninterrupted run', async () => {
  assert.ok(reference !== undefined, 'needs the uninterrupted run of the first test');
  const logPath = path.join(root, 'example');
  const killed = runExample(logPath);
  // Kill the process (no chance to clean up) as soon as its first checkpoint is recorded.
  const deadline = Date.now() + 60_000;
  while (readCheckpoints(logPath).length === 0) {
    assert.ok(Date.now() < deadline, `no checkpoint within 60 s:\n${killed.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  killed.kill();
  await killed.exited;
  const before = readCheckpoints(logPath);
  assert.ok(!before.some((c) => c.final), 'the run finished before it was killed');
  const lastStep = before.at(-1)!.step;

  const resumed = runExample(logPath);
  assert.equal(await resumed.exited, 0, resumed.output());
  assert.match(resumed.output(), /│ train_mean_nll +│/);
  assert.match(resumed.output(), /done: 10 steps; final sampler weights tinker:\/\/.+\/sampler_weights\/final/);
  assert.ok(!resumed.output().includes('step 0 '), `the resumed run started over:\n${resumed.output()}`);
  assert.match(resumed.output(), new RegExp(`step ${lastStep} `));
  // Same settings as the first test, so the same numbers, step by step.
  const metrics = readMetrics(logPath);
  assert.deepEqual(metrics.map((r) => r.step), reference.map((r) => r.step));
  metrics.forEach((r, i) => {
    for (const key of ['train_mean_nll', 'test/nll'] as const) {
      if (key in reference[i]!) assert.ok(relDiff(r[key]!, reference[i]![key]!) < 1e-3, `step ${i} ${key}: ${r[key]} vs ${reference[i]![key]}`);
    }
  });
  // The killed run recorded the first checkpoint(s), the resumed one the rest: each exactly once.
  assert.deepEqual(readCheckpoints(logPath).map((c) => c.name), ['000003', '000006', '000009', 'final']);
});
