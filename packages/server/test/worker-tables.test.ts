// The tables that TypeScript (@lathe/protocol) and the Python worker each keep, compared: the
// worker's error codes (`python -m lathe_worker.error_codes --json`) and its loss functions
// (`python -m lathe_worker.losses --json`). The worker's own tests check its tables against its
// source, so a difference here means the TypeScript side is out of date.
import { LOSS_FUNCTIONS, WORKER_ERROR_CODES } from '@lathe/protocol';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { pythonExecutable, REPO_ROOT } from '../src/worker/process.js';

/** The JSON a `python -m lathe_worker.<module> --json` prints. */
async function workerTable(module: string): Promise<unknown> {
  const { stdout } = await promisify(execFile)(pythonExecutable(), ['-m', `lathe_worker.${module}`, '--json'], { cwd: path.join(REPO_ROOT, 'worker') });
  return JSON.parse(stdout);
}

test('the worker error codes are the protocol table, with the same status and category', async () => {
  const python = (await workerTable('error_codes')) as Record<string, { status: number; category: string }>;
  assert.ok(Object.keys(python).length > 40, 'the worker printed its table');
  const typescript = Object.fromEntries(Object.entries(WORKER_ERROR_CODES).map(([code, info]) => [code, { status: info.status, category: info.kind }]));
  // One code at a time first, so a failure names the code.
  for (const [code, entry] of Object.entries(python)) assert.deepEqual(typescript[code], entry, `worker code ${code}`);
  assert.deepEqual(Object.keys(typescript).sort(), Object.keys(python).sort(), 'codes in WORKER_ERROR_CODES that the worker never sends');
});

test('the protocol loss functions are the worker registry, in the same order', async () => {
  const python = (await workerTable('losses')) as Record<string, Record<string, number>>;
  assert.deepEqual(Object.keys(python), [...LOSS_FUNCTIONS]);
});
