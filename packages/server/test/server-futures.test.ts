// Futures, sessions and the sampling queue of one real server: long polls, session expiry, 429
// backpressure, sampling parameter checks, unload_model.
// One real server (SQLite, real worker processes) for the file: fixtures/server-suite.ts.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { encode } from '@msgpack/msgpack';
import { encodeForwardBackwardRequest } from '@lathe/protocol';
import { createServer } from '../src/index.js';
import { openStore } from '../src/store/index.js';
import { until } from './until.js';
import { assertBadRequest, call, createModel, forward, key, MODEL, MODELS, owner, result, sampleJob, server, session, useSuiteServer } from './fixtures/server-suite.js';

useSuiteServer();

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
