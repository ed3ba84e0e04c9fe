// DPO: the loss and its gradient against hand-computed numbers, and the trainer end to end against
// a real Lathe server on loopback (real worker, tiny random-weight model).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '@lathe/server';
import { ModelInput, ServiceClient, TensorData, type Datum } from '@lathe/sdk';
import {
  answerFormatPairs,
  dpoLoss,
  loadTokenizer,
  parsePreferencePairsJsonl,
  preferenceDatasets,
  readCheckpoints,
  readMetrics,
  roleColonExample,
  trainDPO,
  type DpoConfig,
  type MetricsRecord,
} from '../src/index.js';

const MODEL = 'lathe/tiny-qwen3';
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const relDiff = (a: number, b: number): number => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);

function maskDatum(weights: number[]): Datum {
  return {
    modelInput: ModelInput.fromInts(weights.map((_, i) => i + 1)),
    lossFnInputs: { target_tokens: TensorData.int64(weights.map((_, i) => i + 2)), weights: TensorData.float32(weights) },
  };
}

test('dpoLoss matches hand-computed loss, metrics and gradient', () => {
  // Pair 0: chosen Δ = (−1 − −2) + (−1 − −1) = 1 (first token masked out), rejected Δ = (−3 − −2) = −1.
  // Pair 1: chosen Δ = −0.5, rejected Δ = 0.5.
  const data = [maskDatum([0, 1, 1]), maskDatum([1, 0]), maskDatum([1]), maskDatum([1])];
  const logprobs = [[-9, -1, -1], [-3, -5], [-2.5], [-1.5]];
  const reference = [[-4, -2, -1], [-2, -7], [-2], [-2]];
  const beta = 0.5;
  const { loss, gradients, metrics } = dpoLoss(data, logprobs, reference, beta);
  const z = [beta * (1 - -1), beta * (-0.5 - 0.5)]; // [1, −0.5]
  const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));
  const expectedLoss = (-Math.log(sigmoid(z[0]!)) - Math.log(sigmoid(z[1]!))) / 2;
  assert.ok(relDiff(loss, expectedLoss) < 1e-12, `loss ${loss} vs ${expectedLoss}`);
  assert.ok(relDiff(metrics.dpo_loss, expectedLoss) < 1e-12);
  assert.equal(metrics.accuracy, 0.5);
  assert.ok(relDiff(metrics.margin, (1 - 0.5) / 2) < 1e-12);
  assert.ok(relDiff(metrics.chosen_reward, (0.5 - 0.25) / 2) < 1e-12);
  assert.ok(relDiff(metrics.rejected_reward, (-0.5 + 0.25) / 2) < 1e-12);
  // ∂L/∂lp = ∓ β σ(−z) w / pairs.
  const g0 = (beta * sigmoid(-z[0]!)) / 2;
  const g1 = (beta * sigmoid(-z[1]!)) / 2;
  const expected = [[0, -g0, -g0], [g0, 0], [-g1], [g1]];
  gradients.forEach((g, i) => {
    const values = Array.from(g as Float32Array);
    assert.equal(values.length, expected[i]!.length);
    values.forEach((v, t) => assert.ok(Math.abs(v - expected[i]![t]!) < 1e-7, `gradient [${i}][${t}] = ${v}, expected ${expected[i]![t]}`));
  });
  // And the gradient is the loss's: central finite differences.
  const h = 1e-6;
  for (const [i, t] of [[0, 1], [1, 0], [2, 0], [3, 0]] as const) {
    const bumped = (d: number): number => dpoLoss(data, logprobs.map((lp, j) => lp.map((v, s) => (j === i && s === t ? v + d : v))), reference, beta).loss;
    const numeric = (bumped(h) - bumped(-h)) / (2 * h);
    assert.ok(relDiff(Number((gradients[i] as Float32Array)[t]), numeric) < 1e-5, `finite difference at [${i}][${t}]`);
  }
});

test('dpoLoss rejects unpaired batches, misaligned logprobs and a non-positive beta', () => {
  assert.throws(() => dpoLoss([maskDatum([1])], [[-1]], [[-1]], 0.1), /pairs/);
  assert.throws(() => dpoLoss([maskDatum([1]), maskDatum([1])], [[-1, -2], [-1]], [[-1], [-1]], 0.1), /datum 0/);
  assert.throws(() => dpoLoss([maskDatum([1]), maskDatum([1])], [[-1], [-1]], [[-1], [-1]], 0), /beta/);
});

test('preference batches keep each chosen datum next to its rejected one across shuffles', () => {
  const tokenizer = loadTokenizer('qwen3');
  const { train, test: heldOut } = preferenceDatasets(answerFormatPairs(12), roleColonExample(tokenizer), { batchSize: 3, testSize: 2, seed: 1 });
  assert.equal(train.length, 3);
  assert.equal(heldOut.length, 4);
  for (const epoch of [0, 1]) {
    train.setEpoch(epoch);
    for (let b = 0; b < train.length; b++) {
      const batch = train.getBatch(b);
      assert.equal(batch.length, 6);
      for (let p = 0; p < 3; p++) {
        const chosen = tokenizer.decode(batch[2 * p]!.modelInput.toInts());
        const rejected = tokenizer.decode(batch[2 * p + 1]!.modelInput.toInts());
        const question = (text: string): string => text.split('\n\n')[0]!;
        assert.equal(question(chosen), question(rejected));
        assert.match(chosen, /The answer is/);
        assert.doesNotMatch(rejected, /The answer is/);
      }
    }
  }
});

test('preference pairs are read from JSONL; a malformed line is an error naming it', () => {
  const turn = (role: string, content: string): { role: string; content: string } => ({ role, content });
  const pair = { chosen: [turn('user', '1+1?'), turn('assistant', 'The answer is 2.')], rejected: [turn('user', '1+1?'), turn('assistant', '2')] };
  assert.deepEqual(parsePreferencePairsJsonl(`${JSON.stringify(pair)}\n\n${JSON.stringify(pair)}\n`, 'pairs.jsonl'), [pair, pair]);
  assert.throws(() => parsePreferencePairsJsonl(`${JSON.stringify(pair)}\n{"chosen": []}\n`, 'pairs.jsonl'), /^TypeError: pairs\.jsonl line 2: expected an object with "chosen" and "rejected" message arrays$/);
  assert.throws(() => parsePreferencePairsJsonl('{"chosen": [{"role": "user"}], "rejected": []}', 'pairs.jsonl'), /pairs\.jsonl line 1 "chosen": message 0 needs string "role" and "content"/);
  assert.throws(() => parsePreferencePairsJsonl('{"chosen":', 'pairs.jsonl'), /pairs\.jsonl line 1: not JSON/);
});

let server: LatheServer;
let root: string;
let service: ServiceClient;

before(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), 'lathe-cookbook-dpo-'));
  server = await createServer({ dataDir: path.join(root, 'server'), modelsDir: MODELS_DIR });
  const baseUrl = await server.app.listen({ host: '127.0.0.1', port: 0 });
  const apiKey = (await server.services.store.keys.create('cookbook-dpo')).key;
  service = new ServiceClient({ baseUrl, apiKey });
});

after(async () => {
  await service?.close();
  await server?.close();
  rmSync(root, { recursive: true, force: true });
});

/** The settings of the uninterrupted run; the resume test repeats them. */
function dpoConfig(logPath: string): DpoConfig {
  const { train, test: heldOut } = preferenceDatasets(answerFormatPairs(20), roleColonExample(loadTokenizer('qwen3')), { batchSize: 4, testSize: 4, seed: 0 });
  return {
    service, logPath, modelName: MODEL, dataset: train, testData: heldOut,
    beta: 0.1, loraRank: 8, seed: 0, learningRate: 1e-2, lrSchedule: 'constant', numEpochs: 2, maxSteps: STEPS, evalEvery: 0, console: () => {},
  };
}
const STEPS = 6;
// The metrics of the first run, which the resumed run of the next test must reproduce.
let uninterrupted: MetricsRecord[] | undefined;

test('DPO raises held-out preference accuracy and margin', async () => {
  const logPath = path.join(root, 'dpo');
  const steps = STEPS;
  const result = await trainDPO(dpoConfig(logPath));
  assert.equal(result.steps, steps);
  const records = readMetrics(logPath);
  uninterrupted = records;
  assert.deepEqual(records.map((r) => r.step), [...Array(steps + 1).keys()]);
  for (const r of records.slice(0, steps)) {
    for (const key of ['dpo_loss', 'accuracy', 'margin', 'chosen_reward', 'rejected_reward', 'learning_rate']) assert.ok(Number.isFinite(r[key]), `${key} at step ${r.step}`);
    assert.ok(relDiff(r['margin']!, r['chosen_reward']! - r['rejected_reward']!) < 1e-9);
    assert.equal(r['num_pairs'], 4);
  }
  const first = records[0]!;
  const last = records[steps]!;
  // Before any update the policy is its reference: every implicit reward is ~0 and the loss is log 2.
  assert.ok(Math.abs(first['test/margin']!) < 1e-2, `initial held-out margin ${first['test/margin']}`);
  assert.ok(relDiff(first['test/dpo_loss']!, Math.LN2) < 1e-2);
  // After 6 steps (measured: margin 0 → 11.3, loss 0.693 → 1.3e-5) every held-out pair prefers the
  // sentence answer by a wide margin. (The initial accuracy is a coin toss on margins of ~1e-20.)
  assert.equal(last['test/accuracy'], 1, `held-out accuracy ${first['test/accuracy']} → ${last['test/accuracy']}`);
  assert.ok(last['test/margin']! - first['test/margin']! > 5, `held-out margin ${first['test/margin']} → ${last['test/margin']}`);
  assert.ok(last['test/dpo_loss']! < Math.LN2 * 0.01, `held-out DPO loss ${first['test/dpo_loss']} → ${last['test/dpo_loss']}`);
  // The training batches show the same: the last batch is scored after 5 updates.
  assert.ok(records[steps - 1]!['accuracy'] === 1 && records[steps - 1]!['margin']! > 5);
  const [reference, final, ...more] = readCheckpoints(logPath);
  assert.deepEqual([reference?.name, reference?.step, reference?.state_path], ['reference', 0, undefined], 'the reference is recorded first, as sampler weights only');
  assert.equal(final?.name, 'final');
  assert.equal(final?.step, steps);
  assert.match(final!.sampler_path!, /sampler_weights\/final$/);
  assert.deepEqual(more, []);
});

test('an interrupted DPO run resumes from its last checkpoint with its optimizer state and reference', async () => {
  assert.ok(uninterrupted !== undefined, 'needs the uninterrupted run of the previous test');
  const logPath = path.join(root, 'dpo-resumed');
  const stop = new AbortController();
  const first = await trainDPO({ ...dpoConfig(logPath), saveEvery: 2, signal: stop.signal, onStep: (step) => step === 2 && stop.abort() });
  assert.deepEqual([first.interrupted, first.steps, first.finalCheckpoint], [true, 3, undefined]);
  assert.deepEqual(readCheckpoints(logPath).map((c) => [c.name, c.step]), [['reference', 0], ['000002', 2]]);

  const second = await trainDPO({ ...dpoConfig(logPath), saveEvery: 2 });
  assert.deepEqual([second.resumedFrom?.step, second.interrupted, second.steps], [2, false, STEPS]);
  assert.deepEqual(readCheckpoints(logPath).map((c) => [c.name, c.step]), [['reference', 0], ['000002', 2], ['000004', 4], ['final', STEPS]]);
  const resumed = readMetrics(logPath);
  assert.deepEqual(resumed.map((r) => r.step), [...Array(STEPS + 1).keys()], 'step 2, logged before the stop, is redone once');
  // Same weights, Adam moments, reference and batches as the uninterrupted run: the same numbers.
  for (const [i, r] of resumed.entries()) {
    for (const key of ['margin', 'chosen_reward', 'test/margin']) {
      const ref: number | undefined = uninterrupted[i]![key];
      assert.equal(key in r, ref !== undefined, `step ${i} ${key} present in one run only`);
      // Relative to at least 1: before any update the margins are rounding noise around 0.
      if (ref !== undefined) assert.ok(Math.abs(r[key]! - ref) < 1e-3 * Math.max(Math.abs(ref), 1), `step ${i} ${key}: resumed ${r[key]} vs uninterrupted ${ref}`);
    }
  }
  // A complete log dir is returned as is.
  const again = await trainDPO(dpoConfig(logPath));
  assert.deepEqual([again.steps, again.finalCheckpoint?.name], [STEPS, 'final']);
  assert.equal(readMetrics(logPath).length, STEPS + 1);
});

test('trainDPO rejects bad settings before it creates anything', async () => {
  const { train, test: heldOut } = preferenceDatasets(answerFormatPairs(6), roleColonExample(loadTokenizer('qwen3')), { batchSize: 2, testSize: 2 });
  const base = { service, logPath: path.join(root, 'bad'), modelName: MODEL, dataset: train, console: () => {} };
  await assert.rejects(trainDPO({ ...base, testData: heldOut.slice(1) }), /testData must hold chosen\/rejected pairs, got 3 datums/);
  await assert.rejects(trainDPO({ ...base, beta: 0 }), /beta must be positive/);
  await assert.rejects(trainDPO({ ...base, learningRate: -1 }), /learningRate must be positive/);
});
