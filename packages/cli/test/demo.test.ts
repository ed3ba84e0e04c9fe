import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { runDemo } from '../src/commands/demo.js';

test('lathe demo fine-tunes the tiny model through server + SDK: loss falls and the sample becomes the target', async () => {
  const lines: string[] = [];
  const result = await runDemo({
    model: 'lathe/tiny-qwen3',
    steps: 30,
    dataDir: mkdtempSync(path.join(os.tmpdir(), 'lathe-demo-')),
    log: (line) => lines.push(line),
  });
  assert.ok(result.lossAfter < result.lossBefore / 100, `loss ${result.lossBefore} -> ${result.lossAfter}`);
  assert.notEqual(result.sampleBefore, result.target);
  assert.equal(result.sampleAfter, result.target);
  assert.ok(lines.some((line) => line.startsWith('loss before:')));
  assert.ok(lines.some((line) => line.startsWith('sample after:')));
});
