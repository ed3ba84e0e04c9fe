import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { encode } from '@msgpack/msgpack';
import SqliteDatabase from 'better-sqlite3';
import { sql } from 'kysely';
import { createServer, type LatheServer } from '../src/index.js';
import { encodeForwardBackwardRequest } from '@lathe/protocol';
import { SNAPSHOT_EVERY } from '../src/services.js';
import { openStore } from '../src/store/index.js';
import { WorkerPool } from '../src/worker/pool.js';
import { tokensToWire } from '../src/worker/tensor.js';
import { until } from './until.js';

// Behaviour that a conformance client cannot provoke on demand: session expiry, sampling
// backpressure, a crashed worker. One real server (SQLite, real worker processes) for the file.
let server: LatheServer;
let key: string;
let owner: string;
const MODEL = 'lathe/tiny-qwen3';
const MODELS = [{ model_name: MODEL, max_context_length: 2048, vocab_size: 151936, architecture: 'qwen3' }];
const GAP_TIMEOUT_MS = 600_000;
const MAX_WAITING = 4;
const MAX_WAITING_BYTES = 16 * 1024;

/** The lanes' gap timers: armed and cleared by the server, fired by hand here. */
const gapTimers = {
  armed: new Map<number, { fire: () => void; ms: number }>(),
  last: 0,
  setTimeout(fire: () => void, ms: number): number {
    this.armed.set(++this.last, { fire, ms });
    return this.last;
  },
  clearTimeout(handle: unknown): void {
    this.armed.delete(handle as number);
  },
  /** Fires the timer armed last (the one of the run a test just left waiting), as if its time had come. */
  fireLast(): void {
    const timer = this.armed.get(this.last);
    assert.ok(timer, 'the last gap timer is armed');
    assert.equal(timer.ms, GAP_TIMEOUT_MS);
    this.armed.delete(this.last);
    timer.fire();
  },
};

before(async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-server-test-'));
  server = await createServer({
    dataDir,
    sessionTimeoutMs: 300,
    longPollMs: 1500,
    maxQueuedSamples: 2,
    models: MODELS,
    ordering: { maxWaitingRequests: MAX_WAITING, maxWaitingBytes: MAX_WAITING_BYTES, gapTimeoutMs: GAP_TIMEOUT_MS, timers: gapTimers },
  });
  const created = await server.services.store.keys.create('test');
  key = created.key;
  owner = created.id;
});
after(async () => {
  await server.close();
});

async function call(method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, payload?: unknown): Promise<{ status: number; body: Record<string, unknown>; headers: Record<string, unknown> }> {
  const response = await server.app.inject({ method, url, headers: { 'x-api-key': key }, ...(payload !== undefined ? { payload: payload as Record<string, unknown> } : {}) });
  return { status: response.statusCode, body: response.json() as Record<string, unknown>, headers: response.headers };
}

async function session(): Promise<string> {
  const created = await call('POST', '/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' });
  return created.body['session_id'] as string;
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
  const holding = call('POST', '/api/v1/retrieve_future', { request_id: pending, allow_metadata_only: true });
  await until('the poll to be held', async () => (server.services.hub.waiting === 1 ? true : undefined));
  const held = await holding;
  assert.equal(held.status, 408);
  assert.deepEqual(held.body, { type: 'try_again', request_id: pending, queue_state: 'active' });
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
  // No waiting for the pool to notice: the next request may find the dead worker's client still
  // there (its socket closes before the exit event), and must start a fresh worker all the same,
  // which replays the run's log: same weights as before.
  const after = await fwdbwd(true);
  assert.ok(Math.abs(after - before) < 1e-4 * Math.abs(before), `loss ${before} before the crash, ${after} after`);
  assert.notEqual((await server.services.pool.pids())[MODEL], pid);
});

/** A logged sampling job as `Services.submitSample` takes it: two greedy tokens after a short prompt. */
function sampleJob(maxTokens = 2) {
  return {
    baseModel: MODEL,
    adapter: null,
    load: null,
    item: { prompt: tokensToWire([9707, 1879]), num_samples: 1, sampling_params: { max_tokens: maxTokens, temperature: 0, top_k: -1, top_p: 1 }, prompt_logprobs: false, topk_prompt_logprobs: 0 },
  };
}

async function createModel(seed = 1, extra: Record<string, unknown> = {}): Promise<string> {
  const id = await session();
  const created = await call('POST', '/api/v1/create_model', { session_id: id, model_seq_id: 0, base_model: MODEL, lora_config: { rank: 4, seed }, type: 'create_model', ...extra });
  assert.equal(created.status, 200, JSON.stringify(created.body));
  await result(created.body['request_id'] as string);
  return created.body['model_id'] as string;
}

/** Submits a (protobuf) forward or forward_backward of one datum of `length` tokens; returns the future's request id. */
async function forward(modelId: string, seqId: number, forwardOnly: boolean, { lossFn = 'cross_entropy', length = 3 } = {}): Promise<{ status: number; requestId: string; body: string }> {
  const tokens = Array.from({ length: length + 1 }, (_, i) => [9707, 1879, 11, 1246][i % 4]!);
  const body = encodeForwardBackwardRequest({
    modelId, seqId, lossFn, lossFnConfig: {}, forwardOnly,
    data: [{ modelInput: tokens.slice(0, -1), lossFnInputs: { target_tokens: { dtype: 'int64', shape: [length], data: BigInt64Array.from(tokens.slice(1), BigInt) } } }],
  });
  const response = await server.app.inject({ method: 'POST', url: '/api/v1/forward_backward', headers: { 'x-api-key': key, 'content-type': 'application/x-protobuf' }, payload: Buffer.from(body) });
  return { status: response.statusCode, requestId: response.statusCode === 200 ? (response.json() as { request_id: string }).request_id : '', body: response.body };
}

function assertBadRequest(r: { status: number; body: Record<string, unknown> }, field: string): void {
  assert.equal(r.status, 400, JSON.stringify(r.body));
  const message = (r.body['error'] as { message: string }).message;
  assert.ok(message.includes(field), `expected the error to name ${field}: ${message}`);
}

test('malformed forward_backward JSON bodies get a 400 naming the field, never a 500', async () => {
  const post = async (payload: string | undefined, contentType?: string) => {
    const response = await server.app.inject({
      method: 'POST',
      url: '/api/v1/forward_backward',
      headers: { 'x-api-key': key, ...(contentType ? { 'content-type': contentType } : {}) },
      ...(payload !== undefined ? { payload } : {}),
    });
    return { status: response.statusCode, body: response.json() as Record<string, unknown> };
  };
  const datum = { model_input: { chunks: [{ type: 'encoded_text', tokens: [1, 2] }] }, loss_fn_inputs: { target_tokens: [2, 3] } };
  const valid = { model_id: 'nope:train:0', seq_id: 1, forward_backward_input: { data: [datum], loss_fn: 'cross_entropy' } };
  assert.equal((await post(undefined)).status, 400);
  assert.equal((await post('null', 'application/json')).status, 400);
  assertBadRequest(await post('"text"', 'text/plain'), 'body');
  assertBadRequest(await post(JSON.stringify({ ...valid, forward_backward_input: null }), 'application/json'), 'forward_backward_input');
  assertBadRequest(await post(JSON.stringify({ ...valid, forward_backward_input: { data: [null], loss_fn: 'cross_entropy' } }), 'application/json'), 'data/0');
  assertBadRequest(await post(JSON.stringify({ ...valid, forward_backward_input: { data: [datum, 7], loss_fn: 'cross_entropy' } }), 'application/json'), 'data/1');
  // Without a JSON content type the schema does not apply: the handler's own checks answer.
  assertBadRequest(await post(JSON.stringify({ ...valid, forward_backward_input: { data: [null], loss_fn: 'cross_entropy' } }), 'text/plain'), 'body');
  // A well-formed body reaches the handler (here: an unknown model).
  assert.equal((await post(JSON.stringify(valid), 'application/json')).status, 404);
  const forwardOnly = await call('POST', '/api/v1/forward', { model_id: 'nope:train:0', seq_id: 1, forward_input: { data: [null], loss_fn: 'cross_entropy' } });
  assertBadRequest(forwardOnly, 'data/0');
});

test('ttl_seconds is bounded (1 s to 10 years) everywhere, and listings survive an out-of-range expiry', async () => {
  const modelId = await createModel();
  for (const ttl of [0, -5, 1e13]) {
    assertBadRequest(await call('POST', '/api/v1/save_weights', { model_id: modelId, seq_id: 1, path: 'w', ttl_seconds: ttl, type: 'save_weights' }), 'ttl_seconds');
    assertBadRequest(await call('POST', '/api/v1/save_weights_for_sampler', { model_id: modelId, seq_id: 1, path: 'w', ttl_seconds: ttl, type: 'save_weights_for_sampler' }), 'ttl_seconds');
  }
  const saved = await call('POST', '/api/v1/save_weights', { model_id: modelId, seq_id: 1, path: 'w', ttl_seconds: 3600, type: 'save_weights' });
  assert.equal(saved.status, 200, JSON.stringify(saved.body));
  await result(saved.body['request_id'] as string);
  for (const ttl of [0, 1e13]) assertBadRequest(await call('PUT', `/api/v1/training_runs/${modelId}/checkpoints/weights/w/ttl`, { ttl_seconds: ttl }), 'ttl_seconds');
  assert.equal((await call('PUT', `/api/v1/training_runs/${modelId}/checkpoints/weights/w/ttl`, { ttl_seconds: 10 * 365 * 24 * 3600 })).status, 200);
  // A row stored before the bound existed (expiry beyond the Date range) no longer breaks the listings.
  const row = await server.services.store.checkpoints.get(modelId, 'weights/w', owner);
  assert.ok(row);
  await server.services.store.checkpoints.put({ ...row, expiresAt: Date.now() + 1e16, now: Date.now() });
  const listed = await call('GET', '/api/v1/checkpoints');
  assert.equal(listed.status, 200, JSON.stringify(listed.body));
  assert.equal((await call('GET', '/api/v1/training_runs')).status, 200);
});

test('asample rejects out-of-range sampling parameters with a 400 naming the field', async () => {
  const id = await session();
  const sampler = (await call('POST', '/api/v1/create_sampling_session', { session_id: id, sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' })).body['sampling_session_id'];
  const sample = (extra: Record<string, unknown>, params: Record<string, unknown> = {}) =>
    call('POST', '/api/v1/asample', { sampling_session_id: sampler, prompt: { chunks: [{ type: 'encoded_text', tokens: [9707] }] }, sampling_params: { max_tokens: 1, ...params }, ...extra, type: 'sample' });
  const cases: [Record<string, unknown>, Record<string, unknown>, string][] = [
    [{}, { max_tokens: 0 }, 'max_tokens'],
    [{}, { temperature: -0.5 }, 'temperature'],
    [{}, { top_p: 0 }, 'top_p'],
    [{}, { top_p: 1.5 }, 'top_p'],
    [{}, { top_k: 0 }, 'top_k'],
    [{}, { top_k: -2 }, 'top_k'],
    [{ topk_prompt_logprobs: -1 }, {}, 'topk_prompt_logprobs'],
    [{ topk_prompt_logprobs: 101 }, {}, 'topk_prompt_logprobs'],
    [{ num_samples: 0 }, {}, 'num_samples'],
    [{ num_samples: 129 }, {}, 'num_samples'],
  ];
  for (const [extra, params, field] of cases) assertBadRequest(await sample(extra, params), field);
  // The edges are accepted.
  const ok = await sample({ topk_prompt_logprobs: 100, prompt_logprobs: true }, { temperature: 0, top_k: -1, top_p: 1 });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  assert.ok(Array.isArray((await result(ok.body['request_id'] as string))['sequences']));
});

test('concurrent asample submits never acknowledge more than the queue holds, and every acknowledged one runs', async () => {
  const id = await session();
  const sampler = (await call('POST', '/api/v1/create_sampling_session', { session_id: id, sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' })).body['sampling_session_id'] as string;
  const services = server.services;
  assert.equal(services.lane(MODEL).queued.sampling, 0);
  // All eight check the limit before any is logged: only the queue's two places may be granted.
  const burst = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => services.submitSample(owner, sampler, i, sampleJob())));
  const accepted = burst.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const refused = burst.flatMap((r) => (r.status === 'rejected' ? [r.reason as { statusCode: number }] : []));
  assert.equal(accepted.length, 2, `acknowledged ${accepted.length} of 8 with room for 2`);
  for (const error of refused) assert.equal(error.statusCode, 429);
  for (const requestId of accepted) assert.ok(Array.isArray((await result(requestId))['sequences']));
  // A submit whose logging fails gives its place back: (sampler, 0) belongs to another key here.
  const other = await services.store.keys.create('other');
  for (let i = 0; i < 3; i++) await assert.rejects(services.submitSample(other.id, sampler, 0, sampleJob()), /another owner/);
  const after = await services.submitSample(owner, sampler, 100, sampleJob());
  assert.ok(Array.isArray((await result(after))['sequences']));
});

test('sampling requests resumed after a restart are all queued, whatever the queue limit', async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-server-test-'));
  const store = await openStore(path.join(dataDir, 'lathe.db'));
  const created = await store.keys.create('resume');
  const ids: string[] = [];
  for (let seq = 0; seq < 4; seq++) {
    const { row } = await store.requests.insert({ owner: created.id, target: 'adhoc:resume', seqId: seq, kind: 'sample', payload: encode(sampleJob()), now: Date.now() });
    ids.push(row.requestId);
  }
  await store.close();
  const restarted = await createServer({ dataDir, maxQueuedSamples: 1, models: MODELS });
  try {
    for (const requestId of ids) {
      const done = await until(`${requestId} to finish`, async () => {
        const row = await restarted.services.store.requests.get(requestId, created.id);
        return row?.status === 'complete' || row?.status === 'failed' ? row : undefined;
      }, 30_000);
      assert.equal(done.status, 'complete', JSON.stringify(done.error));
    }
  } finally {
    await restarted.close();
  }
});

test('a store failure while recording a result is contained: the lane keeps running that run', async () => {
  const modelId = await createModel();
  // seq 2 waits for seq 1; recording anything about seq 2 then fails in the database itself.
  const second = await forward(modelId, 2, true);
  assert.equal(second.status, 200, second.body);
  const db = server.services.store.db;
  await sql`CREATE TRIGGER refuse_update BEFORE UPDATE ON requests WHEN OLD.request_id = ${sql.lit(second.requestId)} BEGIN SELECT RAISE(ABORT, 'simulated store failure'); END`.execute(db);
  try {
    const first = await forward(modelId, 1, true);
    await result(first.requestId);
    const third = await forward(modelId, 3, true);
    assert.equal(third.status, 200, third.body);
    assert.ok('metrics' in (await result(third.requestId)));
  } finally {
    await sql`DROP TRIGGER refuse_update`.execute(db);
  }
});

test('a closed worker pool refuses to start workers', async () => {
  const pool = new WorkerPool({ modelsDir: mkdtempSync(path.join(os.tmpdir(), 'lathe-pool-test-')) });
  await pool.close();
  await assert.rejects(pool.client(MODEL), /closed/);
  assert.equal(pool.has(MODEL), false);
  assert.deepEqual(await pool.pids(), {});
});

test('unload_model gets a future of its own, after everything logged, and the model is gone afterwards', async () => {
  const modelId = await createModel();
  const id = await session();
  const sampler = (await call('POST', '/api/v1/create_sampling_session', { session_id: id, sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' })).body['sampling_session_id'] as string;
  // A long sample holds the lane, so seq 1 is still waiting when the unload arrives.
  const long = await server.services.submitSample(owner, sampler, 0, sampleJob(1200));
  const step = await forward(modelId, 1, false);
  assert.equal(step.status, 200, step.body);
  const unload = await call('POST', '/api/v1/unload_model', { model_id: modelId, type: 'unload_model' });
  assert.equal(unload.status, 200, JSON.stringify(unload.body));
  const unloadId = unload.body['request_id'] as string;
  assert.notEqual(unloadId, step.requestId);
  assert.ok('metrics' in (await result(step.requestId)));
  assert.deepEqual(await result(unloadId), { model_id: modelId, type: 'unload_model' });
  const row = await server.services.store.requests.get(unloadId, owner);
  assert.equal(row?.kind, 'unload_model');
  assert.equal(row?.seqId, 2);
  await result(long);
  // The adapter is gone: new work on the model is refused at once (seq 2 would be the unload's retry).
  const after = await forward(modelId, 3, true);
  assert.equal(after.status, 400, after.body);
  assert.match(after.body, /unloaded/);
});

test('a checkpoint loaded after a failed rebuild replaces the lost weights for good', async () => {
  const modelId = await createModel(5);
  let seq = 0;
  const step = async (body: Record<string, unknown>, url: string) => {
    const r = await call('POST', url, { model_id: modelId, seq_id: ++seq, ...body });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return result(r.body['request_id'] as string);
  };
  assert.ok('metrics' in (await result((await forward(modelId, ++seq, false)).requestId)));
  const a = (await step({ path: 'a', type: 'save_weights' }, '/api/v1/save_weights'))['path'] as string;
  const b = (await step({ path: 'b', type: 'save_weights' }, '/api/v1/save_weights'))['path'] as string;
  await step({ path: a, optimizer: false, type: 'load_weights' }, '/api/v1/load_weights');
  // Losing the run's snapshot (taken when `a` was loaded) makes it impossible to rebuild once its worker is gone.
  const snapshots = path.join(server.services.dataDir, 'snapshots', encodeURIComponent(modelId));
  rmSync((JSON.parse(readFileSync(path.join(snapshots, 'latest.json'), 'utf8')) as { path: string }).path, { recursive: true });
  const pid = (await server.services.pool.pids())[MODEL];
  assert.ok(pid);
  process.kill(pid, 'SIGKILL');
  await until('the pool to notice the crash', async () => (server.services.pool.has(MODEL) ? undefined : true));
  // The rebuild fails, but loading `b` restores the run; the next request must not rebuild again.
  const loaded = await step({ path: b, optimizer: false, type: 'load_weights' }, '/api/v1/load_weights');
  assert.equal(loaded['type'], 'load_weights', JSON.stringify(loaded));
  const next = await result((await forward(modelId, ++seq, true)).requestId);
  assert.ok('metrics' in next, JSON.stringify(next));
});

test('after a restart a run goes on where its log says (past requests refused out of order), whichever next request arrives first', async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-server-test-'));
  let current = await createServer({ dataDir, models: MODELS });
  const { key: restartKey } = await current.services.store.keys.create('restart');
  const send = async (method: 'POST', url: string, payload: Record<string, unknown> | Buffer, contentType = 'application/json') => {
    const response = await current.app.inject({ method, url, headers: { 'x-api-key': restartKey, 'content-type': contentType }, payload });
    return { status: response.statusCode, body: response.json() as Record<string, unknown> };
  };
  const done = (requestId: string) =>
    until(`${requestId} to finish`, async () => {
      const polled = await send('POST', '/api/v1/retrieve_future', { request_id: requestId, allow_metadata_only: true });
      return polled.status === 408 ? undefined : polled;
    });
  const fwd = (modelId: string, seqId: number, lossFn = 'cross_entropy') =>
    send('POST', '/api/v1/forward_backward', Buffer.from(encodeForwardBackwardRequest({
      modelId, seqId, lossFn, lossFnConfig: {}, forwardOnly: true,
      data: [{ modelInput: [9707, 1879, 11], lossFnInputs: { target_tokens: { dtype: 'int64', shape: [3], data: BigInt64Array.from([1879n, 11n, 1246n]) } } }],
    })), 'application/x-protobuf');
  try {
    const sessionId = (await send('POST', '/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' })).body['session_id'];
    const created = await send('POST', '/api/v1/create_model', { session_id: sessionId, model_seq_id: 0, base_model: MODEL, lora_config: { rank: 4, seed: 1 }, type: 'create_model' });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    await done(created.body['request_id'] as string);
    const modelId = created.body['model_id'] as string;
    const first = await fwd(modelId, 1);
    assert.equal((await done(first.body['request_id'] as string)).status, 200);
    // seq 3 is refused while seq 2 has not arrived: the log holds it ahead of the run.
    assert.equal((await fwd(modelId, 3, 'kl_magic')).status, 400);
    await current.close();

    current = await createServer({ dataDir, models: MODELS });
    // seq 4 arrives before seq 2 (parallel chunks): it must wait for 2, 2 must not be "stale", and
    // the run must go past the refused seq 3 as before the restart.
    const fourth = await fwd(modelId, 4);
    assert.equal(fourth.status, 200, JSON.stringify(fourth.body));
    const second = await fwd(modelId, 2);
    assert.equal(second.status, 200, JSON.stringify(second.body));
    for (const r of [second, fourth]) assert.equal((await done(r.body['request_id'] as string)).status, 200);
  } finally {
    await current.close();
  }
});

test('a snapshot that cannot be written does not fail the optim_step that took it', async () => {
  const modelId = await createModel(5);
  // A file where the run's snapshot folder should go: every snapshot of this run fails.
  mkdirSync(path.join(server.services.dataDir, 'snapshots'), { recursive: true });
  writeFileSync(path.join(server.services.dataDir, 'snapshots', encodeURIComponent(modelId)), 'in the way');
  let seq = 0;
  for (let step = 1; step <= SNAPSHOT_EVERY; step++) {
    const fb = await forward(modelId, ++seq, false);
    await result(fb.requestId);
    const stepped = await call('POST', '/api/v1/optim_step', { model_id: modelId, seq_id: ++seq, adam_params: { learning_rate: 0.01 }, type: 'optim_step' });
    const done = await result(stepped.body['request_id'] as string);
    assert.equal(done['type'], 'optim_step', `step ${step}: ${JSON.stringify(done)}`);
  }
});

test('results that the store cannot record are answered from memory, kept in seq order, replayed after a crash, and written once the store works again', async () => {
  const modelId = await createModel(7);
  const db = server.services.store.db;
  const store = server.services.store.requests;
  // Every write about seq 1 of this run fails in the database itself (as on a full disk).
  await sql`CREATE TRIGGER refuse_seq1 BEFORE UPDATE ON requests WHEN OLD.target = ${sql.lit(modelId)} AND OLD.seq_id = 1 BEGIN SELECT RAISE(ABORT, 'simulated full disk'); END`.execute(db);
  let dropped = false;
  try {
    const first = await forward(modelId, 1, false);
    assert.equal(first.status, 200, first.body);
    // One poll answers with the real result, although the log could not take it.
    const served = await call('POST', '/api/v1/retrieve_future', { request_id: first.requestId, allow_metadata_only: true });
    assert.equal(served.status, 200, JSON.stringify(served.body));
    assert.ok('metrics' in served.body, JSON.stringify(served.body));
    assert.equal((await store.get(first.requestId, owner))?.status, 'pending');
    const stepped = await call('POST', '/api/v1/optim_step', { model_id: modelId, seq_id: 2, adam_params: { learning_rate: 0.05 }, type: 'optim_step' });
    assert.equal((await result(stepped.body['request_id'] as string))['type'], 'optim_step');
    // seq 2 could be written, but waits behind seq 1: the log holds a prefix of the run.
    assert.equal((await store.get(stepped.body['request_id'] as string, owner))?.status, 'pending');
    const lossOf = async (seqId: number) => ((await result((await forward(modelId, seqId, true)).requestId))['metrics'] as Record<string, number>)['loss:sum']!;
    const before = await lossOf(3);
    // A crash now: the rebuild must replay the held seq 1 and 2 too, or the weights differ.
    const pid = (await server.services.pool.pids())[MODEL];
    assert.ok(pid);
    process.kill(pid, 'SIGKILL');
    const after = await lossOf(4);
    assert.ok(Math.abs(after - before) < 1e-4 * Math.abs(before), `loss ${before} before the crash, ${after} after`);
    // The store works again: everything held is written, in order, with the results that were served.
    await sql`DROP TRIGGER refuse_seq1`.execute(db);
    dropped = true;
    const recorded = await until('the held results to be written', async () => {
      const row = await store.findBySeq(modelId, 4, owner);
      return row?.status === 'complete' ? row : undefined;
    });
    assert.ok(recorded);
    for (let seq = 1; seq <= 4; seq++) assert.equal((await store.findBySeq(modelId, seq, owner))?.status, 'complete', `seq ${seq}`);
    assert.equal(server.services.completion.pending, 0);
    assert.deepEqual(await result(first.requestId), served.body);
  } finally {
    if (!dropped) await sql`DROP TRIGGER refuse_seq1`.execute(db);
  }
});

test('a graceful stop finishes the running worker call, refuses new submits with 503, and the next server runs what was queued', async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-server-test-'));
  let current = await createServer({ dataDir, models: MODELS });
  const { key: stopKey, id: stopOwner } = await current.services.store.keys.create('stop');
  const send = async (url: string, payload: Record<string, unknown> | Buffer, contentType = 'application/json') => {
    const response = await current.app.inject({ method: 'POST', url, headers: { 'x-api-key': stopKey, 'content-type': contentType }, payload });
    return { status: response.statusCode, body: response.json() as Record<string, unknown> };
  };
  const done = async (requestId: string) => {
    for (;;) {
      const polled = await send('/api/v1/retrieve_future', { request_id: requestId, allow_metadata_only: true });
      if (polled.status !== 408) return polled;
    }
  };
  const fwdbwd = (modelId: string, seqId: number) =>
    send('/api/v1/forward_backward', Buffer.from(encodeForwardBackwardRequest({
      modelId, seqId, lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: false,
      data: [{ modelInput: [9707, 1879, 11], lossFnInputs: { target_tokens: { dtype: 'int64', shape: [3], data: BigInt64Array.from([1879n, 11n, 1246n]) } } }],
    })), 'application/x-protobuf');
  try {
    const sessionId = (await send('/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' })).body['session_id'] as string;
    const created = await send('/api/v1/create_model', { session_id: sessionId, model_seq_id: 0, base_model: MODEL, lora_config: { rank: 4, seed: 1 }, type: 'create_model' });
    assert.equal((await done(created.body['request_id'] as string)).status, 200);
    const modelId = created.body['model_id'] as string;
    const sampler = (await send('/api/v1/create_sampling_session', { session_id: sessionId, sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' })).body['sampling_session_id'] as string;
    // A long sample occupies the worker; pipelined training requests queue behind it.
    const long = await current.services.submitSample(stopOwner, sampler, 0, sampleJob(1200));
    await until('the sample to start', async () => (current.services.lane(MODEL).queued.sampling === 0 ? true : undefined));
    const queued: string[] = [];
    for (let seq = 1; seq <= 4; seq++) {
      const submitted = await fwdbwd(modelId, seq);
      assert.equal(submitted.status, 200, JSON.stringify(submitted.body));
      queued.push(submitted.body['request_id'] as string);
    }
    const closing = current.close();
    const refused = await fwdbwd(modelId, 5);
    assert.equal(refused.status, 503, JSON.stringify(refused.body));
    assert.equal((refused.body['error'] as { category: string }).category, 'server');
    await closing;

    // The running call finished and was recorded; nothing acknowledged was failed.
    const log = await openStore(path.join(dataDir, 'lathe.db'));
    try {
      assert.equal((await log.requests.get(long, stopOwner))?.status, 'complete');
      for (const requestId of queued) assert.notEqual((await log.requests.get(requestId, stopOwner))?.status, 'failed');
    } finally {
      await log.close();
    }

    current = await createServer({ dataDir, models: MODELS });
    for (const requestId of [long, ...queued]) {
      const polled = await done(requestId);
      assert.equal(polled.status, 200, JSON.stringify(polled.body));
      assert.ok(!('error' in polled.body), JSON.stringify(polled.body));
    }
    const retried = await fwdbwd(modelId, 5);
    assert.equal(retried.status, 200, JSON.stringify(retried.body));
    assert.ok('metrics' in (await done(retried.body['request_id'] as string)).body);
  } finally {
    await current.close();
  }
});

test('while another process holds the database write lock, /healthz answers and a heartbeat waits for the lock, then succeeds', async () => {
  // A server of its own: this file's server expires sessions after 300 ms.
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-server-test-'));
  const locked = await createServer({ dataDir, models: MODELS });
  try {
    const { key: lockKey } = await locked.services.store.keys.create('lock');
    const post = (url: string, payload: Record<string, unknown>) => locked.app.inject({ method: 'POST', url, headers: { 'x-api-key': lockKey }, payload });
    const id = (await post('/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' })).json<{ session_id: string }>().session_id;
    const other = new SqliteDatabase(path.join(dataDir, 'lathe.db'));
    other.exec('BEGIN EXCLUSIVE');
    let heartbeat: Promise<{ statusCode: number }> | undefined;
    let answered = false;
    try {
      heartbeat = post('/api/v1/session_heartbeat', { session_id: id, type: 'session_heartbeat' }).then((r) => {
        answered = true;
        return r;
      });
      await until('the heartbeat to wait for the lock', async () => (locked.services.store.lockWaits > 0 || answered ? true : undefined));
      // The heartbeat's write waits without blocking the event loop: the health check answers now.
      const health = await locked.app.inject({ method: 'GET', url: '/api/v1/healthz' });
      assert.equal(health.statusCode, 200);
      assert.equal(answered, false, 'the heartbeat cannot have been recorded while the lock is held');
    } finally {
      other.exec('COMMIT');
      other.close();
    }
    assert.equal((await heartbeat)?.statusCode, 200);
  } finally {
    await locked.close();
  }
});

/** A future's final answer (a result or `{error, category}`); fails the test rather than hang if it never comes. */
async function outcome(requestId: string): Promise<Record<string, unknown>> {
  return until(`${requestId} to finish`, async () => {
    const polled = await call('POST', '/api/v1/retrieve_future', { request_id: requestId, allow_metadata_only: true });
    if (polled.status === 408) return undefined;
    assert.equal(polled.status, 200, JSON.stringify(polled.body));
    return polled.body;
  });
}

/** The forward-only loss of the run's current weights at `seqId`. */
async function forwardLoss(modelId: string, seqId: number): Promise<number> {
  const submitted = await forward(modelId, seqId, true);
  assert.equal(submitted.status, 200, submitted.body);
  const done = await outcome(submitted.requestId);
  assert.ok('metrics' in done, JSON.stringify(done));
  return (done['metrics'] as Record<string, number>)['loss:sum']!;
}

test('a training request refused at submit still takes its seq_id: later ones run, and a retry gets the same refusal', async () => {
  const modelId = await createModel();
  // seq 2 arrives first and waits for seq 1, which is refused (the SDK has used seq 1 up).
  const second = await forward(modelId, 2, true);
  assert.equal(second.status, 200, second.body);
  const refused = await forward(modelId, 1, true, { lossFn: 'kl_magic' });
  assert.equal(refused.status, 400, refused.body);
  assert.match(refused.body, /kl_magic/);
  assert.ok('metrics' in (await outcome(second.requestId)));
  // A retry of seq 1 gets the same refusal, whatever it carries now.
  assert.equal((await forward(modelId, 1, true, { lossFn: 'kl_magic' })).body, refused.body);
  assert.equal((await forward(modelId, 1, true)).body, refused.body);
  // Every kind of submit-time refusal takes its place, and the run goes on after each.
  let seq = 2;
  const refusals: [string, Record<string, unknown>, number, RegExp][] = [
    ['/api/v1/optim_step', { adam_params: { learning_rate: -1 }, type: 'optim_step' }, 400, /learning_rate/],
    ['/api/v1/load_weights', { path: `tinker://${modelId}/weights/none`, optimizer: false, type: 'load_weights' }, 404, /none/],
    ['/api/v1/save_weights', { path: 'bad name!', type: 'save_weights' }, 400, /invalid checkpoint name/],
  ];
  for (const [url, body, status, message] of refusals) {
    const first = await call('POST', url, { model_id: modelId, seq_id: ++seq, ...body });
    assert.equal(first.status, status, JSON.stringify(first.body));
    assert.match((first.body['error'] as { message: string }).message, message);
    assert.deepEqual(await call('POST', url, { model_id: modelId, seq_id: seq, ...body }), first);
    assert.ok('metrics' in (await outcome((await forward(modelId, ++seq, true)).requestId)));
  }
  // A retry of an accepted request is its original future, even if it would be refused now.
  const retried = await forward(modelId, 2, true, { lossFn: 'kl_magic' });
  assert.equal(retried.status, 200, retried.body);
  assert.equal(retried.requestId, second.requestId);
  // A seq the run went past that is not in the log (here: deleted from it) is stale, and stays so.
  await server.services.store.db.deleteFrom('requests').where('target', '=', modelId).where('seq_id', '=', 2).execute();
  const stale = await forward(modelId, 2, true);
  assert.equal(stale.status, 400, stale.body);
  assert.match(stale.body, /stale_seq_id/);
  assert.equal((await forward(modelId, 2, true)).body, stale.body);
  assert.ok('metrics' in (await outcome((await forward(modelId, ++seq, true)).requestId)));
});

test('seq_id and model_seq_id must be safe non-negative integers: 400s naming the field, never rounded', async () => {
  const modelId = await createModel();
  const raw = async (url: string, json: string) => {
    const response = await server.app.inject({ method: 'POST', url, headers: { 'x-api-key': key, 'content-type': 'application/json' }, payload: json });
    return { status: response.statusCode, body: response.json() as Record<string, unknown> };
  };
  // 2^53 + 1 is parsed as 2^53: only the bound tells it from a real 2^53.
  for (const seq of ['1e300', '9007199254740993', '9007199254740992', '-1', '1.5', '0', '"3"']) {
    assertBadRequest(await raw('/api/v1/optim_step', `{"model_id":"${modelId}","seq_id":${seq},"adam_params":{"learning_rate":0.01},"type":"optim_step"}`), 'seq_id');
    assertBadRequest(await raw('/api/v1/save_weights', `{"model_id":"${modelId}","seq_id":${seq},"path":"w","type":"save_weights"}`), 'seq_id');
    const datum = '{"model_input":{"chunks":[{"type":"encoded_text","tokens":[1,2]}]},"loss_fn_inputs":{"target_tokens":[2,3]}}';
    assertBadRequest(await raw('/api/v1/forward_backward', `{"model_id":"${modelId}","seq_id":${seq},"forward_backward_input":{"data":[${datum}],"loss_fn":"cross_entropy"}}`), 'seq_id');
  }
  const id = await session();
  for (const seq of ['1e300', '9007199254740993', '-1', '1.5']) {
    assertBadRequest(await raw('/api/v1/create_model', `{"session_id":"${id}","model_seq_id":${seq},"base_model":"${MODEL}","lora_config":{"rank":4},"type":"create_model"}`), 'model_seq_id');
    assertBadRequest(await raw('/api/v1/create_sampling_session', `{"session_id":"${id}","sampling_session_seq_id":${seq},"base_model":"${MODEL}","type":"create_sampling_session"}`), 'sampling_session_seq_id');
  }
  // The largest safe seq_id is a seq_id like any other: it waits for the ones before it (here: too far ahead).
  assert.equal((await raw('/api/v1/optim_step', `{"model_id":"${modelId}","seq_id":9007199254740991,"adam_params":{},"type":"optim_step"}`)).status, 429);
});

test('requests waiting for a missing seq_id are bounded in number and bytes (429), and a refused one does not wedge the run', async () => {
  const modelId = await createModel();
  // seq 1 is missing: seqs 2..5 may wait for it, seq 6 is too far ahead.
  const waiting = [];
  for (let seq = 2; seq <= 1 + MAX_WAITING; seq++) {
    const submitted = await forward(modelId, seq, true);
    assert.equal(submitted.status, 200, `seq ${seq}: ${submitted.body}`);
    waiting.push(submitted.requestId);
  }
  const far = await forward(modelId, MAX_WAITING + 2, true);
  assert.equal(far.status, 429, far.body);
  assert.match(far.body, /seq_id 1 has not arrived/);
  assert.equal(server.services.lane(MODEL).queued.training, MAX_WAITING);
  // Once seq 1 arrives everything runs, and the refused request, sent again, is accepted.
  const first = await forward(modelId, 1, true);
  for (const requestId of [first.requestId, ...waiting]) assert.ok('metrics' in (await outcome(requestId)));
  const again = await forward(modelId, MAX_WAITING + 2, true);
  assert.equal(again.status, 200, again.body);
  assert.ok('metrics' in (await outcome(again.requestId)));

  // Bytes: the first request to wait may be big; a second big one is refused, small ones are not.
  const base = MAX_WAITING + 2; // seq base + 1 is missing from here on
  const bigLength = 600; // ~10 KB logged: one fits in MAX_WAITING_BYTES, two do not
  const big = await forward(modelId, base + 2, true, { length: bigLength });
  assert.equal(big.status, 200, big.body);
  const tooMuch = await forward(modelId, base + 3, true, { length: bigLength });
  assert.equal(tooMuch.status, 429, tooMuch.body);
  assert.match(tooMuch.body, /bytes/);
  const small = await forward(modelId, base + 3, true);
  assert.equal(small.status, 200, small.body);
  const filler = await forward(modelId, base + 1, true);
  for (const r of [filler, big, small]) assert.ok('metrics' in (await outcome(r.requestId)));
});

test('a missing seq_id that never arrives is given up after the gap timeout: the requests behind it fail clearly and the run goes on', async () => {
  const modelId = await createModel();
  const second = await forward(modelId, 2, true);
  const third = await forward(modelId, 3, true);
  assert.equal(third.status, 200, third.body);
  // A refusal far beyond what the run waits for takes no place (it would never be reached).
  const far = await call('POST', '/api/v1/optim_step', { model_id: modelId, seq_id: Number.MAX_SAFE_INTEGER, adam_params: { learning_rate: -1 }, type: 'optim_step' });
  assertBadRequest(far, 'learning_rate');
  assert.equal(await server.services.store.requests.findBySeq(modelId, Number.MAX_SAFE_INTEGER, owner), undefined);
  gapTimers.fireLast();
  for (const r of [second, third]) {
    const failed = await outcome(r.requestId);
    assert.equal(failed['category'], 'user', JSON.stringify(failed));
    assert.match(failed['error'] as string, /waited 600 s for seq_id 1, which did not arrive/);
  }
  // Seq 1, arriving late, is told why it is refused (and so is every retry of it).
  const late = await forward(modelId, 1, true);
  assert.equal(late.status, 400, late.body);
  assert.match(late.body, /seq_id_timeout/);
  assert.match(late.body, /seq_id 1 of .* did not arrive within 600 s/);
  assert.equal((await forward(modelId, 1, true)).body, late.body);
  // The run goes on after the requests that waited.
  assert.ok('metrics' in (await outcome((await forward(modelId, 4, true)).requestId)));
  // A gap filled in time stops its timer.
  const sixth = await forward(modelId, 6, true);
  const timer = gapTimers.last;
  assert.ok(gapTimers.armed.has(timer));
  const fifth = await forward(modelId, 5, true);
  assert.ok(!gapTimers.armed.has(timer), 'the gap timer is cleared once the gap is filled');
  for (const r of [fifth, sixth]) assert.ok('metrics' in (await outcome(r.requestId)));
});

test('a run whose worker dies after it loaded a since-deleted checkpoint is rebuilt with the loaded weights', async () => {
  const modelId = await createModel(7);
  let seq = 0;
  const step = async (url: string, body: Record<string, unknown>) => {
    const r = await call('POST', url, { model_id: modelId, seq_id: ++seq, ...body });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const done = await outcome(r.body['request_id'] as string);
    assert.ok(!('error' in done), JSON.stringify(done));
    return done;
  };
  const train = async () => {
    assert.ok('metrics' in (await outcome((await forward(modelId, ++seq, false)).requestId)));
    await step('/api/v1/optim_step', { adam_params: { learning_rate: 0.05 }, type: 'optim_step' });
  };
  await train();
  const saved = (await step('/api/v1/save_weights', { path: 'x', type: 'save_weights' }))['path'] as string;
  const atSave = await forwardLoss(modelId, ++seq);
  await train();
  const trained = await forwardLoss(modelId, ++seq);
  assert.ok(Math.abs(trained - atSave) > 1e-3 * Math.abs(atSave), `training changed the loss (${atSave} -> ${trained})`);
  await step('/api/v1/load_weights', { path: saved, optimizer: true, type: 'load_weights' });
  const loaded = await forwardLoss(modelId, ++seq);
  assert.ok(Math.abs(loaded - atSave) < 1e-4 * Math.abs(atSave), `loaded ${loaded}, saved at ${atSave}`);
  // The checkpoint goes, then the worker: the run is rebuilt all the same, with the loaded weights.
  assert.equal((await call('DELETE', `/api/v1/training_runs/${modelId}/checkpoints/weights/x`)).status, 200);
  const pid = (await server.services.pool.pids())[MODEL];
  assert.ok(pid);
  process.kill(pid, 'SIGKILL');
  const after = await forwardLoss(modelId, ++seq);
  assert.ok(Math.abs(after - loaded) < 1e-4 * Math.abs(loaded), `loss ${loaded} before the crash, ${after} after`);
  // And training goes on from there (the optimizer state came along).
  await train();
});

test('Dimuon runs come back as Dimuon after a worker crash, from their snapshot or from the replayed create', async () => {
  const dimuon = { optimizer_config: { type: 'dimuon' } };
  // One run past its first snapshot (taken at step SNAPSHOT_EVERY), one that never took one.
  const runs = [{ modelId: await createModel(5, dimuon), steps: SNAPSHOT_EVERY + 1, seq: 0 }, { modelId: await createModel(6, dimuon), steps: 2, seq: 0 }];
  for (const run of runs) {
    for (let i = 0; i < run.steps; i++) {
      assert.ok('metrics' in (await outcome((await forward(run.modelId, ++run.seq, false)).requestId)));
      const stepped = await call('POST', '/api/v1/optim_step', { model_id: run.modelId, seq_id: ++run.seq, optimizer_params: { type: 'dimuon', learning_rate: 0.02 }, type: 'optim_step' });
      assert.equal(stepped.status, 200, JSON.stringify(stepped.body));
      assert.ok('metrics' in (await outcome(stepped.body['request_id'] as string)));
    }
  }
  const before = await Promise.all(runs.map((run) => forwardLoss(run.modelId, ++run.seq)));
  const pid = (await server.services.pool.pids())[MODEL];
  assert.ok(pid);
  process.kill(pid, 'SIGKILL');
  const after = await Promise.all(runs.map((run) => forwardLoss(run.modelId, ++run.seq)));
  runs.forEach((run, i) => {
    const [was, is] = [before[i] ?? NaN, after[i] ?? NaN];
    assert.ok(Math.abs(is - was) < 1e-4 * Math.abs(was), `${run.modelId}: loss ${was} before the crash, ${is} after`);
  });
  // The rebuilt slots use Dimuon (an AdamW slot would refuse the Dimuon steps below).
  const worker = await server.services.pool.client(MODEL);
  const stats = (await worker.request('stats', {})) as { adapters: { adapter: string; optimizer: unknown }[] };
  for (const run of runs) assert.deepEqual(stats.adapters.find((a) => a.adapter === run.modelId)?.optimizer, { type: 'dimuon', version: 1 });
  for (const run of runs) {
    await outcome((await forward(run.modelId, ++run.seq, false)).requestId);
    const stepped = await call('POST', '/api/v1/optim_step', { model_id: run.modelId, seq_id: ++run.seq, optimizer_params: { type: 'dimuon', learning_rate: 0.02 }, type: 'optim_step' });
    const done = await outcome(stepped.body['request_id'] as string);
    assert.ok('metrics' in done, JSON.stringify(done));
  }
});
