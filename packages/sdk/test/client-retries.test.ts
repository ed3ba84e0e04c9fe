// Client behaviour through an injected fetch: retries and backoff, Retry-After, typed errors,
// timeouts of hanging requests and abort signals. (The real-server behaviour is in the e2e tests.)
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { APIConnectionError, APITimeoutError, APIUserAbortError, AuthenticationError, BadRequestError, ConflictError, InternalServerError, NotFoundError, ServiceClient } from '../src/index.js';
import { FakeServer, hang, json, reset } from './fixtures/fake-server.js';
import { client, datum, failFirst, FAST, recordingSleep } from './fixtures/client.js';

describe('retries', () => {
  test('connection resets are retried with the same idempotency key, then succeed', async () => {
    const server = new FakeServer();
    failFirst(server, 'get_server_capabilities', 2, () => reset());
    server.handlers.push((c) => (c.path === 'get_server_capabilities' ? json({ supported_models: [{ model_name: 'm', max_context_length: 8 }] }) : undefined));
    const caps = await client(server).getServerCapabilities();
    assert.deepEqual(caps.supportedModels, [{ modelName: 'm', maxContextLength: 8, trainable: undefined, sampleable: undefined }]);
    const calls = server.to('get_server_capabilities');
    assert.equal(calls.length, 3);
    assert.deepEqual(
      calls.map((c) => c.headers.get('x-stainless-retry-count')),
      [null, '1', '2'],
    );
  });

  test('connection resets exhaust maxRetries into APIConnectionError with the cause', async () => {
    const server = new FakeServer();
    failFirst(server, 'get_server_capabilities', 99, () => reset());
    const error = await client(server, { maxRetries: 2 }).getServerCapabilities().catch((e: unknown) => e);
    assert.ok(error instanceof APIConnectionError && !(error instanceof APITimeoutError), String(error));
    assert.match(error.message, /fetch failed/);
    assert.equal(server.to('get_server_capabilities').length, 3);
  });

  test('429 honours Retry-After (seconds) and retry-after-ms; POST retries reuse the idempotency key', async () => {
    const server = new FakeServer();
    failFirst(server, 'create_session', 1, () => json({ error: { message: 'slow down' } }, 429, { 'retry-after': '0.3' }));
    failFirst(server, 'client/config', 1, () => json({}, 429, { 'retry-after-ms': '150' }));
    const { waits, sleep } = recordingSleep();
    await client(server, { initialRetryDelayMs: 1, sleep }).createSamplingClient({ baseModel: 'm' });
    assert.deepEqual(waits.toSorted((a, b) => a - b), [150, 300], 'Retry-After: 0.3 s and retry-after-ms: 150');
    const sessions = server.to('create_session');
    assert.equal(sessions.length, 2);
    assert.ok(sessions[0]!.headers.get('x-idempotency-key'));
    assert.equal(sessions[0]!.headers.get('x-idempotency-key'), sessions[1]!.headers.get('x-idempotency-key'));
  });

  test('a Retry-After over 60 s is ignored in favour of the backoff', async () => {
    const server = new FakeServer();
    failFirst(server, 'client/config', 1, () => json({}, 429, { 'retry-after': '3600' }));
    const { waits, sleep } = recordingSleep();
    await client(server, { sleep }).createSamplingClient({ baseModel: 'm' });
    assert.equal(waits.length, 1);
    assert.ok(waits[0]! <= FAST.initialRetryDelayMs!, `the first backoff, not 3600 s: ${waits[0]} ms`);
  });

  test('5xx then success; persistent 5xx ends in InternalServerError with the server message intact', async () => {
    const server = new FakeServer();
    failFirst(server, 'client/config', 2, () => json({ error: { type: 'internal_error', message: 'db is down', category: 'server' } }, 503));
    await client(server).createSamplingClient({ baseModel: 'm' });
    assert.equal(server.to('client/config').length, 3);

    const broken = new FakeServer();
    failFirst(broken, 'client/config', 99, () => json({ error: { type: 'internal_error', message: 'internal error: disk full', category: 'server' } }, 500));
    const error = await client(broken, { maxRetries: 3 }).createSamplingClient({ baseModel: 'm' }).catch((e: unknown) => e);
    assert.ok(error instanceof InternalServerError);
    assert.equal(error.status, 500);
    assert.equal(error.message, 'internal error: disk full');
    assert.equal(error.category, 'server');
    assert.equal(broken.to('client/config').length, 4);
  });

  test('the logger hears each exchange (debug) and each retry (warn), with the reason and the wait', async () => {
    const lines: [string, string, Record<string, unknown> | undefined][] = [];
    const logger = { debug: (m: string, f?: Record<string, unknown>) => void lines.push(['debug', m, f]), warn: (m: string, f?: Record<string, unknown>) => void lines.push(['warn', m, f]) };
    const server = new FakeServer();
    failFirst(server, 'client/config', 1, () => json({ error: 'busy' }, 503, { 'retry-after-ms': '3' }));
    failFirst(server, 'create_session', 1, () => reset());
    await client(server, { logger, sleep: async () => undefined }).createSamplingClient({ baseModel: 'm' });
    const warns = lines.filter(([level]) => level === 'warn');
    assert.equal(warns.length, 2);
    assert.deepEqual(warns[0]!.slice(1), ['POST api/v1/client/config: status 503; retry 1 of 6 in 3 ms', { method: 'POST', path: 'api/v1/client/config', attempt: 0, waitMs: 3 }]);
    assert.match(warns[1]![1], /^POST api\/v1\/create_session: Connection error: fetch failed; retry 1 of 6 in \d+ ms$/);
    const debug = lines.filter(([level]) => level === 'debug').map(([, m]) => m);
    assert.deepEqual(debug, ['POST api/v1/client/config -> 503', 'POST api/v1/client/config -> 200', 'POST api/v1/create_session -> 200', 'POST api/v1/create_sampling_session -> 200']);
  });

  test('other 4xx are never retried and map to typed errors with the message verbatim', async () => {
    const message = 'unknown base model "nope"; this server serves: lathe/tiny-qwen3';
    const server = new FakeServer();
    server.handlers.push((c) => (c.path === 'create_sampling_session' ? json({ error: { type: 'unknown_model', message, category: 'user' } }, 400) : undefined));
    const error = await client(server).createSamplingClient({ baseModel: 'nope' }).catch((e: unknown) => e);
    assert.ok(error instanceof BadRequestError);
    assert.equal(error.message, message);
    assert.equal(error.type, 'unknown_model');
    assert.equal(error.category, 'user');
    assert.equal(server.to('create_sampling_session').length, 1);

    for (const [status, cls] of [
      [401, AuthenticationError],
      [404, NotFoundError],
      [409, ConflictError],
    ] as const) {
      const s = new FakeServer();
      s.handlers.push(() => json({ error: { message: `status ${status}` } }, status));
      const e = await client(s).getServerCapabilities().catch((x: unknown) => x);
      assert.ok(e instanceof cls, `${status} → ${String(e)}`);
      assert.equal(s.calls.length, 1, `${status} is not retried`);
    }
  });

  test('x-should-retry overrides the status rule', async () => {
    const server = new FakeServer();
    failFirst(server, 'client/config', 1, () => json({ error: 'busy' }, 409, { 'x-should-retry': 'true' }));
    await client(server).createSamplingClient({ baseModel: 'm' });
    assert.equal(server.to('client/config').length, 2);
    const no = new FakeServer();
    no.handlers.push(() => json({ error: 'nope' }, 503, { 'x-should-retry': 'false' }));
    await assert.rejects(client(no).getServerCapabilities(), InternalServerError);
    assert.equal(no.calls.length, 1);
  });
});

describe('timeouts and abort', () => {
  test('a hanging response times out (APITimeoutError), and the retry succeeds', async () => {
    const server = new FakeServer();
    failFirst(server, 'get_server_capabilities', 1, (init) => hang(init?.signal ?? undefined));
    server.handlers.push((c) => (c.path === 'get_server_capabilities' ? json({ supported_models: [] }) : undefined));
    const caps = await client(server, { timeoutMs: 200 }).getServerCapabilities();
    assert.deepEqual(caps, { supportedModels: [] });
    const [first] = server.to('get_server_capabilities');
    assert.ok(first!.signal?.aborted && first!.signal.reason instanceof APITimeoutError, 'the hanging attempt was ended by its timeout');
    assert.equal(server.to('get_server_capabilities').length, 2);

    const stuck = new FakeServer();
    stuck.handlers.push((c) => hang(c.signal));
    const error = await client(stuck, { timeoutMs: 5000 })
      .getServerCapabilities({ timeoutMs: 150, maxRetries: 0 })
      .catch((e: unknown) => e);
    assert.ok(error instanceof APITimeoutError, String(error));
    assert.match(error.message, /after 150 ms/, 'the per-call timeout wins over the client default');
  });

  test('a body that never finishes also times out; a fetch that ignores its signal cannot hang the SDK', async () => {
    const server = new FakeServer();
    server.handlers.push(() => new Response(new ReadableStream({ start: (c) => c.enqueue(new TextEncoder().encode('{"supp')) }), { headers: { 'content-type': 'application/json' } }));
    await assert.rejects(client(server, { timeoutMs: 100, maxRetries: 0 }).getServerCapabilities(), APITimeoutError);
    const deaf = new ServiceClient({ ...FAST, timeoutMs: 100, maxRetries: 0, fetch: () => new Promise<Response>(() => undefined) });
    await assert.rejects(deaf.getServerCapabilities(), APITimeoutError);
  });

  test('an AbortSignal stops a hanging request with APIUserAbortError, without retrying', async () => {
    const server = new FakeServer();
    server.handlers.push((c) => hang(c.signal));
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('user gave up')), 50);
    const error = await client(server).getServerCapabilities({ signal: controller.signal }).catch((e: unknown) => e);
    assert.ok(error instanceof APIUserAbortError, String(error));
    assert.equal(server.calls.length, 1);
    await assert.rejects(client(server).getServerCapabilities({ signal: AbortSignal.abort() }), APIUserAbortError);
  });

  test('an AbortSignal stops waiting for a future; future.result({ timeoutMs }) bounds the wait', async () => {
    const server = new FakeServer();
    const service = client(server);
    const training = await service.createLoraTrainingClient({ baseModel: 'm' });
    server.handlers.push((c) => (c.path === 'retrieve_future' ? json({ type: 'try_again', request_id: c.body.request_id }, 408) : undefined));
    const controller = new AbortController();
    const fb = training.forwardBackward([datum(1, 2, 3)], 'cross_entropy', undefined, { signal: controller.signal });
    await fb.submitted();
    controller.abort();
    await assert.rejects(fb.result(), APIUserAbortError);
    const step = training.optimStep({});
    await assert.rejects(step.result({ timeoutMs: 100 }), APITimeoutError);
    assert.deepEqual(await step.submitted(), ['req-3'], 'the request itself was submitted');
    server.handlers.pop(); // let the poll finish
    assert.deepEqual(await step, { metrics: { 'step:sum': 2 } });
  });
});
