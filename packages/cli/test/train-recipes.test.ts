// `lathe train dpo|distill|rl` as processes on an embedded server and the tiny model: each writes
// the cookbook's metrics and checkpoints; Ctrl-C (SIGINT) stops rl with a checkpoint and the same
// --log-dir resumes there. Runs are a few steps: the recipes' learning is tested in the cookbook.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { finished, interruptTraining, lathe, readJsonl, stderrMatches, type Run } from './fixtures/run-lathe.js';

const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'lathe-cli-recipes-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
const dataDir = path.join(scratch, 'data');

const train = (recipe: string, logDir: string, args: string[], options: { detached?: boolean } = {}): Run =>
  lathe(['train', recipe, '--model', 'lathe/tiny-qwen3', '--log-dir', logDir, '--data-dir', dataDir, '--models-dir', MODELS_DIR, '--lora-rank', '8', ...args], options);

/** The steps of metrics.jsonl's records that carry `metric`. */
const stepsWith = (logDir: string, metric: string): unknown[] => readJsonl(path.join(logDir, 'metrics.jsonl')).filter((r) => typeof r[metric] === 'number').map((r) => r['step']);

// The DPO run's final weights: the distillation test's teacher (a model that differs from the student).
let dpoSamplerPath: string | undefined;

test('lathe train dpo trains on the built-in pairs: DPO metrics per step, held-out metrics, a final checkpoint', async () => {
  const logDir = path.join(scratch, 'dpo');
  const { code, stdout, stderr } = await finished(train('dpo', logDir, ['--steps', '2', '--batch-size', '2', '--lr', '1e-2', '--eval-every', '0']));
  assert.equal(code, 0, stderr);
  assert.match(stderr, /2\/2 {2}loss \d+\.\d{4} {2}ETA/, 'the progress line shows the DPO loss');
  assert.deepEqual(stepsWith(logDir, 'dpo_loss'), [0, 1]);
  const records = readJsonl(path.join(logDir, 'metrics.jsonl'));
  for (const name of ['accuracy', 'margin', 'chosen_reward', 'rejected_reward', 'learning_rate', 'num_pairs']) assert.equal(typeof records[0]![name], 'number', name);
  assert.deepEqual(stepsWith(logDir, 'test/dpo_loss'), [0, 2], 'held out before the first step and after the last');
  const checkpoints = readJsonl(path.join(logDir, 'checkpoints.jsonl'));
  assert.deepEqual(
    checkpoints.map((c) => [c['name'], c['step']]),
    [
      ['reference', 0],
      ['final', 2],
    ],
  );
  dpoSamplerPath = checkpoints.at(-1)!['sampler_path'] as string;
  assert.equal(stdout.trim(), `done: 2 steps; sampler weights ${dpoSamplerPath}`);
});

test('lathe train distill distils a teacher given by its sampler path: teacher_kl per step and held out', async () => {
  assert.ok(dpoSamplerPath !== undefined, 'needs the DPO run of the previous test');
  const logDir = path.join(scratch, 'distill');
  const { code, stderr } = await finished(
    train('distill', logDir, ['--teacher', dpoSamplerPath, '--steps', '2', '--prompts-per-step', '2', '--samples-per-prompt', '2', '--max-tokens', '8', '--lr', '1e-3', '--eval-every', '0']),
  );
  assert.equal(code, 0, stderr);
  assert.match(stderr, new RegExp(`distilled from ${dpoSamplerPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  assert.match(stderr, /2\/2 {2}KL -?\d+\.\d{4} {2}ETA/, 'the progress line shows the KL to the teacher');
  assert.deepEqual(stepsWith(logDir, 'teacher_kl'), [0, 1]);
  assert.deepEqual(stepsWith(logDir, 'test/teacher_kl'), [0, 2]);
  const records = readJsonl(path.join(logDir, 'metrics.jsonl'));
  for (const name of ['num_sequences', 'num_tokens', 'learning_rate']) assert.equal(typeof records[0]![name], 'number', name);
  assert.deepEqual(
    readJsonl(path.join(logDir, 'checkpoints.jsonl')).map((c) => [c['name'], c['final']]),
    [['final', true]],
  );
});

test('Ctrl-C (SIGINT) stops lathe train rl with a checkpoint; the same --log-dir resumes at that step and finishes', async () => {
  const logDir = path.join(scratch, 'rl');
  // Steps without a learning signal (the tiny model never answers with a number) are quick: enough
  // of them that Ctrl-C lands mid-run.
  const steps = 30;
  const args = ['--steps', String(steps), '--batch-size', '2', '--group-size', '2', '--max-tokens', '2', '--lr', '1e-3', '--save-every', '0'];
  const first = train('rl', logDir, args, { detached: true });
  await stderrMatches(first, / 2\/30 {2}reward/);
  const stoppedAt = await interruptTraining(first, logDir, steps);
  assert.ok(stoppedAt >= 2, `stopped at ${stoppedAt}, before the progress line it waited for`);

  const second = await finished(train('rl', logDir, args));
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stderr, new RegExp(`resuming .* at step ${stoppedAt}`));
  const progressSteps = [...second.stderr.matchAll(/ (\d+)\/30 {2}reward -?\d+\.\d{4}/g)].map((m) => Number(m[1]));
  assert.deepEqual(
    progressSteps,
    Array.from({ length: steps - stoppedAt }, (_, i) => stoppedAt + 1 + i),
    'the rerun continues after the checkpoint instead of starting over',
  );
  assert.deepEqual(stepsWith(logDir, 'env/all/reward/total'), [...Array(steps).keys()], 'each step logged once');
  const records = readJsonl(path.join(logDir, 'metrics.jsonl'));
  for (const name of ['env/arithmetic/reward/total', 'env/all/correct', 'by_group/frac_mixed', 'num_groups', 'progress/done_frac']) assert.equal(typeof records[0]![name], 'number', name);
  assert.deepEqual(
    readJsonl(path.join(logDir, 'checkpoints.jsonl')).map((c) => [c['step'], c['final']]),
    [
      [stoppedAt, false],
      [steps, true],
    ],
  );
});
