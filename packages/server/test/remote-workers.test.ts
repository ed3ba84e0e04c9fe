import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '../src/index.js';
import { encodeFrame, FrameReader } from '../src/worker/frames.js';
import type { WorkerInfo } from '../src/worker/pool.js';
import { pythonExecutable, REPO_ROOT } from '../src/worker/process.js';
import { apiHelpers, MODEL, MODELS } from './fixtures/api.js';
import { until } from './until.js';

// Remote workers against a real server: worker processes started with the Python entry point
// (`python -m lathe_worker --connect`) dial the server's worker port. The server starts no local
// workers, so whatever runs, runs on a remote worker.
let server: LatheServer;
let key: string;
const TOKEN = 'remote-test-token';
const workerModels = mkdtempSync(path.join(os.tmpdir(), 'lathe-remote-models-'));
const started: ChildProcess[] = [];

before(async () => {
  server = await createServer({
    dataDir: mkdtempSync(path.join(os.tmpdir(), 'lathe-remote-test-')),
    models: MODELS,
    workerPort: 0,
    workerHost: '127.0.0.1',
    workerToken: TOKEN,
    localWorkers: false,
    remoteWaitMs: 1500,
    log: () => undefined,
  });
  key = (await server.services.store.keys.create('test')).key;
});
after(async () => {
  await server.close();
  for (const child of started) if (child.exitCode === null) child.kill('SIGKILL');
});

const { call, result, submitDatum } = apiHelpers(() => ({ server, key }));

/** Starts `python -m lathe_worker --connect` against the server's worker port. */
function startRemoteWorker(token = TOKEN): { child: ChildProcess; stderr: () => string } {
  const child = spawn(pythonExecutable(), ['-m', 'lathe_worker', '--connect', `127.0.0.1:${server.workerPort}`, '--models-dir', workerModels], {
    cwd: path.join(REPO_ROOT, 'worker'),
    env: { ...process.env, LATHE_WORKER_TOKEN: token },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  started.push(child);
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return { child, stderr: () => stderr };
}

async function workers(): Promise<WorkerInfo[]> {
  const listed = await call('GET', '/api/v1/lathe/workers');
  assert.equal(listed.status, 200, JSON.stringify(listed.body));
  return listed.body['workers'] as WorkerInfo[];
}

async function createModel(seed: number): Promise<{ status: number; body: Record<string, unknown> }> {
  const session = (await call('POST', '/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' })).body['session_id'];
  return call('POST', '/api/v1/create_model', { session_id: session, model_seq_id: 0, base_model: MODEL, lora_config: { rank: 4, seed }, type: 'create_model' });
}

/** A training run driven through the HTTP API: the same datum every step. */
function trainer(modelId: string) {
  let seq = 0;
  /** Submits a forward(_backward) of the datum; returns its request id. */
  const submit = (forwardOnly: boolean): Promise<string> => submitDatum(modelId, ++seq, forwardOnly);
  const fwdbwd = async (forwardOnly: boolean): Promise<number> => {
    const done = await result(await submit(forwardOnly));
    return (done['metrics'] as Record<string, number>)['loss:sum']!;
  };
  return {
    submit,
    fwdbwd,
    /** One training step; returns its loss. */
    async step(): Promise<number> {
      const loss = await fwdbwd(false);
      const stepped = await call('POST', '/api/v1/optim_step', { model_id: modelId, seq_id: ++seq, adam_params: { learning_rate: 0.01 }, type: 'optim_step' });
      assert.equal(stepped.status, 200, JSON.stringify(stepped.body));
      await result(stepped.body['request_id'] as string);
      return loss;
    },
  };
}

let lastRun: { trainer: ReturnType<typeof trainer>; worker: ChildProcess } | undefined;

const close = (a: number, b: number): boolean => Math.abs(a - b) <= 1e-5 * Math.abs(b);

// First, while no worker is connected.
test('without local workers and with no remote worker connected, training and sampling get a clear 503 at once', async () => {
  const startedAt = Date.now();
  const created = await createModel(1);
  assert.equal(created.status, 503, JSON.stringify(created.body));
  const message = (created.body['error'] as { message: string }).message;
  assert.match(message, /no worker can serve lathe\/tiny-qwen3/);
  assert.match(message, /--no-local-workers/);
  assert.match(message, /lathe worker --connect/);
  const session = (await call('POST', '/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' })).body['session_id'];
  const sampler = (await call('POST', '/api/v1/create_sampling_session', { session_id: session, sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' })).body['sampling_session_id'];
  const sampled = await call('POST', '/api/v1/asample', {
    sampling_session_id: sampler, seq_id: 0, num_samples: 1, prompt: { chunks: [{ type: 'encoded_text', tokens: [9707, 1879] }] }, sampling_params: { max_tokens: 2, temperature: 0 }, type: 'sample',
  });
  assert.equal(sampled.status, 503, JSON.stringify(sampled.body));
  assert.ok(Date.now() - startedAt < 10_000, 'answered without waiting for a worker');
  assert.deepEqual(await workers(), []);
});

test('a worker with the wrong token is refused with a clear error, and its process exits', async () => {
  // At the frame level: an unauthorized reply, then the server closes the connection.
  const socket = net.connect(server.workerPort!, '127.0.0.1');
  const reader = new FrameReader();
  const replies: Record<string, unknown>[] = [];
  socket.on('data', (chunk: Buffer) => replies.push(...reader.push(chunk)));
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.write(encodeFrame({ op: 'register', id: 0, token: 'not-the-token', models: [], devices: [] }));
  await closed;
  assert.equal(replies.length, 1);
  assert.equal(replies[0]!['ok'], false);
  const error = replies[0]!['error'] as { code: string; message: string };
  assert.equal(error.code, 'unauthorized');
  assert.match(error.message, /wrong worker token/);
  // The real worker says why and exits with status 2 instead of retrying.
  const { child, stderr } = startRemoteWorker('not-the-token');
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  assert.equal(code, 2, stderr());
  assert.match(stderr(), /refused this worker \(unauthorized: wrong worker token/);
  assert.deepEqual(await workers(), []);
});

test('runs train on a remote worker; when it is killed they continue on another remote worker with the same results', async () => {
  const first = startRemoteWorker();
  await until('the first worker to register', async () => ((await workers()).some((w) => w.pid === first.child.pid) ? true : undefined));
  const listed = (await workers()).find((w) => w.pid === first.child.pid)!;
  assert.equal(listed.kind, 'remote');
  assert.match(listed.address, /^127\.0\.0\.1:\d+$/);
  assert.equal(listed.devices[0]?.type, 'cpu');
  assert.ok(listed.models_available?.includes(MODEL));
  assert.deepEqual(listed.models_loaded, []);

  // A control run trains 13 steps with nothing going wrong.
  const control = await createModel(3);
  assert.equal(control.status, 200, JSON.stringify(control.body));
  await result(control.body['request_id'] as string);
  const controlRun = trainer(control.body['model_id'] as string);
  const controlLosses: number[] = [];
  for (let step = 0; step < 13; step++) controlLosses.push(await controlRun.step());
  const [placed] = (await workers()).filter((w) => w.pid === first.child.pid);
  assert.deepEqual(placed?.models_loaded, [MODEL], 'the remote worker holds the model');
  assert.equal((await server.services.pool.pids())[MODEL], first.child.pid, 'the remote worker did the work');

  // The same run again, 12 steps (a snapshot at 10, then two logged steps); a second worker joins.
  const created = await createModel(3);
  await result(created.body['request_id'] as string);
  const run = trainer(created.body['model_id'] as string);
  for (let step = 0; step < 12; step++) assert.ok(close(await run.step(), controlLosses[step]!), `step ${step} matches the control run`);
  const beforeCrash = await run.fwdbwd(true);
  const second = startRemoteWorker();
  await until('the second worker to register', async () => ((await workers()).some((w) => w.pid === second.child.pid) ? true : undefined));

  const crashes: string[] = [];
  const crashed = new Promise<void>((resolve) => {
    const original = server.services.workerCrashed.bind(server.services);
    server.services.workerCrashed = (baseModel: string) => {
      crashes.push(baseModel);
      original(baseModel);
      resolve();
    };
  });
  first.child.kill('SIGKILL');
  await crashed;
  assert.deepEqual(crashes, [MODEL], 'the disconnect is reported like a crashed local worker');
  // Rebuilt on the second worker from the snapshot and the log: the same weights, the same next step.
  const afterCrash = await run.fwdbwd(true);
  assert.ok(close(afterCrash, beforeCrash), `loss ${beforeCrash} before the crash, ${afterCrash} after`);
  const thirteenth = await run.step();
  assert.ok(close(thirteenth, controlLosses[12]!), `step 13: ${thirteenth} after the crash, ${controlLosses[12]} in the control run`);
  assert.equal((await server.services.pool.pids())[MODEL], second.child.pid);
  const now = await workers();
  assert.deepEqual(now.map((w) => [w.pid, w.models_loaded]), [[second.child.pid, [MODEL]]]);
  lastRun = { trainer: run, worker: second.child };
});

test('when the last remote worker dies under a request, the request fails after a bounded wait and new work gets a 503', async () => {
  assert.ok(lastRun, 'runs after the crash test');
  const { worker, trainer: run } = lastRun;
  // Stopped, the worker is still connected: the request is accepted and sent to it, then it dies.
  worker.kill('SIGSTOP');
  const requestId = await run.submit(true);
  worker.kill('SIGKILL');
  const startedAt = Date.now();
  const failed = await result(requestId);
  assert.match(String(failed['error']), /the worker failed repeatedly while running this request \(last: .*waited \d+ ms\)/);
  assert.ok(Date.now() - startedAt < 60_000, 'failed within a few waits of remoteWaitMs');
  assert.deepEqual(await workers(), []);
  const refused = await createModel(5);
  assert.equal(refused.status, 503);
});

test('a worker port in use stops createServer with a sentence naming it, and leaves the data directory free', async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-remote-busy-'));
  const options = { dataDir, models: MODELS, workerHost: '127.0.0.1', workerToken: TOKEN };
  await assert.rejects(createServer({ ...options, workerPort: server.workerPort! }), new RegExp(`cannot open the worker port 127\\.0\\.0\\.1:${server.workerPort}: .*EADDRINUSE`));
  await assert.rejects(createServer({ ...options, workerPort: 0, workerToken: '' }), /workerPort needs a workerToken/);
  const other = await createServer({ ...options, workerPort: 0 });
  await other.close();
});
