// RL against a real Lathe server on loopback (real worker, tiny model): the arithmetic env's reward
// rises under training, the multi-turn env's rollouts become single masked datums, and the
// KL / ppo datums carry the hand-computed numbers.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '@lathe/server';
import { ModelInput, ServiceClient, type SamplingClient } from '@lathe/sdk';
import {
  applyKlPenalty,
  ArithmeticDataset,
  ArithmeticEnv,
  arithmeticFormatExamples,
  assembleTrainingData,
  computeAdvantages,
  computeReferenceLogprobs,
  datumFromExample,
  DatumDataset,
  doGroupRollout,
  GuessNumberEnv,
  loadTokenizer,
  readCheckpoints,
  readMetrics,
  trainRL,
  trainSupervised,
  trajectoryToData,
  type Trajectory,
  type TrajectoryGroup,
} from '../src/index.js';

const MODEL = 'lathe/tiny-qwen3';
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const tokenizer = loadTokenizer('qwen3');
// Answers 0..4, uniformly: a policy that only knows to answer with one of them scores ≈ 0.2.
const MAX_SUM = 4;
// Every split a+b of every answer, grouped by answer.
const PROBLEMS_BY_SUM = Array.from({ length: MAX_SUM + 1 }, (_, sum) => Array.from({ length: sum + 1 }, (_, a) => [a, sum - a] as const));
const PROBLEMS = PROBLEMS_BY_SUM.flat();

let server: LatheServer;
let root: string;
let service: ServiceClient;
// The format warm-up of the first test: a policy whose groups have mixed rewards.
let warmPath: string | undefined;

before(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), 'lathe-cookbook-rl-'));
  server = await createServer({ dataDir: path.join(root, 'server'), modelsDir: MODELS_DIR });
  const baseUrl = await server.app.listen({ host: '127.0.0.1', port: 0 });
  const apiKey = (await server.services.store.keys.create('cookbook-rl')).key;
  service = new ServiceClient({ baseUrl, apiKey });
});

after(async () => {
  await service?.close();
  await server?.close();
  rmSync(root, { recursive: true, force: true });
});

const tokensOf = (input: ModelInput | undefined): number[] => input?.toInts() ?? [];
const close = (a: number, b: number, tol = 1e-5): boolean => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));

/** Fraction of correct answers at temperature 1, `samples` draws per problem, weighting each answer equally. */
async function accuracy(sampler: SamplingClient, samples: number, seed: number): Promise<number> {
  const perSum = await Promise.all(
    PROBLEMS_BY_SUM.map(async (problems, sum) => {
      const groups = await Promise.all(
        problems.map(([a, b]) =>
          doGroupRollout({ makeEnvs: () => Array.from({ length: samples }, () => new ArithmeticEnv(tokenizer, a, b)) }, sampler, { maxTokens: 1, seed: seed + (sum * 16 + a) * 1000 }),
        ),
      );
      const correct = groups.flatMap((g) => g.trajectories.map((t) => t.transitions[0]!.metrics['correct']!));
      return correct.reduce((x, y) => x + y, 0) / correct.length;
    }),
  );
  return perSum.reduce((x, y) => x + y, 0) / perSum.length;
}

test('RL raises the arithmetic reward of a model that only knows the answer format', async () => {
  // The tiny model's weights are random: it almost never emits a digit (1 in ~15 000 tokens), so
  // RL alone gets no signal. A few SFT steps on uniformly random answers in 0..4 teach the format
  // only; RL must then find which answer is right for each question.
  const formatExamples = arithmeticFormatExamples(tokenizer, MAX_SUM).map((example) => datumFromExample(example));
  assert.equal(formatExamples.length, PROBLEMS.length * (MAX_SUM + 1));
  const warmup = await trainSupervised({
    service, logPath: path.join(root, 'format'), modelName: MODEL, dataset: new DatumDataset(formatExamples, { batchSize: formatExamples.length, seed: 0 }),
    loraRank: 8, seed: 0, learningRate: 1e-2, lrSchedule: 'linear', numEpochs: 12, saveEvery: 0, evalEvery: 0, console: () => {},
  });
  warmPath = warmup.finalCheckpoint!.state_path!;
  const before = await accuracy(await warmup.training.createSamplingClient(warmup.finalCheckpoint!.sampler_path!), 16, 1);

  const logPath = path.join(root, 'arithmetic');
  const steps = 14;
  const result = await trainRL({
    service, logPath, modelName: MODEL, loadCheckpointPath: warmPath,
    dataset: new ArithmeticDataset(tokenizer, { batchSize: MAX_SUM + 1, groupSize: 64, numBatches: steps, maxSum: MAX_SUM, seed: 0 }),
    learningRate: 5e-3, maxTokens: 1, temperature: 1, seed: 0, saveEvery: 5, console: () => {},
  });
  const afterTraining = await accuracy(result.sampler, 16, 1);
  const metrics = readMetrics(logPath);
  console.log(`arithmetic accuracy ${before.toFixed(3)} → ${afterTraining.toFixed(3)}; env/all/reward/total ${metrics.map((m) => m['env/all/reward/total']!.toFixed(2)).join(' ')}`);
  assert.ok(before > 0.1 && before < 0.35, `after the format warm-up, accuracy ${before} should be near chance (0.2)`);
  // Chance is 0.2 and no constant answer beats it; 0.35 means the policy now tells questions apart.
  assert.ok(afterTraining >= 0.35 && afterTraining - before >= 0.15, `RL should lift accuracy from ${before.toFixed(3)} by >= 0.15 to >= 0.35, got ${afterTraining.toFixed(3)}`);

  assert.deepEqual(metrics.map((m) => m.step), [...Array(steps).keys()]);
  for (const m of metrics) {
    for (const name of ['env/all/reward/total', 'env/arithmetic/reward/total', 'env/all/correct', 'by_group/frac_mixed', 'progress/done_frac', 'optim/lr', 'time/step']) {
      assert.ok(Number.isFinite(m[name]), `step ${m.step} logs ${name}`);
    }
    assert.equal(m['async/steps_off_policy'], 0);
  }
  assert.deepEqual(readCheckpoints(logPath).map((c) => [c.name, c.step, c.final]), [['000005', 5, false], ['000010', 10, false], ['final', steps, true]]);
});

test('guess-the-number: multi-turn rollouts become one masked datum per episode with centred advantages', async () => {
  // Environment mechanics by hand: hints, reward on the right guess, the episode cut at maxGuesses.
  const scripted = new GuessNumberEnv(tokenizer, 6, { maxGuesses: 3 });
  const first = scripted.initialObservation();
  const low = scripted.step(tokenizer.encode('3'), 'length');
  assert.deepEqual([low.reward, low.episodeDone], [0, false]);
  assert.match(tokenizer.decode(tokensOf(low.nextObservation?.prompt)), /3\nHigher\.\nGuess: $/);
  assert.deepEqual(tokensOf(low.nextObservation?.prompt).slice(0, first.prompt.length), tokensOf(first.prompt), 'each observation extends the last');
  const high = scripted.step(tokenizer.encode('8'), 'length');
  assert.match(tokenizer.decode(tokensOf(high.nextObservation?.prompt)), /8\nLower\.\nGuess: $/);
  const right = scripted.step(tokenizer.encode('6'), 'length');
  assert.deepEqual([right.reward, right.episodeDone, right.metrics?.['guesses']], [1, true, 3]);
  const cut = new GuessNumberEnv(tokenizer, 6, { maxGuesses: 2 });
  cut.initialObservation();
  cut.step(tokenizer.encode('x'), 'length');
  assert.deepEqual(cut.step(tokenizer.encode('1'), 'length'), { reward: 0, episodeDone: true, metrics: { solved: 0, guesses: 2, valid_guess: 1 } });

  // Real rollouts with the tiny model: it never guesses right, so every episode runs 3 turns.
  const sampler = await service.createSamplingClient({ baseModel: MODEL });
  const builder = { makeEnvs: () => [0, 1, 2].map(() => new GuessNumberEnv(tokenizer, 4, { maxGuesses: 3 })), loggingTags: () => ['guess_number'] };
  const group = await doGroupRollout(builder, sampler, { maxTokens: 2, seed: 5 });
  assert.equal(group.trajectories.length, 3);
  for (const trajectory of group.trajectories) {
    assert.equal(trajectory.transitions.length, 3);
    assert.deepEqual(trajectory.transitions.map((t) => t.episodeDone), [false, false, true]);
    const [datum, ...rest] = trajectoryToData(trajectory, 0.25);
    assert.equal(rest.length, 0, 'observations extend each other, so the episode is one datum');
    const last = trajectory.transitions.at(-1)!;
    assert.deepEqual(datum!.tokens, [...tokensOf(last.observation.prompt), ...last.action]);
    const actionTokens = trajectory.transitions.reduce((n, t) => n + t.action.length, 0);
    assert.equal(datum!.mask.reduce((a, b) => a + b, 0), actionTokens);
    datum!.mask.forEach((m, i) => {
      assert.equal(datum!.advantages[i], m * 0.25);
      if (m === 0) assert.equal(datum!.logprobs[i], 0);
    });
    // The sampled logprobs sit on the action tokens, in order.
    assert.deepEqual(datum!.logprobs.filter((_, i) => datum!.mask[i] === 1), trajectory.transitions.flatMap((t) => t.logprobs));
    assert.equal(datum!.datum.modelInput.length, datum!.tokens.length - 1);
  }
  // All rewards equal: zero advantages, and the group yields no training data.
  assert.deepEqual(computeAdvantages([group]), [[0, 0, 0]]);
  assert.deepEqual(assembleTrainingData([group]), []);
});

/** A one-turn trajectory with the given prompt, action, sampled logprobs and reward. */
function oneTurn(prompt: number[], action: number[], logprobs: number[], reward: number): Trajectory {
  return { transitions: [{ observation: { prompt: ModelInput.fromInts(prompt) }, action, logprobs, stopReason: 'length', reward, episodeDone: true, metrics: {} }] };
}

test('importance-sampling / ppo datums and the KL penalty carry hand-computed numbers', async () => {
  const group: TrajectoryGroup = {
    trajectories: [oneTurn([11, 12], [13, 14], [-0.5, -1], 1), oneTurn([11, 12], [15], [-2], 0), oneTurn([11, 12], [16], [-0.25], 0.5)],
    tags: [],
    samplerStep: 0,
  };
  assert.deepEqual(computeAdvantages([group]), [[0.5, -0.5, 0]]);
  const data = assembleTrainingData([group]);
  assert.equal(data.length, 3);
  const first = data[0]!;
  assert.deepEqual(first.datum.modelInput.toInts(), [11, 12, 13]);
  const inputs = (d: typeof first, key: string): number[] => (d.datum.lossFnInputs[key] as { toArray(): number[] }).toArray();
  assert.deepEqual(inputs(first, 'target_tokens'), [12, 13, 14]);
  assert.deepEqual(inputs(first, 'logprobs'), [0, -0.5, -1]);
  assert.deepEqual(inputs(first, 'advantages'), [0, 0.5, 0.5]);
  assert.deepEqual(first.mask, [0, 1, 1]);
  assert.deepEqual(Object.keys(first.datum.lossFnInputs).sort(), ['advantages', 'logprobs', 'target_tokens'], 'the mask stays on the client');

  // KL penalty: d_t = q_t − ref_t on action tokens = [0.5−… ] by hand below; d̄ = mean over the 4 action tokens.
  const reference = [[-9, -1, -1.5], [-9, -1.5], [-9, -0.25]];
  // d: first [−0.5+1, −1+1.5] = [0.5, 0.5]; second [−2+1.5] = [−0.5]; third [0]; d̄ = 0.5/4 = 0.125.
  const coef = 0.2;
  const { data: penalised, klPolicyBase } = applyKlPenalty(data, reference, coef);
  assert.ok(close(klPolicyBase, 0.125));
  const expected = [
    [0, 0.5 + coef * (0.125 - 0.5), 0.5 + coef * (0.125 - 0.5)],
    [0, -0.5 + coef * (0.125 + 0.5)],
    [0, 0 + coef * 0.125],
  ];
  penalised.forEach((d, i) => {
    expected[i]!.forEach((value, t) => assert.ok(close(inputs(d, 'advantages')[t]!, value), `datum ${i} token ${t}: ${inputs(d, 'advantages')[t]} vs ${value}`));
    assert.deepEqual(inputs(d, 'logprobs'), inputs(data[i]!, 'logprobs'));
  });

  // The same datums train with both losses on the real server; the learner's logprobs come back per target.
  const training = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 8, seed: 0 });
  const sampler = await training.saveWeightsAndGetSamplingClient();
  // Reference logprobs from the sampler align with the targets (prompt position 0 dropped).
  const refLogprobs = await computeReferenceLogprobs(sampler, data);
  assert.deepEqual(refLogprobs.map((r) => r.length), [3, 2, 2]);
  const forward = await training.forward(data.map((d) => d.datum), 'importance_sampling');
  forward.lossFnOutputs.forEach((o, i) => o['logprobs']!.toArray().forEach((lp, t) => assert.ok(close(lp, refLogprobs[i]![t]!, 1e-3), `datum ${i} token ${t}: learner ${lp} vs sampler ${refLogprobs[i]![t]}`)));
  // importance_sampling: L = −Σ exp(lp − q)·A by hand from the learner's logprobs.
  const byHand = -data.reduce((sum, d, i) => sum + d.advantages.reduce((s, a, t) => s + Math.exp(forward.lossFnOutputs[i]!['logprobs']!.toArray()[t]! - d.logprobs[t]!) * a, 0), 0);
  assert.ok(close(forward.metrics['loss:sum']!, byHand, 1e-3), `importance_sampling loss ${forward.metrics['loss:sum']} vs ${byHand}`);
  const ppo = await training.forward(data.map((d) => d.datum), 'ppo', { clip_low_threshold: 0.8, clip_high_threshold: 1.2 });
  const ppoByHand = -data.reduce((sum, d, i) => sum + d.advantages.reduce((s, a, t) => {
    const ratio = Math.exp(ppo.lossFnOutputs[i]!['logprobs']!.toArray()[t]! - d.logprobs[t]!);
    return s + Math.min(ratio * a, Math.min(Math.max(ratio, 0.8), 1.2) * a);
  }, 0), 0);
  assert.ok(close(ppo.metrics['loss:sum']!, ppoByHand, 1e-3), `ppo loss ${ppo.metrics['loss:sum']} vs ${ppoByHand}`);
});

test('off-policy mode (needs the first test\'s warm-up) trains on rollouts at most maxStaleness steps old, with ppo and a KL penalty', async () => {
  assert.ok(warmPath !== undefined, 'needs the format warm-up of the first test');
  const logPath = path.join(root, 'async');
  const steps = 4;
  const result = await trainRL({
    service, logPath, modelName: MODEL, seed: 1, loadCheckpointPath: warmPath,
    dataset: new ArithmeticDataset(tokenizer, { batchSize: 5, groupSize: 8, numBatches: steps, maxSum: MAX_SUM, seed: 1 }),
    learningRate: 1e-3, maxTokens: 1, maxStaleness: 2, lossFn: 'ppo', lossFnConfig: { clip_low_threshold: 0.8, clip_high_threshold: 1.2 },
    klPenaltyCoef: 0.1, klReference: await service.createSamplingClient({ baseModel: MODEL }), saveEvery: 0, console: () => {},
  });
  assert.equal(result.steps, steps);
  const metrics = readMetrics(logPath);
  // Batches 0..2 are launched with the step-0 sampler; later ones two steps before their turn.
  assert.deepEqual(metrics.map((m) => m['async/steps_off_policy']), [0, 1, 2, 2]);
  for (const m of metrics) {
    for (const name of ['env/all/reward/total', 'kl_policy_base', 'optim/kl_sample_train_v1', 'optim/entropy', 'optim/loss:sum']) {
      assert.ok(Number.isFinite(m[name]), `step ${m.step} logs ${name}`);
    }
  }
  // Step 0 trains on its own sampler's rollouts: learner and sampler logprobs agree.
  assert.ok(Math.abs(metrics[0]!['optim/kl_sample_train_v1']!) < 1e-3);
  assert.ok(metrics[0]!['kl_policy_base']! > 0, 'the warmed-up policy has moved away from the base model');
  assert.deepEqual(readCheckpoints(logPath).map((c) => c.name), ['final']);
});

test('an interrupted RL run resumes from its last checkpoint (needs the first test\'s warm-up)', async () => {
  assert.ok(warmPath !== undefined, 'needs the format warm-up of the first test');
  const logPath = path.join(root, 'resume');
  const steps = 4;
  const config = {
    service, logPath, modelName: MODEL, seed: 2, loadCheckpointPath: warmPath,
    dataset: new ArithmeticDataset(tokenizer, { batchSize: 5, groupSize: 8, numBatches: steps, maxSum: MAX_SUM, seed: 2 }),
    learningRate: 1e-3, maxTokens: 1, saveEvery: 1, console: () => {},
  };
  const stop = new AbortController();
  const first = await trainRL({ ...config, signal: stop.signal, onStep: (step) => step === 1 && stop.abort() });
  assert.deepEqual([first.interrupted, first.steps], [true, 2]);
  const second = await trainRL(config);
  assert.equal(second.resumedFrom?.step, 2);
  assert.deepEqual(readMetrics(logPath).map((m) => m.step), [0, 1, 2, 3]);
  assert.deepEqual(readCheckpoints(logPath).map((c) => [c.name, c.final]), [['000001', false], ['000002', false], ['000003', false], ['final', true]]);
  // A complete log dir is returned as is.
  const again = await trainRL(config);
  assert.deepEqual([again.steps, again.finalCheckpoint?.name], [steps, 'final']);
  assert.equal(readMetrics(logPath).length, steps);
});
