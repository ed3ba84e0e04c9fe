import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { runDemo } from '../src/commands/demo.js';

// Shared across runs (and with the SDK's e2e test): the tiny model is materialized here once,
// atomically, instead of into every run's data directory.
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');

test('lathe demo fine-tunes the tiny model through server + SDK: loss falls and the sample becomes the target', async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-demo-'));
  try {
    const lines: string[] = [];
    const result = await runDemo({ model: 'lathe/tiny-qwen3', steps: 30, dataDir, modelsDir: MODELS_DIR, log: (line) => lines.push(line) });
    assert.ok(result.lossAfter < result.lossBefore / 100, `loss ${result.lossBefore} -> ${result.lossAfter}`);
    assert.notEqual(result.sampleBefore, result.target);
    assert.equal(result.sampleAfter, result.target);
    assert.ok(lines.some((line) => line.startsWith('loss before:')));
    assert.ok(lines.some((line) => line.startsWith('sample after:')));
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
    await assert.rejects(runDemo({ model: 'acme/mystery-7b', steps: 1, dataDir, modelsDir: MODELS_DIR, log: (line) => lines.push(line) }), /no bundled tokenizer/);
    assert.equal(existsSync(dataDir), false, 'no server was created (it would have made the data dir)');
    assert.deepEqual(lines, []);
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
});
