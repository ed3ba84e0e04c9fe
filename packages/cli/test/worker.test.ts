// `lathe serve --worker-port` and `lathe worker --connect` as processes: the server prints the
// token it generated, a worker started with it joins (and is listed), SIGTERM reaches the Python
// worker through `lathe worker`, and a worker without a token is refused before it starts.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const LATHE = path.join(ROOT, 'packages/cli/test/fixtures/lathe.ts');
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'lathe-cli-worker-'));
const children: ChildProcess[] = [];
after(() => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  rmSync(scratch, { recursive: true, force: true });
});

interface Run {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

function lathe(args: string[], env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(process.execPath, ['--conditions=lathe-source', '--import', 'tsx', LATHE, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children.push(child);
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return { child, output: () => output, exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))) };
}

async function until<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, run: Run, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${run.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

test('lathe serve --worker-port prints a token; lathe worker --connect joins with it and stops on SIGTERM', async () => {
  const dataDir = path.join(scratch, 'data');
  const key = lathe(['keys', 'create', '--name', 'ops', '--data-dir', dataDir]);
  assert.equal(await key.exited, 0, key.output());
  const apiKey = key.output().trim();
  const server = lathe(['serve', '--port', '0', '--data-dir', dataDir, '--models-dir', MODELS_DIR, '--worker-port', '0', '--worker-host', '127.0.0.1', '--no-local-workers'], { LATHE_WORKER_TOKEN: '' });
  const [, url] = await until('the server to listen', () => /listening on (http:\S+)/.exec(server.output()) ?? undefined, server);
  const [, port, token] = await until('the join line', () => /join with: lathe worker --connect HOST:(\d+) --token (\S+)/.exec(server.output()) ?? undefined, server);
  assert.ok(token!.length >= 24, `a generated token: ${token}`);

  const worker = lathe(['worker', '--connect', `127.0.0.1:${port}`, '--token', token!, '--models-dir', path.join(scratch, 'worker-models'), '--device', 'cpu']);
  const listed = await until('the worker to be listed', async () => {
    const response = await fetch(`${url}/api/v1/lathe/workers`, { headers: { 'x-api-key': apiKey } });
    const { workers } = (await response.json()) as { workers: { kind: string; pid: number; devices: { type: string }[] }[] };
    return workers.length > 0 ? workers : undefined;
  }, worker);
  assert.equal(listed[0]!.kind, 'remote');
  assert.equal(listed[0]!.devices[0]!.type, 'cpu');
  assert.notEqual(listed[0]!.pid, worker.child.pid, 'the Python worker, not the lathe process');

  worker.child.kill('SIGTERM');
  // The Python worker got the signal and died of it: lathe worker reports 128 + 15.
  assert.equal(await worker.exited, 143, worker.output());
  await until('the server to notice the worker left', async () => {
    const response = await fetch(`${url}/api/v1/lathe/workers`, { headers: { 'x-api-key': apiKey } });
    return ((await response.json()) as { workers: unknown[] }).workers.length === 0 ? true : undefined;
  }, server);
  assert.throws(() => process.kill(listed[0]!.pid, 0), 'the Python worker is gone');
  server.child.kill('SIGTERM');
  assert.equal(await server.exited, 0, server.output());
});

test('lathe worker without a token says how to get one', async () => {
  const worker = lathe(['worker', '--connect', '127.0.0.1:1'], { LATHE_WORKER_TOKEN: '' });
  assert.equal(await worker.exited, 1);
  assert.match(worker.output(), /needs --token \(or LATHE_WORKER_TOKEN\)/);
});
