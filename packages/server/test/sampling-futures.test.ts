// Sampling for newer Tinker SDKs (docs/protocol.md §5): the extras' validation at submit,
// retrieve_futures (cursor long-poll), cancel_future and join_sampling_session. One real server
// (SQLite, real worker processes); a second one on the same data directory for the restart case.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '../src/index.js';
import { cloneKey, SessionFutures } from '../src/scheduler/session-futures.js';

const MODEL = 'lathe/tiny-qwen3';
const MODELS = [{ model_name: MODEL, max_context_length: 2048, vocab_size: 151936, architecture: 'qwen3' }];
let dataDir: string;
let server: LatheServer;
let key: string;
let otherKey: string;

before(async () => {
  dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-sampling-futures-'));
  server = await createServer({ dataDir, longPollMs: 20_000, models: MODELS });
  key = (await server.services.store.keys.create('alice')).key;
  otherKey = (await server.services.store.keys.create('bob')).key;
});
after(async () => {
  await server.close();
});

type Reply = { status: number; body: Record<string, unknown> };

async function call(url: string, payload: Record<string, unknown>, as = key, on = server): Promise<Reply> {
  const response = await on.app.inject({ method: 'POST', url, headers: { 'x-api-key': as }, payload });
  return { status: response.statusCode, body: response.json() as Record<string, unknown> };
}

async function sampler(as = key, on = server): Promise<string> {
  const session = (await call('/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: '0.32.0', type: 'create_session' }, as, on)).body['session_id'];
  const created = await call('/api/v1/create_sampling_session', { session_id: session, sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' }, as, on);
  return created.body['sampling_session_id'] as string;
}

function sample(samplerId: string, seqId: number, extra: Record<string, unknown> = {}, on = server): Promise<Reply> {
  return call('/api/v1/asample', {
    sampling_session_id: samplerId,
    seq_id: seqId,
    num_samples: 1,
    prompt: { chunks: [{ type: 'encoded_text', tokens: [9707, 1879, 11, 1246] }] },
    sampling_params: { max_tokens: 2, temperature: 0 },
    type: 'sample',
    ...extra,
  }, key, on);
}

async function outcome(requestId: string, on = server): Promise<Record<string, unknown>> {
  for (;;) {
    const polled = await call('/api/v1/retrieve_future', { request_id: requestId, allow_metadata_only: true }, key, on);
    if (polled.status !== 408) return polled.body;
  }
}

function assertBadRequest(reply: Reply, field: string): void {
  assert.equal(reply.status, 400, JSON.stringify(reply.body));
  const error = reply.body['error'] as { type: string; message: string; category: string };
  assert.equal(error.category, 'user');
  assert.match(error.message, new RegExp(field), JSON.stringify(reply.body));
}

test('asample refuses malformed sampling extras at submit with a 400 naming the field', async () => {
  const s = await sampler();
  const ids = (data: number[], shape: number[], more: Record<string, unknown> = {}) => ({ target_prompt_logprobs: { data, dtype: 'int64', shape, ...more } });
  const cases: [Record<string, unknown>, string][] = [
    [{ topk_sample_logprobs: 101 }, 'topk_sample_logprobs'],
    [{ topk_sample_logprobs: -1 }, 'topk_sample_logprobs'],
    [{ topk_sample_logprobs: 'two' }, 'topk_sample_logprobs'],
    [{ prompt_alt_tokens_k: 101 }, 'prompt_alt_tokens_k'],
    [{ prompt_alt_tokens_k: 1.5 }, 'prompt_alt_tokens_k'],
    [{ prompt_logprobs_last_n: -1 }, 'prompt_logprobs_last_n'],
    [{ record_stability_info: 'yes' }, 'record_stability_info'],
    [{ target_prompt_logprobs: 'ids' }, 'target_prompt_logprobs'],
    [{ target_prompt_logprobs: { data: [1.5, 2, 3], dtype: 'float32', shape: [3, 1] } }, 'target_prompt_logprobs'],
    [ids([1, 2], [2, 1]), 'target_prompt_logprobs: must have len\\(prompt\\) - 1 = 3 rows, got 2'],
    [ids([1, 2, 3], [3]), 'target_prompt_logprobs: must be 2-D'],
    [ids([], [3, 0]), 'target_prompt_logprobs: K'],
    [ids(Array(303).fill(1), [3, 101]), 'target_prompt_logprobs: K'],
    [ids([-1, -1, -1], [3, 1]), 'target_prompt_logprobs: names no token id'],
    [ids([-2, 5, 5], [3, 1]), 'target_prompt_logprobs: token id -2'],
    [ids([151936, 5, 5], [3, 1]), 'target_prompt_logprobs: token id 151936'],
    [ids([5, 6], [3, 2], { sparse_crow_indices: [0, 1, 2] }), 'target_prompt_logprobs: sparse_crow_indices and sparse_col_indices'],
    [ids([5, 6], [3, 2], { sparse_crow_indices: [0, 1, 2, 2], sparse_col_indices: [0, 2] }), 'target_prompt_logprobs: col_indices\\[1\\] = 2'],
    [ids([5, 6], [3, 2], { sparse_crow_indices: [0, 2, 2, 2], sparse_col_indices: [1, 1] }), 'target_prompt_logprobs: cell \\[0, 1\\] is stored twice'],
    [ids([5], [3, 2], { sparse_crow_indices: [0, 1, 1], sparse_col_indices: [0] }), 'target_prompt_logprobs: crow_indices has 3 entries'],
  ];
  for (const [extra, field] of cases) assertBadRequest(await sample(s, 1, extra), field);
  // Null and 0 mean "off"; newer keys this server does not know are accepted.
  const off = await sample(s, 2, { topk_sample_logprobs: 0, prompt_alt_tokens_k: null, target_prompt_logprobs: null, prompt_logprobs_last_n: null, record_stability_info: true, some_future_field: { x: 1 } });
  assert.equal(off.status, 200, JSON.stringify(off.body));
  const done = await outcome(off.body['request_id'] as string);
  assert.deepEqual(Object.keys(done).sort(), ['prompt_cache_hit_tokens', 'prompt_logprobs', 'sequences', 'topk_prompt_logprobs', 'type']);
});

test('retrieve_futures reports the completions of one session clone after the cursor, holding the poll until one arrives', async () => {
  const s = await sampler();
  const poll = (prevCursor: number, clone = 0, as = key, timeout?: number) =>
    call('/api/v1/retrieve_futures', { target: { type: 'sampling_session', sampling_session_id: s, cloned_sampler_id: clone }, prev_cursor: prevCursor, ...(timeout ? { timeout } : {}) }, as);
  // A first poll (cursor 0) reports what already finished, from the store.
  const first = (await sample(s, 0)).body['request_id'] as string;
  await outcome(first);
  const start = await poll(0);
  assert.equal(start.status, 200);
  assert.deepEqual(start.body['completions'], [{ state: 'finished', request_id: first }]);
  const cursor = start.body['cursor'] as number;
  assert.ok(Number.isSafeInteger(cursor) && cursor > 0);

  // A poll at that cursor is held until the next sample finishes, then reports only it.
  const held = poll(cursor);
  const second = (await sample(s, 1)).body['request_id'] as string;
  const woken = await held;
  assert.deepEqual(woken.body['completions'], [{ state: 'finished', request_id: second }]);
  assert.ok((woken.body['cursor'] as number) > cursor);
  // Another clone of the same session (seq ids from 1e9 × its counter) has its own completions.
  const cloned = (await sample(s, 2_000_000_000)).body['request_id'] as string;
  await outcome(cloned);
  assert.deepEqual((await poll(woken.body['cursor'] as number, 2)).body['completions'], [{ state: 'finished', request_id: cloned }]);
  assert.deepEqual((await poll(0, 2)).body['completions'], [{ state: 'finished', request_id: cloned }]);
  // Clone 0 has nothing new: with a short `timeout` the poll answers empty, its cursor moved past the clone's entry.
  const timedOut = await poll(woken.body['cursor'] as number, 0, key, 0.05);
  assert.deepEqual(timedOut.body['completions'], []);
  assert.ok((timedOut.body['cursor'] as number) > (woken.body['cursor'] as number));

  // Bad input names the field; another key's session, or an unknown one, is a 404.
  assertBadRequest(await call('/api/v1/retrieve_futures', { target: { type: 'training_run', sampling_session_id: s }, prev_cursor: 0 }), 'target/type');
  assertBadRequest(await call('/api/v1/retrieve_futures', { target: { type: 'sampling_session', sampling_session_id: s }, prev_cursor: -1 }), 'prev_cursor');
  assertBadRequest(await call('/api/v1/retrieve_futures', { target: { type: 'sampling_session', sampling_session_id: s, cloned_sampler_id: 'a' } }), 'cloned_sampler_id');
  assertBadRequest(await call('/api/v1/retrieve_futures', { prev_cursor: 0 }), 'target');
  assert.equal((await poll(0, 0, otherKey)).status, 404);
  assert.equal((await call('/api/v1/retrieve_futures', { target: { type: 'sampling_session', sampling_session_id: 'nope:sample:0' } })).status, 404);
});

test('after a restart, a cursor from the previous server process gets the completions it missed from the store', async () => {
  const s = await sampler();
  const before = (await sample(s, 0)).body['request_id'] as string;
  await outcome(before);
  const seen = await call('/api/v1/retrieve_futures', { target: { type: 'sampling_session', sampling_session_id: s }, prev_cursor: 0 });
  const missed = (await sample(s, 1)).body['request_id'] as string;
  await outcome(missed);
  await server.close();
  server = await createServer({ dataDir, longPollMs: 20_000, models: MODELS });
  const after = await call('/api/v1/retrieve_futures', { target: { type: 'sampling_session', sampling_session_id: s }, prev_cursor: seen.body['cursor'] });
  const ids = (after.body['completions'] as { request_id: string }[]).map((c) => c.request_id);
  assert.ok(ids.includes(missed), JSON.stringify(after.body));
  // The new cursor belongs to this process: polling at it reports only what finishes next.
  const next = call('/api/v1/retrieve_futures', { target: { type: 'sampling_session', sampling_session_id: s }, prev_cursor: after.body['cursor'] });
  const third = (await sample(s, 2)).body['request_id'] as string;
  assert.deepEqual((await next).body['completions'], [{ state: 'finished', request_id: third }]);
});

test('the completion log drops its oldest entries past its capacity, a cursor before them is stale, and close answers held polls', { timeout: 10_000 }, () => {
  let clock = 1000;
  const log = new SessionFutures(() => clock, 2);
  clock = 5;
  const key = cloneKey('S:sample:0', 0);
  for (let i = 0; i < 3; i++) {
    log.watch(`r${i}`, 'S:sample:0', i);
    log.settled(`r${i}`, i === 1 ? 'failed' : 'complete');
    log.settled(`r${i}`, 'complete'); // a second outcome does not count
  }
  assert.equal(log.base, 1_000_000);
  assert.ok(log.stale(0) && log.stale(log.base));
  const all = log.since(key, log.base);
  assert.deepEqual(all.completions, [{ state: 'failed', request_id: 'r1' }, { state: 'finished', request_id: 'r2' }]);
  assert.ok(!log.stale(log.base + 1), 'a cursor at the dropped r0 has seen it');
  assert.ok(!log.stale(log.base + 2) && !log.stale(all.cursor));
  assert.ok(log.stale(all.cursor + 1), 'a cursor this process never handed out');
  assert.deepEqual(log.since(key, all.cursor).completions, []);
  assert.deepEqual(log.since(cloneKey('S:sample:0', 1), log.base).completions, []);
  // A stopping server answers held polls at once.
  const held = log.wait(key, 60_000, new AbortController().signal);
  log.close();
  return Promise.all([held, log.wait(key, 60_000, new AbortController().signal)]).then(() => undefined);
});

test('cancel_future takes a queued sample out of the queue and fails its future; a running one finishes normally', async () => {
  const s = await sampler();
  // A long sample occupies the worker; the next one waits in the queue.
  const running = (await sample(s, 0, { sampling_params: { max_tokens: 1200, temperature: 0 } })).body['request_id'] as string;
  const queued = (await sample(s, 1)).body['request_id'] as string;
  const lane = server.services.lane(MODEL);
  assert.equal(lane.queued.sampling, 1);
  const cancelled = await call('/api/v1/cancel_future', { request_id: queued });
  assert.deepEqual(cancelled, { status: 200, body: { type: 'cancel_future', request_id: queued, cancelled: true } });
  assert.equal(lane.queued.sampling, 0);
  const failed = await outcome(queued);
  assert.equal(failed['category'], 'user');
  assert.match(failed['error'] as string, /cancelled/);
  const notCancelled = await call('/api/v1/cancel_future', { request_id: running });
  assert.equal(notCancelled.body['cancelled'], false);
  assert.ok(Array.isArray((await outcome(running))['sequences']));
  // The poller hears of both: the cancelled one as failed.
  const states = (await call('/api/v1/retrieve_futures', { target: { type: 'sampling_session', sampling_session_id: s }, prev_cursor: 0 })).body['completions'];
  assert.deepEqual(new Map((states as { state: string; request_id: string }[]).map((c) => [c.request_id, c.state])), new Map([[queued, 'failed'], [running, 'finished']]));

  assert.equal((await call('/api/v1/cancel_future', { request_id: 'req_unknown' })).status, 404);
  assert.equal((await call('/api/v1/cancel_future', { request_id: running }, otherKey)).status, 404);
  assertBadRequest(await call('/api/v1/cancel_future', {}), 'request_id');
});

test('join_sampling_session hands out distinct client counters from 1, also to concurrent joins', async () => {
  const s = await sampler();
  const join = (as = key) => call('/api/v1/join_sampling_session', { sampling_session_id: s, type: 'join_sampling_session' }, as);
  assert.deepEqual(await join(), { status: 200, body: { type: 'join_sampling_session', client_counter: 1 } });
  const counters = (await Promise.all(Array.from({ length: 5 }, () => join()))).map((r) => r.body['client_counter'] as number);
  assert.deepEqual([...counters].sort((a, b) => a - b), [2, 3, 4, 5, 6]);
  assert.equal((await join(otherKey)).status, 404);
  assert.equal((await call('/api/v1/join_sampling_session', { sampling_session_id: 'nope:sample:0' })).status, 404);
  assertBadRequest(await call('/api/v1/join_sampling_session', { type: 'join_sampling_session' }), 'sampling_session_id');
});
