// `lathe serve` and `lathe keys` as processes: the data directory's lock, unusable data
// directories, and a graceful stop on SIGTERM.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { LOCK_FILE } from '@lathe/server';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const LATHE = path.join(ROOT, 'packages/cli/test/fixtures/lathe.ts');
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'lathe-cli-serve-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

interface Run {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  exited: Promise<number | null>;
}

function lathe(...args: string[]): Run {
  const child = spawn(process.execPath, ['--conditions=lathe-source', '--import', 'tsx', LATHE, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const run: Run = { child, stdout: [], stderr: [], exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))) };
  child.stdout!.on('data', (chunk: Buffer) => run.stdout.push(chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => run.stderr.push(chunk.toString()));
  return run;
}

const serve = (dataDir: string): Run => lathe('serve', '--port', '0', '--data-dir', dataDir, '--models-dir', MODELS_DIR);

/** Resolves once the server listens; rejects if it exits first. */
async function listening(run: Run): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (run.stdout.join('').includes('listening on')) resolve();
    };
    run.child.stdout!.on('data', check);
    check();
    void run.exited.then((code) => reject(new Error(`lathe serve exited (${code}) before listening:\n${run.stderr.join('')}`)));
  });
}

/** Exits non-zero with exactly one line on stderr, `lathe: ...`, matching `pattern`. */
async function refuses(run: Run, pattern: RegExp): Promise<void> {
  const code = await run.exited;
  const stderr = run.stderr.join('');
  assert.notEqual(code, 0, stderr);
  const lines = stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${stderr}`);
  assert.match(lines[0]!, /^lathe: /);
  assert.match(lines[0]!, pattern);
}

test('a second lathe serve on the same data directory refuses to start; SIGTERM stops the first cleanly and frees it', async () => {
  const dataDir = path.join(scratch, 'shared');
  const first = serve(dataDir);
  try {
    await listening(first);
    const lock = JSON.parse(readFileSync(path.join(dataDir, LOCK_FILE), 'utf8')) as { pid: number };
    assert.equal(lock.pid, first.child.pid);
    await refuses(serve(dataDir), new RegExp(`in use by another lathe server \\(pid ${first.child.pid}\\)`));
    first.child.kill('SIGTERM');
    assert.equal(await first.exited, 0, first.stderr.join(''));
    assert.equal(existsSync(path.join(dataDir, LOCK_FILE)), false);
  } finally {
    first.child.kill('SIGKILL');
  }
});

test('a lock left by a dead process is taken over', async () => {
  const dataDir = path.join(scratch, 'stale');
  // A process that has exited: its pid names nobody alive.
  const dead = spawn(process.execPath, ['-e', '']);
  await new Promise((resolve) => dead.once('exit', resolve));
  mkdirSync(dataDir, { recursive: true });
  writeFileSync(path.join(dataDir, LOCK_FILE), JSON.stringify({ pid: dead.pid, host: os.hostname() }));
  const server = serve(dataDir);
  try {
    await listening(server);
    assert.equal((JSON.parse(readFileSync(path.join(dataDir, LOCK_FILE), 'utf8')) as { pid: number }).pid, server.child.pid);
    server.child.kill('SIGTERM');
    assert.equal(await server.exited, 0, server.stderr.join(''));
  } finally {
    server.child.kill('SIGKILL');
  }
});

test('a data directory that cannot be created or is not a directory fails at start with one sentence', async () => {
  // Paths that fail even for root (where permission bits do not stop writes): one under a regular
  // file cannot be created, and a regular file is no directory.
  const file = path.join(scratch, 'a-file');
  writeFileSync(file, 'not a directory');
  await refuses(serve(path.join(file, 'data')), /cannot create the data directory .*a-file\/data: a part of its path is a file, not a directory/);
  await refuses(serve(file), /the data directory .*a-file is not a directory/);
  await refuses(lathe('keys', 'create', '--name', 'k', '--data-dir', path.join(file, 'data')), /cannot create the data directory/);
  if (process.getuid?.() !== 0) {
    // Not as root (root writes through permission bits): a directory without write permission.
    const readOnly = path.join(scratch, 'read-only');
    mkdirSync(readOnly, { mode: 0o500 });
    await refuses(serve(readOnly), /cannot write to the data directory .*read-only: permission denied/);
  }
});
