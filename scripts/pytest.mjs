#!/usr/bin/env node
// Runs the worker's pytest suite with the repository's venv.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const python = process.env.LATHE_PYTHON || path.join(root, '.venv', 'bin', 'python');
const result = spawnSync(python, ['-m', 'pytest', ...process.argv.slice(2)], { cwd: path.join(root, 'worker'), stdio: 'inherit' });
process.exit(result.status ?? 1);
