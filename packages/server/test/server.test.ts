import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '../src/index.js';
import { encodeForwardBackwardRequest } from '../src/protocol/proto.js';

// Behaviour that a conformance client cannot provoke on demand: session expiry, sampling
// backpressure, a crashed worker. One real server (SQLite, real worker processes) for the file.
let server: LatheServer;
let key: string;
let owner: string;
const MODEL = 'lathe/tiny-qwen3';

before(async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-server-test-'));
  server = await createServer({
    dataDir,
    sessionTimeoutMs: 300,
    longPollMs: 1500,
    maxQueuedSamples: 2,
    models: [{ model_name: MODEL, max_context_length: 2048, vocab_size: 151936, architecture: 'qwen3' }],
  });
  const created = await server.services.store.keys.create('test');
  key = created.key;
  owner = created.id;
});
after(async () => {
  await server.close();
});

async function call(method: 'GET' | 'POST', url: string, payload?: unknown): Promise<{ status: number; body: Record<string, unknown>; headers: Record<string, unknown> }> {
  const response = await server.app.inject({ method, url, headers: { 'x-api-key': key }, ...(payload !== undefined ? { payload: payload as Record<string, unknown> } : {}) });
  return { status: response.statusCode, body: response.json() as Record<string, unknown>, headers: response.headers };
}

async function session(): Promise<string> {
  const created = await call('POST', '/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' });
  return created.body['session_id'] as string;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function result(requestId: string): Promise<Record<string, unknown>> {
  for (;;) {
    const polled = await call('POST', '/api/v1/retrieve_future', { request_id: requestId, allow_metadata_only: true });
    if (polled.status === 408) continue;
    assert.equal(polled.status, 200, JSON.stringify(polled.body));
    return polled.body;
  }
}

test('retrieve_future holds a poll on a pending future and wakes it when the result is ready', async () => {
  const id = await session();
  const created = await call('POST', '/api/v1/create_model', { session_id: id, model_seq_id: 0, base_model: MODEL, lora_config: { rank: 4 }, type: 'create_model' });
  await result(created.body['request_id'] as string);
  const modelId = created.body['model_id'] as string;
  const submit = async (seqId: number) => {
    const body = encodeForwardBackwardRequest({
      modelId, seqId, lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: true,
      data: [{ modelInput: [1, 2, 3], lossFnInputs: { target_tokens: { dtype: 'int64', shape: [3], data: BigInt64Array.from([2n, 3n, 4n]) } } }],
    });
    const response = await server.app.inject({ method: 'POST', url: '/api/v1/forward_backward', headers: { 'x-api-key': key, 'content-type': 'application/x-protobuf' }, payload: Buffer.from(body) });
    return (response.json() as { request_id: string }).request_id;
  };
  // seq 2 waits behind the missing seq 1: a poll is held for the whole long-poll window, then 408.
  const pending = await submit(2);
  const started = Date.now();
  const held = await call('POST', '/api/v1/retrieve_future', { request_id: pending, allow_metadata_only: true });
  assert.equal(held.status, 408);
  assert.deepEqual(held.body, { type: 'try_again', request_id: pending, queue_state: 'active' });
  assert.ok(Date.now() - started >= 1400, `held only ${Date.now() - started} ms`);
  // A poll in progress is answered with the result as soon as seq 1 arrives and both run.
  assert.equal(server.services.hub.waiting, 0);
  const polling = call('POST', '/api/v1/retrieve_future', { request_id: pending, allow_metadata_only: true });
  await until('the poll to be waiting', async () => (server.services.hub.waiting === 1 ? true : undefined));
  await submit(1);
  const woken = await polling;
  assert.equal(woken.status, 200, JSON.stringify(woken.body));
  assert.ok('metrics' in woken.body);
});

test('sessions expire after missed heartbeats', async () => {
  const id = await session();
  assert.equal((await call('POST', '/api/v1/session_heartbeat', { session_id: id, type: 'session_heartbeat' })).status, 200);
  // No heartbeat for longer than sessionTimeoutMs: the housekeeping timer finishes the session.
  // (Watch the store, not the API: a heartbeat would keep the session alive.)
  await until('session expiry', async () => ((await server.services.store.sessions.get(id, owner))?.finishedAt ? true : undefined));
  assert.equal((await call('POST', '/api/v1/session_heartbeat', { session_id: id, type: 'session_heartbeat' })).status, 410);
});

test('asample answers 429 with Retry-After when the queue is full, and queued work still completes', async () => {
  const id = await session();
  const sampler = (await call('POST', '/api/v1/create_sampling_session', { session_id: id, sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' })).body['sampling_session_id'];
  const submit = (seq: number, maxTokens: number) =>
    call('POST', '/api/v1/asample', {
      sampling_session_id: sampler,
      seq_id: seq,
      num_samples: 1,
      prompt: { chunks: [{ type: 'encoded_text', tokens: [9707, 1879] }] },
      sampling_params: { max_tokens: maxTokens, temperature: 0 },
      type: 'sample',
    });
  // The first request occupies the worker; the next ones queue behind it until the limit.
  const first = await submit(0, 300);
  const burst = await Promise.all(Array.from({ length: 8 }, (_, i) => submit(i + 1, 2)));
  const refused = burst.filter((r) => r.status === 429);
  assert.ok(refused.length >= 1, `expected some 429s, got ${burst.map((r) => r.status).join(',')}`);
  for (const r of refused) {
    assert.equal(r.headers['retry-after'], '1');
    assert.equal((r.body['error'] as { category: string }).category, 'user');
  }
  const accepted = [first, ...burst.filter((r) => r.status === 200)];
  for (const r of accepted) {
    const done = await result(r.body['request_id'] as string);
    assert.ok(Array.isArray(done['sequences']));
  }
});

test('a crashed worker is restarted and its runs are rebuilt from the request log', async () => {
  const id = await session();
  const created = await call('POST', '/api/v1/create_model', { session_id: id, model_seq_id: 0, base_model: MODEL, lora_config: { rank: 4, seed: 3 }, type: 'create_model' });
  await result(created.body['request_id'] as string);
  const modelId = created.body['model_id'] as string;
  let seq = 0;
  const fwdbwd = async (forwardOnly: boolean): Promise<number> => {
    const body = encodeForwardBackwardRequest({
      modelId,
      seqId: ++seq,
      lossFn: 'cross_entropy',
      lossFnConfig: {},
      forwardOnly,
      data: [{ modelInput: [9707, 1879, 11, 1246], lossFnInputs: { target_tokens: { dtype: 'int64', shape: [4], data: BigInt64Array.from([1879n, 11n, 1246n, 525n]) } } }],
    });
    const submitted = await server.app.inject({ method: 'POST', url: '/api/v1/forward_backward', headers: { 'x-api-key': key, 'content-type': 'application/x-protobuf' }, payload: Buffer.from(body) });
    assert.equal(submitted.statusCode, 200, submitted.body);
    const done = await result((submitted.json() as { request_id: string }).request_id);
    return (done['metrics'] as Record<string, number>)['loss:sum']!;
  };
  // 12 steps: recovery loads the snapshot taken at step 10, then replays the last two steps.
  for (let step = 0; step < 12; step++) {
    await fwdbwd(false);
    const stepped = await call('POST', '/api/v1/optim_step', { model_id: modelId, seq_id: ++seq, adam_params: { learning_rate: 0.01 }, type: 'optim_step' });
    await result(stepped.body['request_id'] as string);
  }
  const before = await fwdbwd(true);
  const pid = (await server.services.pool.pids())[MODEL];
  assert.ok(pid);
  process.kill(pid, 'SIGKILL');
  await until('the pool to notice the crash', async () => (server.services.pool.has(MODEL) ? undefined : true));
  // The next request starts a fresh worker, which replays the run's log: same weights as before.
  const after = await fwdbwd(true);
  assert.ok(Math.abs(after - before) < 1e-4 * Math.abs(before), `loss ${before} before the crash, ${after} after`);
  assert.notEqual((await server.services.pool.pids())[MODEL], pid);
});
