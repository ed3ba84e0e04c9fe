// On-policy distillation end to end against a real Lathe server on loopback (real worker, tiny
// random-weight model): the teacher is the tiny model after a few SFT steps on a catchphrase, the
// student a fresh LoRA adapter on the same base.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '@lathe/server';
import { ServiceClient } from '@lathe/sdk';
import {
  CATCHPHRASE,
  OTHER_CATCHPHRASE,
  catchphraseConversations,
  conversationDatasets,
  distillationDatum,
  getRenderer,
  loadTokenizer,
  meanReverseKl,
  readCheckpoints,
  readMetrics,
  trainOnPolicyDistillation,
  trainSupervised,
  type Conversation,
  type Message,
  type SupervisedExample,
  type SupervisedResult,
} from '../src/index.js';

const MODEL = 'lathe/tiny-qwen3';
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const relDiff = (a: number, b: number): number => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);

let server: LatheServer;
let root: string;
let service: ServiceClient;

before(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), 'lathe-cookbook-distill-'));
  server = await createServer({ dataDir: path.join(root, 'server'), modelsDir: MODELS_DIR });
  const baseUrl = await server.app.listen({ host: '127.0.0.1', port: 0 });
  const apiKey = (await server.services.store.keys.create('cookbook-distill')).key;
  service = new ServiceClient({ baseUrl, apiKey });
});

after(async () => {
  await service?.close();
  await server?.close();
  rmSync(root, { recursive: true, force: true });
});

test('distillation datums carry the negative reverse KL as advantages on completion tokens only', () => {
  const rollout = { prompt: [5, 6, 7], tokens: [8, 9], studentLogprobs: [-1, -2], teacherLogprobs: [-3, -0.5] };
  const datum = distillationDatum(rollout, 0.5);
  assert.deepEqual(datum.modelInput.toInts(), [5, 6, 7, 8]);
  const values = (key: string): number[] => Array.from((datum.lossFnInputs[key] as { data: ArrayLike<number | bigint> }).data, Number);
  assert.deepEqual(values('target_tokens'), [6, 7, 8, 9]);
  assert.deepEqual(values('logprobs'), [0, 0, -1, -2]);
  assert.deepEqual(values('advantages'), [0, 0, -0.5 * (-1 - -3), -0.5 * (-2 - -0.5)]);
  assert.equal(meanReverseKl([rollout]), ((-1 - -3) + (-2 - -0.5)) / 2);
});

test('on-policy distillation lowers the held-out KL to an SFT-trained teacher', async () => {
  const renderer = getRenderer('role_colon', loadTokenizer('qwen3'));
  const toExample = (c: Conversation): SupervisedExample => renderer.buildSupervisedExample(c as Message[]);
  const sft = (name: string, conversations: Conversation[], batchSize: number, epochs: number, learningRate: number, loadCheckpointPath?: string): Promise<SupervisedResult> =>
    trainSupervised({
      service, logPath: path.join(root, name), modelName: MODEL, dataset: conversationDatasets(conversations, toExample, { batchSize, seed: 0 }).train,
      loraRank: 8, seed: 1, learningRate, lrSchedule: 'constant', numEpochs: epochs, saveEvery: 0, evalEvery: 0, console: () => {},
      ...(loadCheckpointPath !== undefined && { loadCheckpointPath }),
    });
  // The student starts out saying either catchphrase; the teacher continues its training on one.
  // A student spread over the whole vocabulary would (almost) never sample the teacher's tokens, so
  // on-policy distillation needs this overlap to have a signal.
  // Every question is answered both ways in every batch, so the student ends near 50/50.
  const bothWays = [...catchphraseConversations(8, 0, [CATCHPHRASE]), ...catchphraseConversations(8, 0, [OTHER_CATCHPHRASE])];
  const student = await sft('student', bothWays, 16, 4, 2e-2);
  const teacherRun = await sft('teacher', catchphraseConversations(8), 8, 3, 3e-3, student.finalCheckpoint!.state_path!);
  const teacher = await service.createSamplingClient({ modelPath: teacherRun.finalCheckpoint!.sampler_path! });

  const prompt = (c: Conversation): number[] => renderer.buildGenerationPrompt(c.slice(0, 1) as Message[]);
  const logPath = path.join(root, 'distill');
  const steps = 8;
  await trainOnPolicyDistillation({
    service, logPath, modelName: MODEL, teacher, loadCheckpointPath: student.finalCheckpoint!.state_path!,
    prompts: catchphraseConversations(8).map(prompt),
    testPrompts: catchphraseConversations(8, 8).map(prompt),
    numSteps: steps, promptsPerStep: 4, samplesPerPrompt: 4, maxTokens: 12, stop: renderer.getStopSequences(),
    loraRank: 8, seed: 0, learningRate: 2e-3, evalEvery: 4, console: () => {},
  });
  const records = readMetrics(logPath);
  assert.deepEqual(records.map((r) => r.step), [...Array(steps + 1).keys()]);
  const before = records[0]!['test/teacher_kl']!;
  const afterTraining = records[steps]!['test/teacher_kl']!;
  // Measured: 0.70 → 0.055 nats per token (the student stops saying "dogs"); asserted: a 75% drop.
  assert.ok(before > 0.3, `the student starts close to the teacher already: KL ${before}`);
  assert.ok(afterTraining < before * 0.25, `held-out KL ${before} → ${afterTraining}`);
  for (const r of records.slice(0, steps)) {
    assert.ok(Number.isFinite(r['teacher_kl']) && r['num_sequences']! > 0 && r['num_tokens']! > 0);
    assert.equal(r['learning_rate'], 2e-3);
  }
  const [final] = readCheckpoints(logPath);
  assert.equal(final?.name, 'final');
});

test('an interrupted distillation run resumes from its last checkpoint and retraces the uninterrupted run', async () => {
  const renderer = getRenderer('role_colon', loadTokenizer('qwen3'));
  // A teacher that differs from the fresh student: two quick SFT steps on the catchphrase.
  const teacherRun = await trainSupervised({
    service, logPath: path.join(root, 'resume-teacher'), modelName: MODEL, loraRank: 8, seed: 1, learningRate: 2e-2, lrSchedule: 'constant',
    dataset: conversationDatasets(catchphraseConversations(8), (c) => renderer.buildSupervisedExample(c as Message[]), { batchSize: 4, seed: 0 }).train,
    saveEvery: 0, evalEvery: 0, console: () => {},
  });
  const teacher = await service.createSamplingClient({ modelPath: teacherRun.finalCheckpoint!.sampler_path! });
  const steps = 4;
  const config = (name: string) => ({
    service, logPath: path.join(root, name), modelName: MODEL, teacher,
    prompts: catchphraseConversations(8).map((c) => renderer.buildGenerationPrompt(c.slice(0, 1) as Message[])),
    numSteps: steps, promptsPerStep: 2, samplesPerPrompt: 2, maxTokens: 6, loraRank: 8, seed: 3, learningRate: 1e-2, saveEvery: 2, console: () => {},
  });
  await trainOnPolicyDistillation(config('distill-whole'));
  const stop = new AbortController();
  const first = await trainOnPolicyDistillation({ ...config('distill-resumed'), signal: stop.signal, onStep: (step) => step === 1 && stop.abort() });
  assert.deepEqual([first.interrupted, first.steps, first.finalCheckpoint], [true, 2, undefined]);
  const second = await trainOnPolicyDistillation(config('distill-resumed'));
  assert.deepEqual([second.resumedFrom?.step, second.interrupted, second.steps], [2, false, steps]);
  const logPath = path.join(root, 'distill-resumed');
  assert.deepEqual(readCheckpoints(logPath).map((c) => [c.name, c.step]), [['000002', 2], ['final', steps]]);
  const resumed = readMetrics(logPath);
  const whole = readMetrics(path.join(root, 'distill-whole'));
  assert.deepEqual(resumed.map((r) => r.step), [...Array(steps).keys()]);
  // The same weights, Adam moments and sampling seeds: the same rollouts, so the same KL per step.
  assert.ok(whole.some((r) => r['teacher_kl']! > 0.01), `the teacher differs from the student: ${whole.map((r) => r['teacher_kl']).join(', ')}`);
  for (const [i, r] of resumed.entries()) {
    assert.ok(relDiff(r['teacher_kl']!, whole[i]!['teacher_kl']!) < 1e-3, `step ${i}: resumed KL ${r['teacher_kl']} vs uninterrupted ${whole[i]!['teacher_kl']}`);
  }
  const again = await trainOnPolicyDistillation(config('distill-resumed'));
  assert.deepEqual([again.steps, again.finalCheckpoint?.name, readMetrics(logPath).length], [steps, 'final', steps]);
});

test('trainOnPolicyDistillation rejects bad settings before it creates anything', async () => {
  const teacher = await service.createSamplingClient({ baseModel: MODEL });
  const base = { service, logPath: path.join(root, 'bad'), modelName: MODEL, teacher, prompts: [[1, 2, 3]], numSteps: 1, console: () => {} };
  await assert.rejects(trainOnPolicyDistillation({ ...base, prompts: [] }), /no training prompts/);
  await assert.rejects(trainOnPolicyDistillation({ ...base, numSteps: 0 }), /numSteps must be a positive integer, got 0/);
  await assert.rejects(trainOnPolicyDistillation({ ...base, promptsPerStep: 1.5 }), /promptsPerStep must be a positive integer/);
});
