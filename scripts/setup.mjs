#!/usr/bin/env node
// One-shot, idempotent set-up: npm packages, the Python venv for the worker, and the TypeScript
// build. Each step is skipped when its inputs have not changed since it last succeeded.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit' });
const digest = (file) => createHash('sha256').update(readFileSync(path.join(root, file))).digest('hex');

function step(name, inputs, marker, action) {
  const want = inputs.map(digest).join(':');
  const markerPath = path.join(root, marker);
  if (existsSync(markerPath) && readFileSync(markerPath, 'utf8') === want) return;
  console.error(`[setup] ${name} ...`);
  action();
  writeFileSync(markerPath, want);
}

step('npm ci', ['package-lock.json'], 'node_modules/.lathe-setup', () => run('npm', ['ci', '--no-audit', '--no-fund']));

const python = process.env.LATHE_SETUP_PYTHON || 'python3';
step('python venv (.venv) from worker/requirements.txt', ['worker/requirements.txt'], '.venv/.lathe-setup', () => {
  if (!existsSync(path.join(root, '.venv', 'bin', 'python'))) run(python, ['-m', 'venv', '.venv']);
  // --retries 0 --timeout 5: fail fast where the default index is unreachable (pip's own config names the mirror).
  run(path.join(root, '.venv', 'bin', 'pip'), ['install', '--retries', '0', '--timeout', '5', '-q', '-r', 'worker/requirements.txt']);
});

console.error('[setup] tsc -b');
run(path.join(root, 'node_modules', '.bin', 'tsc'), ['-b']);

// The dashboard `lathe serve` shows at `/` (web/dist, git-ignored): about a second.
console.error('[setup] web/build.mjs');
run(process.execPath, [path.join(root, 'web', 'build.mjs')]);
