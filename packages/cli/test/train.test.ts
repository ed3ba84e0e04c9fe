// `lathe train sft` and `lathe sample` as processes on an embedded server and the tiny model:
// training logs, Ctrl-C (SIGINT) with a checkpoint and a resume, sampling, and refusals.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { finished, interruptTraining, lathe, readJsonl, stderrMatches, type Run } from './fixtures/run-lathe.js';

const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'lathe-cli-train-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const dataDir = path.join(scratch, 'data');
const sft = (logDir: string, args: string[], options: { detached?: boolean } = {}): Run =>
  lathe(['train', 'sft', '--model', 'lathe/tiny-qwen3', '--log-dir', logDir, '--data-dir', dataDir, '--models-dir', MODELS_DIR, '--lr', '2e-2', '--lora-rank', '8', '--batch-size', '4', ...args], options);

let finalSamplerPath: string | undefined;

test('lathe train sft trains the tiny model on the built-in conversations: metrics and checkpoints are logged and the loss falls', async () => {
  const logDir = path.join(scratch, 'sft');
  const { code, stdout, stderr } = await finished(sft(logDir, ['--steps', '8', '--save-every', '3', '--eval-every', '4']));
  assert.equal(code, 0, stderr);
  assert.match(stderr, /qwen3 renderer/);
  assert.match(stderr, /8\/8 {2}loss \d+\.\d{4} {2}ETA/, 'a plain progress line per step (stderr is not a terminal)');
  const losses = readJsonl(path.join(logDir, 'metrics.jsonl'))
    .filter((r) => typeof r['train_mean_nll'] === 'number')
    .map((r) => [r['step'], r['train_mean_nll']] as [number, number]);
  assert.deepEqual(
    losses.map(([step]) => step),
    [0, 1, 2, 3, 4, 5, 6, 7],
  );
  const [first, last] = [losses[0]![1], losses.at(-1)![1]];
  assert.ok(last < first / 2, `loss ${first} -> ${last}`);
  const checkpoints = readJsonl(path.join(logDir, 'checkpoints.jsonl'));
  assert.deepEqual(
    checkpoints.map((c) => [c['step'], c['final']]),
    [
      [3, false],
      [6, false],
      [8, true],
    ],
  );
  finalSamplerPath = checkpoints.at(-1)!['sampler_path'] as string;
  assert.equal(stdout.trim(), `done: 8 steps; sampler weights ${finalSamplerPath}`);
});

test('Ctrl-C (SIGINT) stops lathe train sft with a checkpoint; the same --log-dir resumes at that step and finishes', async () => {
  const logDir = path.join(scratch, 'interrupted');
  // Only the final save is periodic: the checkpoint can come from the interrupt alone.
  const args = ['--steps', '24', '--save-every', '0', '--eval-every', '0'];
  const first = sft(logDir, args, { detached: true });
  await stderrMatches(first, / 3\/24 {2}loss/);
  const stoppedAt = await interruptTraining(first, logDir, 24);
  assert.ok(stoppedAt >= 3, `stopped at ${stoppedAt}, before the progress line it waited for`);
  assert.deepEqual(
    readJsonl(path.join(logDir, 'metrics.jsonl')).map((r) => r['step']),
    Array.from({ length: stoppedAt }, (_, i) => i),
    'every step before the checkpoint is logged',
  );

  const second = await finished(sft(logDir, args));
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stderr, new RegExp(`resuming .* at step ${stoppedAt}`));
  const progressSteps = [...second.stderr.matchAll(/ (\d+)\/24 {2}loss/g)].map((m) => Number(m[1]));
  assert.equal(progressSteps[0], stoppedAt + 1, 'the rerun continues after the checkpoint instead of starting over');
  assert.equal(progressSteps.at(-1), 24);
  const steps = readJsonl(path.join(logDir, 'metrics.jsonl')).map((r) => r['step']);
  assert.deepEqual(
    steps.filter((s) => s !== 24),
    Array.from({ length: 24 }, (_, i) => i),
    'each step logged once',
  );
  const records = readJsonl(path.join(logDir, 'checkpoints.jsonl'));
  assert.deepEqual(
    records.map((c) => [c['step'], c['final']]),
    [
      [stoppedAt, false],
      [24, true],
    ],
  );
});

test('lathe sample prints a reply from the tiny model and from trained sampler weights, reproducibly', async () => {
  const sample = (...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    finished(lathe(['sample', '--prompt', 'What is the capital of France?', '--data-dir', dataDir, '--models-dir', MODELS_DIR, '--max-tokens', '12', ...args]));
  const seeded = ['--model', 'lathe/tiny-qwen3', '--temperature', '1', '--seed', '7'];
  const [a, b] = [await sample(...seeded), await sample(...seeded)];
  assert.equal(a.code, 0, a.stderr);
  assert.ok(a.stdout.trim().length > 0, `a reply: ${JSON.stringify(a.stdout)}`);
  assert.equal(b.stdout, a.stdout, 'the same seed samples the same reply');

  assert.ok(finalSamplerPath !== undefined, 'the first test saved sampler weights');
  const trained = await sample('--model', finalSamplerPath);
  assert.equal(trained.code, 0, trained.stderr);
  assert.ok(trained.stdout.endsWith('\n'));
});

test('lathe train refuses bad input in one line before it starts a server', async () => {
  const parent = path.join(scratch, 'refused');
  const badPairs = path.join(scratch, 'bad-pairs.jsonl');
  writeFileSync(badPairs, '{"chosen": [{"role": "user", "content": "Hi"}]}\n');
  const answersOnly = path.join(scratch, 'answers-only.jsonl');
  writeFileSync(answersOnly, '{"messages": [{"role": "assistant", "content": "Hi"}]}\n');
  for (const [args, pattern] of [
    [['sft', '--renderer', 'nope'], /^lathe train sft: unknown renderer "nope"/],
    [['sft', '--data', path.join(scratch, 'missing.jsonl')], /^lathe train sft: .*missing\.jsonl/],
    [['dpo', '--data', badPairs], /^lathe train dpo: .*bad-pairs\.jsonl line 1: expected an object with "chosen" and "rejected" message arrays$/m],
    [['distill', '--teacher', 'lathe/tiny-llama3'], /^lathe train distill: the teacher lathe\/tiny-llama3 \(base model lathe\/tiny-llama3\) does not share lathe\/tiny-qwen3's tokenizer$/m],
    [['distill', '--teacher', 'lathe/tiny-qwen3', '--data', answersOnly], /^lathe train distill: .*answers-only\.jsonl: conversation 1 has no message before its answer/],
  ] as const) {
    const run = lathe(['train', ...args, '--model', 'lathe/tiny-qwen3', '--log-dir', path.join(parent, 'log'), '--data-dir', path.join(parent, 'data')]);
    const { code, stderr } = await finished(run);
    assert.equal(code, 1, stderr);
    assert.match(stderr, pattern);
    assert.equal(stderr.trimEnd().split('\n').length, 1, stderr);
  }
  assert.equal(existsSync(path.join(parent, 'data')), false, 'no server was started');
});

test('with --base-url and --api-key, lathe train sft and lathe sample use a running lathe serve', async () => {
  const remoteDir = path.join(scratch, 'remote');
  const server = lathe(['serve', '--port', '0', '--data-dir', remoteDir, '--models-dir', MODELS_DIR]);
  try {
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (server.stdout.join('').includes('listening on')) resolve();
      };
      server.child.stdout!.on('data', check);
      void server.exited.then((code) => reject(new Error(`lathe serve exited (${code}):\n${server.stderr.join('')}`)));
    });
    const baseUrl = /listening on (\S+)/.exec(server.stdout.join(''))![1]!;
    const keys = await finished(lathe(['keys', 'create', '--name', 'cli-test', '--data-dir', remoteDir]));
    assert.equal(keys.code, 0, keys.stderr);
    const remote = ['--base-url', baseUrl, '--api-key', keys.stdout.trim()];

    const logDir = path.join(scratch, 'remote-sft');
    const trained = await finished(
      lathe(['train', 'sft', '--model', 'lathe/tiny-qwen3', '--log-dir', logDir, '--steps', '2', '--batch-size', '4', '--lr', '2e-2', '--lora-rank', '8', '--save-every', '0', '--eval-every', '0', ...remote]),
    );
    assert.equal(trained.code, 0, trained.stderr);
    assert.doesNotMatch(trained.stderr, /starting a server/);
    const samplerPath = readJsonl(path.join(logDir, 'checkpoints.jsonl')).at(-1)!['sampler_path'] as string;
    assert.match(samplerPath, /^tinker:\/\//);

    const sampled = await finished(lathe(['sample', '--model', samplerPath, '--prompt', 'What is the capital of Peru?', '--max-tokens', '8', ...remote]));
    assert.equal(sampled.code, 0, sampled.stderr);
    assert.doesNotMatch(sampled.stderr, /starting a server/);
    assert.ok(sampled.stdout.endsWith('\n'));
  } finally {
    server.child.kill('SIGTERM');
    await server.exited;
  }
});
