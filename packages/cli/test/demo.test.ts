import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { readCheckpoints } from '@lathe/cookbook';
import { DEMO_QUESTION, runDemo } from '../src/commands/demo.js';

// Shared across runs (and with the SDK's e2e test): the tiny model is materialized here once,
// atomically, instead of into every run's data directory.
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');

const mean = (values: number[]): number => values.reduce((a, b) => a + b, 0) / values.length;

test('lathe demo: SFT teaches the chat answer and the arithmetic format, RL raises the arithmetic reward, plots and a summary follow', async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-demo-'));
  try {
    const lines: string[] = [];
    const progress: string[] = [];
    const result = await runDemo({ model: 'lathe/tiny-qwen3', dataDir, modelsDir: MODELS_DIR, progress: { write: (s: string) => progress.push(s) }, log: (line) => lines.push(line) });
    const { sftLosses, rewards } = result;
    console.log(`demo: SFT loss ${sftLosses.map((x) => x.toFixed(2)).join(' ')}; RL reward ${rewards.map((x) => x.toFixed(3)).join(' ')}`);

    // SFT: the random model's loss on the targets is far above ln(151936) ≈ 11.9; the arithmetic
    // answers are uniform over 5 digits, so the mean loss cannot go much below ln 5 ≈ 1.61.
    assert.equal(sftLosses.length, 12);
    assert.ok(sftLosses[0]! > 15, `initial SFT loss ${sftLosses[0]}`);
    assert.ok(sftLosses.at(-1)! < 2 && sftLosses[0]! - sftLosses.at(-1)! >= 13, `SFT loss should fall by >= 13 nats/token to < 2: ${sftLosses[0]} -> ${sftLosses.at(-1)}`);
    assert.notEqual(result.before.reply, result.target);
    assert.equal(result.afterSft.reply, result.target, `after SFT the greedy reply to ${DEMO_QUESTION} is the trained answer`);

    // RL: the format warm-up leaves the policy at chance (0.2: no constant answer beats it); the
    // reward must rise above it, averaged over the last steps, not only at one lucky step.
    assert.equal(rewards.length, 14);
    assert.ok(rewards[0]! < 0.25, `first RL reward ${rewards[0]} should be near chance`);
    const late = mean(rewards.slice(-4));
    assert.ok(late - rewards[0]! >= 0.1, `RL reward should rise by >= 0.1: first ${rewards[0]}, mean of the last 4 steps ${late}`);

    // Progress bars (plain lines off a terminal), both plots and the summary.
    assert.ok(progress.some((p) => /12\/12 {2}loss /.test(p)));
    assert.ok(progress.some((p) => /14\/14 {2}reward /.test(p)));
    assert.ok(lines.includes('SFT loss (train_mean_nll, nats/token)'));
    assert.ok(lines.includes('RL reward (env/all/reward/total)'));
    assert.ok(lines.some((l) => l.startsWith(`  SFT loss          ${sftLosses[0]!.toFixed(3)} -> ${sftLosses.at(-1)!.toFixed(3)}`)));
    assert.ok(lines.some((l) => l.startsWith(`  RL reward         ${rewards[0]!.toFixed(3)} -> ${rewards.at(-1)!.toFixed(3)}`)));
    for (const run of ['sft', 'rl']) {
      assert.equal(readCheckpoints(path.join(result.logDir, run)).at(-1)?.final, true, `${run} saved a final checkpoint`);
    }
    assert.match(result.samplerPaths.rl, /^tinker:\/\/.+\/sampler_weights\/final$/);
    assert.ok(!existsSync(path.join(dataDir, 'models')), 'the models went to the shared models dir');
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('lathe demo refuses a model without a bundled tokenizer before it starts a server', async () => {
  const parent = mkdtempSync(path.join(os.tmpdir(), 'lathe-demo-'));
  try {
    const dataDir = path.join(parent, 'data');
    const lines: string[] = [];
    await assert.rejects(runDemo({ model: 'acme/mystery-7b', dataDir, modelsDir: MODELS_DIR, progress: { write: () => true }, log: (line) => lines.push(line) }), /no bundled tokenizer/);
    assert.equal(existsSync(dataDir), false, 'no server was created (it would have made the data dir)');
    assert.deepEqual(lines, []);
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
});
