// Checked input and seq order of training requests: malformed bodies, bounded ttl and seq ids,
// refusals that keep their seq_id, bounded waiting for a missing seq_id and its gap timeout.
// One real server (SQLite, real worker processes) for the file: fixtures/server-suite.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { assertBadRequest, call, createModel, forward, gapTimers, key, MAX_WAITING, MODEL, outcome, owner, result, server, session, useSuiteServer } from './fixtures/server-suite.js';

useSuiteServer();

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
