// Store failures, restarts and graceful stops: contained store errors, snapshots that cannot be
// written, runs resumed after a restart, a held database write lock.
// One real server (SQLite, real worker processes) for the file: fixtures/server-suite.ts.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import SqliteDatabase from 'better-sqlite3';
import { sql } from 'kysely';
import { encodeForwardBackwardRequest } from '@lathe/protocol';
import { createServer } from '../src/index.js';
import { SNAPSHOT_EVERY } from '../src/services.js';
import { openStore } from '../src/store/index.js';
import { WorkerPool } from '../src/worker/pool.js';
import { until } from './until.js';
import { call, createModel, forward, MODEL, MODELS, result, sampleJob, server, useSuiteServer } from './fixtures/server-suite.js';

useSuiteServer();

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
