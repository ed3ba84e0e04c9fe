// Client behaviour through an injected fetch: retries and backoff, Retry-After, timeouts of hanging
// requests, abort signals, typed errors, futures polling, seq_id ordering and reuse, chunking,
// heartbeats. (The real-server behaviour is in e2e.test.ts.)
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  APIConnectionError,
  APITimeoutError,
  APIUserAbortError,
  AuthenticationError,
  BadRequestError,
  ConflictError,
  FutureExpiredError,
  InternalServerError,
  InvalidArgumentError,
  LatheError,
  ModelInput,
  NotFoundError,
  RateLimitError,
  RequestFailedError,
  ServiceClient,
  TensorData,
  type ClientOptions,
  type Datum,
} from '../src/index.js';
import { Transport } from '../src/internal/transport.js';
import { FakeServer, hang, json, reset } from './fake-server.js';

const FAST: ClientOptions = { apiKey: 'tml-test', baseUrl: 'http://fake.test', initialRetryDelayMs: 1, maxRetryDelayMs: 5, heartbeatIntervalMs: 0 };

function client(server: FakeServer, options: ClientOptions = {}): ServiceClient {
  return new ServiceClient({ ...FAST, fetch: server.fetch, ...options });
}

/** A `sleep` for {@link ClientOptions} that records each requested delay and returns at once: tests
 * check the waits the SDK asks for, not how long the machine took. */
function recordingSleep(): { waits: number[]; sleep: NonNullable<ClientOptions['sleep']> } {
  const waits: number[] = [];
  return { waits, sleep: async (ms) => void waits.push(ms) };
}

const datum = (...tokens: number[]): Datum => ({
  modelInput: ModelInput.fromInts(tokens.slice(0, -1)),
  lossFnInputs: { target_tokens: tokens.slice(1), weights: tokens.slice(1).map(() => 1) },
});

/** An assert.throws/rejects validator: an {@link InvalidArgumentError} whose message matches `pattern`. */
function invalid(pattern: RegExp): (error: unknown) => boolean {
  return (error) => {
    assert.ok(error instanceof InvalidArgumentError, `expected an InvalidArgumentError, got ${String(error)}`);
    assert.ok(error instanceof LatheError);
    assert.match(error.message, pattern);
    return true;
  };
}

/** Fails the first `n` calls to `path` with `fail`, then falls through. */
function failFirst(server: FakeServer, path: string, n: number, fail: (call: Parameters<FakeServer['fetch']>[1]) => Response | Promise<Response>): void {
  let left = n;
  server.handlers.push((call) => {
    if (call.path !== path || left <= 0) return undefined;
    left--;
    return fail({ signal: call.signal ?? null });
  });
}

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

describe('futures', () => {
  test('408 and try_again keep polling (with iteration headers); a fast "not yet" does not spin', async () => {
    const server = new FakeServer();
    const { waits, sleep } = recordingSleep();
    const service = client(server, { sleep });
    const training = await service.createLoraTrainingClient({ baseModel: 'm' });
    let polls = 0;
    server.handlers.push((c) => {
      if (c.path !== 'retrieve_future' || c.body.request_id !== 'req-2') return undefined;
      polls++;
      if (polls <= 3) return json({ type: 'try_again', request_id: 'req-2', queue_state: 'active' }, 408);
      if (polls <= 6) return json({ type: 'try_again', request_id: 'req-2' });
      return undefined;
    });
    const out = await training.optimStep({ learningRate: 1e-3 });
    assert.deepEqual(out, { metrics: { 'step:sum': 1 } });
    const calls = server.to('retrieve_future').filter((c) => c.body.request_id === 'req-2');
    assert.deepEqual(
      calls.map((c) => c.headers.get('x-tinker-request-iteration')),
      ['0', '1', '2', '3', '4', '5', '6'],
    );
    assert.equal(calls[0]!.headers.get('x-tinker-request-type'), 'OptimStep');
    assert.equal(calls[0]!.body.allow_metadata_only, true);
    // Six immediate "not yet" answers cost a short, growing pause each (10 ms · 1.5^k), not a hot loop.
    assert.deepEqual(waits, [0, 1, 2, 3, 4, 5].map((k) => 10 * 1.5 ** k));
  });

  test('complete_metadata asks again for the payload', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    server.handlers.push((c) =>
      c.path === 'retrieve_future' && c.body.request_id === 'req-2' && c.body.allow_metadata_only ? json({ status: 'complete_metadata', response_payload_size: 10 }) : undefined,
    );
    await training.optimStep({});
    assert.deepEqual(
      server.to('retrieve_future').filter((c) => c.body.request_id === 'req-2').map((c) => c.body.allow_metadata_only),
      [true, false],
    );
  });

  test('a failed request is a RequestFailedError with the server message and category', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    server.handlers.push((c) => (c.path === 'retrieve_future' && c.body.request_id === 'req-2' ? json({ error: 'NonFiniteInTensor: weights[3] is NaN', category: 'user' }) : undefined));
    const error = await training.forwardBackward([datum(1, 2)], 'cross_entropy').catch((e: unknown) => e);
    assert.ok(error instanceof RequestFailedError);
    assert.equal(error.message, 'NonFiniteInTensor: weights[3] is NaN');
    assert.equal(error.category, 'user');
    assert.equal(error.requestId, 'req-2');
  });

  test('410 is FutureExpiredError; poll 5xx and resets are retried', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    let n = 0;
    server.handlers.push((c) => {
      if (c.path !== 'retrieve_future' || c.body.request_id !== 'req-2') return undefined;
      n++;
      if (n === 1) reset();
      if (n === 2) return json({ error: 'oops' }, 502);
      return json({ error: { type: 'gone', message: 'future req-2 is unknown or expired' } }, 410);
    });
    const error = await training.optimStep({}).catch((e: unknown) => e);
    assert.ok(error instanceof FutureExpiredError);
    assert.equal(error.futureId, 'req-2');
    assert.equal(error.message, 'future req-2 is unknown or expired');
    assert.equal(n, 3);
  });

  test('429 while polling backs off longer each time, up to maxRetryDelayMs', async () => {
    const server = new FakeServer();
    const { waits, sleep } = recordingSleep();
    const training = await client(server, { initialRetryDelayMs: 20, maxRetryDelayMs: 80, sleep }).createLoraTrainingClient({ baseModel: 'm' });
    let n = 0;
    server.handlers.push((c) => {
      if (c.path !== 'retrieve_future' || c.body.request_id !== 'req-2') return undefined;
      return ++n <= 8 ? json({ error: { message: 'slow down' } }, 429) : undefined;
    });
    await training.optimStep({});
    assert.equal(server.to('retrieve_future').filter((c) => c.body.request_id === 'req-2').length, 9);
    // Backoff 20 · 2^k ms (less up to 25 % jitter), capped at 80: 20, 40, 80, 80, … (uncapped the last would be 2560).
    assert.equal(waits.length, 8);
    waits.forEach((ms, k) => {
      const full = Math.min(20 * 2 ** k, 80);
      assert.ok(ms > 0.75 * full - 1e-9 && ms <= full, `wait ${k}: ${ms} ms, expected (0.75..1] · ${full}: ${waits.join(', ')}`);
    });
  });

  test('poll 400s have their own budget and do not use up the 5xx retries', async () => {
    const server = new FakeServer();
    const training = await client(server, { maxRetries: 2 }).createLoraTrainingClient({ baseModel: 'm' });
    const script = [400, 400, 502, 502];
    server.handlers.push((c) => {
      if (c.path !== 'retrieve_future' || c.body.request_id !== 'req-2') return undefined;
      const status = script.shift();
      return status === undefined ? undefined : json({ error: `status ${status}` }, status);
    });
    assert.deepEqual(await training.optimStep({}), { metrics: { 'step:sum': 1 } });
    assert.equal(server.to('retrieve_future').filter((c) => c.body.request_id === 'req-2').length, 5);

    // Four 400s in a row are one too many.
    server.handlers.push((c) => (c.path === 'retrieve_future' && c.body.request_id === 'req-3' ? json({ error: 'bad poll' }, 400) : undefined));
    const error = await training.optimStep({}).catch((e: unknown) => e);
    assert.ok(error instanceof BadRequestError, String(error));
    assert.equal(error.message, 'bad poll');
    assert.equal(server.to('retrieve_future').filter((c) => c.body.request_id === 'req-3').length, 4);
  });

  test('a poll error that is not JSON keeps its text (5xx and 410)', async () => {
    const server = new FakeServer();
    const training = await client(server, { maxRetries: 1 }).createLoraTrainingClient({ baseModel: 'm' });
    const text = (body: string, status: number): Response => new Response(body, { status, headers: { 'content-type': 'text/plain' } });
    server.handlers.push((c) => (c.path === 'retrieve_future' && c.body.request_id === 'req-2' ? text('upstream proxy exploded', 502) : undefined));
    const error = await training.optimStep({}).catch((e: unknown) => e);
    assert.ok(error instanceof InternalServerError, String(error));
    assert.equal(error.body, 'upstream proxy exploded');
    assert.match(error.message, /upstream proxy exploded/);

    server.handlers.push((c) => (c.path === 'retrieve_future' && c.body.request_id === 'req-3' ? text('gone for good', 410) : undefined));
    const expired = await training.optimStep({}).catch((e: unknown) => e);
    assert.ok(expired instanceof FutureExpiredError, String(expired));
    assert.equal(expired.body, 'gone for good');
    assert.match(expired.message, /gone for good/);
  });

  test('an unawaited failing future is not an unhandled rejection', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    server.handlers.push((c) => (c.path === 'optim_step' ? json({ error: 'bad' }, 400) : undefined));
    let unhandled = false;
    const onUnhandled = (): void => {
      unhandled = true;
    };
    process.on('unhandledRejection', onUnhandled);
    training.optimStep({});
    await new Promise((r) => setTimeout(r, 50));
    process.off('unhandledRejection', onUnhandled);
    assert.equal(unhandled, false);
  });
});

describe('training order and seq_id', () => {
  test('pipelined calls are sent one after another in seq order, even when submits are slow', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    let inFlight = 0;
    let maxInFlight = 0;
    server.handlers.push(async (c) => {
      if (c.path !== 'forward_backward' && c.path !== 'optim_step') return undefined;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((r) => setTimeout(r, Math.random() * 20));
      inFlight--;
      return undefined;
    });
    const futures = [];
    for (let i = 0; i < 5; i++) {
      futures.push(training.forwardBackward([datum(1, 2, 3)], 'cross_entropy'));
      futures.push(training.optimStep({ learningRate: 1e-3 }));
    }
    await Promise.all(futures);
    const seqs = server.calls.filter((c) => c.path === 'forward_backward' || c.path === 'optim_step').map((c) => (c.path === 'forward_backward' ? c.body.seqId : c.body.seq_id));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.equal(maxInFlight, 1, 'a submit waits for the previous one to be accepted');
  });

  test('a retried submit resends the same seq_id', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    failFirst(server, 'forward_backward', 2, () => reset());
    failFirst(server, 'optim_step', 1, () => json({ error: 'busy' }, 503));
    await training.forwardBackward([datum(1, 2)], 'cross_entropy');
    await training.optimStep({});
    assert.deepEqual(server.to('forward_backward').map((c) => c.body.seqId), [1, 1, 1]);
    assert.deepEqual(server.to('optim_step').map((c) => c.body.seq_id), [2, 2]);
    const keys = new Set(server.to('forward_backward').map((c) => c.headers.get('x-idempotency-key')));
    assert.equal(keys.size, 1);
  });

  test('a submit the server refused (4xx) uses up its seq_id (the server logs the refusal in its place)', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    failFirst(server, 'forward_backward', 1, () => json({ error: { message: 'token id 999999 at position 0 is outside the vocabulary' } }, 400));
    const error = await training.forwardBackward([datum(999999, 2)], 'cross_entropy').catch((e: unknown) => e);
    assert.ok(error instanceof BadRequestError);
    assert.match(error.message, /outside the vocabulary/);
    await training.optimStep({});
    assert.deepEqual(server.to('optim_step').map((c) => c.body.seq_id), [2]);
    // A 429 that outlasts the retries takes no place on the server: the next call reuses its seq_id.
    failFirst(server, 'optim_step', 4, () => json({ error: { message: 'seq_id 3 is too far ahead' } }, 429, { 'retry-after-ms': '1' }));
    await assert.rejects(training.optimStep({}, { maxRetries: 3 }).result(), RateLimitError);
    await training.optimStep({});
    assert.deepEqual(server.to('optim_step').map((c) => c.body.seq_id), [2, 3, 3, 3, 3, 3]);
  });

  test('wire format: protobuf forward_backward with shapes and dtypes; JSON optim_step with all Adam fields', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm', rank: 4, seed: 7, trainUnembed: false, userMetadata: { who: 'me' } });
    assert.deepEqual(server.to('create_model')[0]!.body, {
      session_id: 'S',
      model_seq_id: 0,
      base_model: 'm',
      lora_config: { rank: 4, train_unembed: false, train_mlp: true, train_attn: true, seed: 7 },
      type: 'create_model',
      user_metadata: { who: 'me' },
    });
    const soft = TensorData.int64([1, 2, 3, 4], [2, 2]);
    await training.forward(
      [{ modelInput: ModelInput.fromInts([5, 6]), lossFnInputs: { target_tokens: soft, weights: TensorData.float32([1, 0, 0.5, 0.5], [2, 2]) } }],
      'cross_entropy',
    );
    const fb = server.to('forward_backward')[0]!;
    assert.equal(fb.headers.get('content-type'), 'application/x-protobuf');
    assert.equal(fb.body.forwardOnly, true);
    assert.deepEqual(fb.body.data[0].lossFnInputs.target_tokens, { dtype: 'int64', shape: [2, 2], data: BigInt64Array.of(1n, 2n, 3n, 4n) });
    await training.forwardBackward([datum(1, 2, 3)], 'ppo', { clip_low_threshold: 0.7 });
    assert.deepEqual(server.to('forward_backward')[1]!.body.lossFnConfig, { clip_low_threshold: 0.7 });
    assert.equal(server.to('forward_backward')[1]!.body.forwardOnly, false);
    await training.optimStep({ learningRate: 0.5, gradClipNorm: 1 });
    assert.deepEqual(server.to('optim_step')[0]!.body, {
      adam_params: { learning_rate: 0.5, beta1: 0.9, beta2: 0.95, eps: 1e-12, weight_decay: 0, grad_clip_norm: 1 },
      model_id: 'S:train:0',
      seq_id: 3,
      type: 'optim_step',
    });
    const polls = server.to('retrieve_future').filter((c) => c.body.request_id === 'req-2');
    assert.match(polls[0]!.headers.get('accept') ?? '', /application\/x-protobuf/);
    assert.equal(polls[0]!.headers.get('x-api-key'), 'tml-test');
  });

  test('large batches are chunked by the server config, sent in seq order, and merged', async () => {
    const server = new FakeServer();
    server.clientConfig = { fwdbwd_max_chunk_len: 2 };
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    const data = [datum(1, 2), datum(1, 2, 3), datum(1, 2, 3, 4), datum(1, 2, 3, 4, 5), datum(1, 2, 3, 4, 5, 6)];
    const fb = training.forwardBackward(data, 'cross_entropy');
    const step = training.optimStep({});
    const out = await fb;
    assert.deepEqual(server.to('forward_backward').map((c) => [c.body.seqId, c.body.data.length]), [
      [1, 2],
      [2, 2],
      [3, 1],
    ]);
    assert.deepEqual(await fb.submitted(), ['req-2', 'req-3', 'req-4']);
    assert.deepEqual(
      out.lossFnOutputs.map((o) => o['logprobs']!.shape[0]),
      [1, 2, 3, 4, 5],
    );
    assert.equal(out.metrics['loss:sum'], 15);
    assert.equal(out.metrics['tokens:mean'], 3, 'means weighted by datums per chunk');
    await step;
    assert.equal(server.to('optim_step')[0]!.body.seq_id, 4);
  });

  test('forwardBackwardCustom: forward with zero weights, then cross_entropy with weights = -dLoss/dLogprobs, in order', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    const targetsOnly = (...tokens: number[]): Datum => ({ modelInput: ModelInput.fromInts(tokens.slice(0, -1)), lossFnInputs: { target_tokens: tokens.slice(1) } });
    const data = [targetsOnly(1, 2, 3), targetsOnly(4, 5)];
    const custom = training.forwardBackwardCustom(data, (d, logprobs) => {
      assert.equal(d, data);
      assert.deepEqual(
        logprobs.map((lp) => Array.from(lp.data)),
        [[-1, -1], [-1]],
      );
      return { loss: 3, gradients: logprobs.map((lp) => lp.data.map((v, i) => v * (i + 2))), metrics: { 'custom:sum': 3 } };
    });
    const step = training.optimStep({});
    const out = await custom;
    await step;
    const [forward, backward] = server.to('forward_backward');
    assert.equal(forward!.body.forwardOnly, true);
    assert.deepEqual(Array.from(forward!.body.data[0].lossFnInputs.weights.data), [0, 0]);
    assert.equal(backward!.body.forwardOnly, false);
    assert.equal(backward!.body.lossFn, 'cross_entropy');
    assert.deepEqual(Array.from(backward!.body.data[0].lossFnInputs.weights.data), [2, 3]);
    assert.deepEqual(Array.from(backward!.body.data[1].lossFnInputs.weights.data), [2]);
    assert.deepEqual(
      [forward!.body.seqId, backward!.body.seqId, server.to('optim_step')[0]!.body.seq_id],
      [1, 2, 3],
    );
    assert.equal(out.metrics['custom:sum'], 3);
    assert.ok('loss:sum' in out.metrics);
  });

  test('forwardBackwardCustom refuses inputs other than target_tokens and weights; a throwing loss frees its turn', async () => {
    const server = new FakeServer();
    const training = await client(server).createLoraTrainingClient({ baseModel: 'm' });
    const bad = { modelInput: ModelInput.fromInts([1]), lossFnInputs: { target_tokens: [2], advantages: [1] } };
    await assert.rejects(training.forwardBackwardCustom([bad], () => ({ loss: 0, gradients: [] })).result(), invalid(/only takes target_tokens and weights/));
    await assert.rejects(
      training.forwardBackwardCustom([datum(1, 2)], () => {
        throw new Error('my loss broke');
      }).result(),
      /my loss broke/,
    );
    await training.optimStep({});
    assert.deepEqual(server.to('optim_step').map((c) => c.body.seq_id), [2]);
    // A 429 that outlasts the retries takes no place on the server: the next call reuses its seq_id.
    failFirst(server, 'optim_step', 4, () => json({ error: { message: 'seq_id 3 is too far ahead' } }, 429, { 'retry-after-ms': '1' }));
    await assert.rejects(training.optimStep({}, { maxRetries: 3 }).result(), RateLimitError);
    await training.optimStep({});
    assert.deepEqual(server.to('optim_step').map((c) => c.body.seq_id), [2, 3, 3, 3, 3, 3]);
  });
});

describe('sampling', () => {
  test('asample: backpressure header, 429 retried with the same seq_id, sequence ids attached, seq ids count from 0', async () => {
    const server = new FakeServer();
    const sampler = await client(server).createSamplingClient({ baseModel: 'm' });
    failFirst(server, 'asample', 1, () => json({ error: 'queue full' }, 429, { 'retry-after': '0.05' }));
    const res = await sampler.sample({ prompt: ModelInput.fromInts([1, 2]), numSamples: 2, samplingParams: { maxTokens: 2, seed: 3 } });
    const calls = server.to('asample');
    assert.deepEqual(
      calls.map((c) => c.body.seq_id),
      [0, 0],
    );
    assert.equal(calls[0]!.headers.get('x-tinker-sampling-backpressure'), '1');
    assert.deepEqual(calls[0]!.body, {
      num_samples: 2,
      prompt: { chunks: [{ tokens: [1, 2], type: 'encoded_text' }] },
      sampling_params: { max_tokens: 2, seed: 3, temperature: 1, top_k: -1, top_p: 1 },
      sampling_session_id: 'S:sample:0',
      seq_id: 0,
      prompt_logprobs: false,
      topk_prompt_logprobs: 0,
      topk_sample_logprobs: 0,
      prompt_alt_tokens_k: 0,
      type: 'sample',
    });
    assert.deepEqual(res.sequences, [
      { stopReason: 'length', tokens: [0, 0], logprobs: [-1, -2], sequenceId: 'seq-0' },
      { stopReason: 'length', tokens: [1, 0], logprobs: [-1, -2], sequenceId: 'seq-1' },
    ]);
    await sampler.sample({ prompt: ModelInput.fromInts([1]) });
    assert.equal(server.to('asample').at(-1)!.body.seq_id, 1);
  });

  test('asample sends the sampling extras as the Python SDK does, refusing a target tensor it would refuse', async () => {
    const server = new FakeServer();
    const sampler = await client(server).createSamplingClient({ baseModel: 'm' });
    const targets = TensorData.int64([-1, 5, 7, -1], [2, 2]);
    await sampler.sample({ prompt: ModelInput.fromInts([1, 2, 3]), topkSampleLogprobs: 2, targetPromptLogprobs: targets });
    const body = server.to('asample').at(-1)!.body;
    assert.deepEqual([body.topk_sample_logprobs, body.prompt_alt_tokens_k], [2, 0]);
    assert.deepEqual(body.target_prompt_logprobs, { data: [-1, 5, 7, -1], dtype: 'int64', shape: [2, 2] });
    const refused = [
      { targetPromptLogprobs: TensorData.float32([1, 2], [2, 1]) as unknown as TensorData<'int64'> },
      { targetPromptLogprobs: TensorData.int64([1, 2]) },
      { promptAltTokensK: -1 },
      { topkSampleLogprobs: 1.5 },
    ];
    for (const extra of refused) await assert.rejects(async () => sampler.sample({ prompt: ModelInput.fromInts([1, 2, 3]), ...extra }), InvalidArgumentError);
    // Draws asked for but not returned (a server that predates them) fail rather than go missing, as in the Python SDK.
    await assert.rejects(async () => sampler.sample({ prompt: ModelInput.fromInts([1, 2, 3]), promptAltTokensK: 2 }), /promptAltTokensK=2 .* no prompt_alt_tokens/);
  });

  test('an expired sample future is resubmitted with a new seq_id', async () => {
    const server = new FakeServer();
    const sampler = await client(server).createSamplingClient({ baseModel: 'm' });
    let expired = false;
    server.handlers.push((c) => {
      if (c.path === 'retrieve_future' && !expired) {
        expired = true;
        return json({ error: 'gone' }, 410);
      }
      return undefined;
    });
    const res = await sampler.sample({ prompt: ModelInput.fromInts([1]) });
    assert.equal(res.sequences.length, 1);
    assert.deepEqual(server.to('asample').map((c) => c.body.seq_id), [0, 1]);
  });
});

describe('service, session and REST', () => {
  test('environment: LATHE_* first, then TINKER_*; a path prefix in the base URL is kept; no key is an error', async () => {
    const saved = { ...process.env };
    try {
      for (const k of ['LATHE_BASE_URL', 'TINKER_BASE_URL', 'LATHE_API_KEY', 'TINKER_API_KEY']) delete process.env[k];
      assert.throws(() => new ServiceClient(), /No API key/);
      process.env['TINKER_API_KEY'] = 'tml-tinker';
      process.env['TINKER_BASE_URL'] = 'http://tinker.test/prefix/';
      const server = new FakeServer();
      server.handlers.push(() => json({ supported_models: [] }));
      await new ServiceClient({ fetch: server.fetch }).getServerCapabilities();
      assert.equal(server.calls[0]!.url, 'http://tinker.test/prefix/api/v1/get_server_capabilities');
      assert.equal(server.calls[0]!.headers.get('x-api-key'), 'tml-tinker');
      process.env['LATHE_API_KEY'] = 'tml-lathe';
      process.env['LATHE_BASE_URL'] = 'http://lathe.test';
      const lathe = new ServiceClient({ fetch: server.fetch });
      assert.equal(lathe.baseUrl, 'http://lathe.test/');
      await lathe.getServerCapabilities();
      assert.equal(server.calls[1]!.headers.get('x-api-key'), 'tml-lathe');
      process.env['LATHE_BASE_URL'] = '';
      assert.equal(new ServiceClient({ fetch: server.fetch }).baseUrl, 'http://tinker.test/prefix/', 'empty counts as unset');
    } finally {
      process.env = saved;
    }
  });

  test('a base URL that is not an absolute http(s) URL is an InvalidArgumentError naming it, before any request', () => {
    const saved = { ...process.env };
    try {
      for (const bad of ['127.0.0.1:8000', 'localhost:8000', 'ftp://h/', '/api', '']) {
        assert.throws(
          () => new ServiceClient({ apiKey: 'k', baseUrl: bad }),
          (e: unknown) => invalid(/Invalid base URL/)(e) && (e as Error).message.includes(`${JSON.stringify(bad)} (from the baseUrl option)`) && (e as Error).message.includes('e.g. http://127.0.0.1:8000'),
          bad,
        );
      }
      for (const k of ['LATHE_BASE_URL', 'TINKER_BASE_URL']) delete process.env[k];
      process.env['LATHE_BASE_URL'] = 'localhost:8000';
      assert.throws(() => new ServiceClient({ apiKey: 'k' }), invalid(/"localhost:8000" \(from LATHE_BASE_URL\)/));
      assert.equal(new ServiceClient({ apiKey: 'k', baseUrl: 'https://h.test:8443/x//' }).baseUrl, 'https://h.test:8443/x/');
    } finally {
      process.env = saved;
    }
  });

  test('a request URL that cannot be built is an InvalidArgumentError at once, not a retried connection error', async () => {
    let fetches = 0;
    const { waits, sleep } = recordingSleep();
    const transport = new Transport({
      baseUrl: 'no-scheme/',
      apiKey: 'k',
      fetch: () => {
        fetches++;
        return Promise.resolve(json({}));
      },
      timeoutMs: 1000,
      maxRetries: 6,
      initialRetryDelayMs: 1000,
      maxRetryDelayMs: 1000,
      defaultHeaders: {},
      sleep,
    });
    await assert.rejects(transport.send({ method: 'GET', path: 'api/v1/healthz' }), invalid(/no-scheme/));
    assert.equal(fetches, 0);
    assert.deepEqual(waits, [], 'not retried');
  });

  test('bad input is an InvalidArgumentError, and rejects (never throws synchronously) from async methods', async () => {
    const server = new FakeServer();
    const service = client(server);
    const training = await service.createLoraTrainingClient({ baseModel: 'm' });
    await assert.rejects(training.forwardBackward([], 'cross_entropy').result(), invalid(/at least one datum/));
    const fractional = { modelInput: ModelInput.fromInts([1]), lossFnInputs: { target_tokens: [1.5] } };
    const error = await training.forwardBackward([fractional], 'cross_entropy').result().catch((e: unknown) => e);
    invalid(/data\[0\]\.lossFnInputs\['target_tokens'\]: .*not an integer/)(error);
    assert.ok((error as Error).cause instanceof InvalidArgumentError, 'the conversion error is kept as the cause');
    await assert.rejects(training.forwardBackwardCustom([datum(1, 2)], () => ({ loss: 0, gradients: [] })).result(), invalid(/returned 0 gradients for 1 datums/));
    await assert.rejects(service.createSamplingClient({ modelPath: 's3://bucket/x' }), invalid(/must start with tinker:\/\//));
    const rest = service.createRestClient();
    const before = server.calls.length;
    // Each call must return a promise (a synchronous throw would fail here, outside assert.rejects).
    const calls = [rest.getTrainingRunByTinkerPath('s3://x'), rest.getCheckpointArchiveUrlFromTinkerPath('tinker://run/other/x'), rest.deleteCheckpointFromTinkerPath('nope')];
    for (const call of calls) await assert.rejects(call, invalid(/tinker/));
    assert.equal(server.calls.length, before, 'nothing was sent');
  });

  test('the session starts lazily once, heartbeats, and close() finishes it and stops beating', async () => {
    const server = new FakeServer();
    const service = client(server, { heartbeatIntervalMs: 30, userMetadata: { a: 'b' }, tags: ['t'], projectId: 'p' });
    assert.equal(server.calls.length, 0, 'constructing makes no request');
    await Promise.all([service.createSamplingClient({ baseModel: 'm' }), service.createLoraTrainingClient({ baseModel: 'm' })]);
    assert.equal(server.to('create_session').length, 1);
    assert.deepEqual(server.to('create_session')[0]!.body, { tags: ['t'], user_metadata: { a: 'b' }, sdk_version: '0.25.0+lathe.ts.0.1.0', type: 'create_session', project_id: 'p' });
    assert.equal(service.sessionId, 'S');
    // Wait for beats rather than for a fixed time: a loaded machine may run the 30 ms timer late.
    for (let waited = 0; server.to('session_heartbeat').length < 2 && waited < 10_000; waited += 10) await new Promise((r) => setTimeout(r, 10));
    assert.ok(server.to('session_heartbeat').length >= 2, `${server.to('session_heartbeat').length} heartbeats`);
    assert.deepEqual(server.to('session_heartbeat')[0]!.body, { session_id: 'S', type: 'session_heartbeat' });
    await service.close();
    assert.equal(server.to('sessions/S/finish').length, 1);
    assert.deepEqual(server.to('sessions/S/finish')[0]!.body, { reason: { type: 'success' } }, 'close() finishes with a reason, as SDK 0.32+ does');
    const beats = server.to('session_heartbeat').length;
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(server.to('session_heartbeat').length, beats, 'no heartbeat after close()');
    await assert.rejects(service.createSamplingClient({ baseModel: 'm' }), /closed/);
  });

  test('Dimuon steps go as optimizer_params, AdamW ones as adam_params; optimizer_config and user_metadata are sent', async () => {
    const server = new FakeServer();
    const service = client(server);
    const training = await service.createLoraTrainingClient({ baseModel: 'm', optimizerConfig: { type: 'dimuon', version: 1 } });
    assert.deepEqual(server.to('create_model')[0]!.body.optimizer_config, { type: 'dimuon', version: 1 });
    await training.optimStep({ type: 'dimuon', learningRate: 0.02, rankLrCorrectionExponent: 0.175 });
    await training.optimStep({ learningRate: 1e-3 });
    const [dimuon, adam] = server.to('optim_step').map((c) => c.body);
    assert.deepEqual(dimuon, { optimizer_params: { type: 'dimuon', learning_rate: 0.02, rank_lr_correction_exponent: 0.175 }, model_id: training.modelId, seq_id: 1, type: 'optim_step' });
    assert.deepEqual(Object.keys(adam).sort(), ['adam_params', 'model_id', 'seq_id', 'type']);
    await training.saveState('s', { userMetadata: { k: 'v' } });
    assert.deepEqual(server.to('save_weights')[0]!.body.user_metadata, { k: 'v' });
    await service.finish('errored', 'boom');
    assert.deepEqual(server.to('sessions/S/finish')[0]!.body, { reason: { type: 'errored' }, detail: 'boom' });
  });

  test('a 410 heartbeat (session finished elsewhere) stops the heartbeat; failed heartbeats are swallowed', async () => {
    const server = new FakeServer();
    let n = 0;
    server.handlers.push((c) => {
      if (c.path !== 'session_heartbeat') return undefined;
      n++;
      return n === 1 ? json({ error: 'x' }, 500) : json({ error: 'session S is finished' }, 410);
    });
    const warned: string[] = [];
    const service = client(server, { heartbeatIntervalMs: 20, logger: { debug: () => undefined, warn: (m) => void warned.push(m) } });
    await service.createSamplingClient({ baseModel: 'm' });
    for (let waited = 0; n < 2 && waited < 2000; waited += 20) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(n, 2, 'one failure (ignored), then 410 stops the heartbeat');
    assert.deepEqual(warned.length, 2, 'each failed heartbeat is logged');
    assert.match(warned[1]!, /heartbeat failed: session S is finished/);
    await service.close();
  });

  test('REST: paths escape run ids and keep the slash of checkpoint ids; archive redirects are followed by hand', async () => {
    const server = new FakeServer();
    server.handlers.push((c) => {
      if (c.path.endsWith('/archive')) return new Response(null, { status: 302, headers: { location: 'https://blob.test/a.tar', expires: 'Wed, 21 Oct 2037 07:28:00 GMT' } });
      if (c.path.startsWith('training_runs')) return json({ checkpoints: [{ checkpoint_id: 'weights/a b', checkpoint_type: 'training', time: 't', tinker_path: 'tinker://S:train:0/weights/a b' }] });
      return undefined;
    });
    const rest = client(server).createRestClient();
    const url = await rest.getCheckpointArchiveUrlFromTinkerPath('tinker://S:train:0/sampler_weights/final');
    assert.deepEqual(url, { url: 'https://blob.test/a.tar', expires: '2037-10-21T07:28:00.000Z' });
    assert.equal(server.calls[0]!.url, 'http://fake.test/api/v1/training_runs/S%3Atrain%3A0/checkpoints/sampler_weights/final/archive');
    const { checkpoints, cursor } = await rest.listCheckpoints('S:train:0');
    assert.equal(checkpoints[0]!.checkpointId, 'weights/a b');
    assert.equal(cursor, undefined);
    await rest.deleteCheckpoint('S:train:0', 'weights/a b');
    assert.equal(server.calls.at(-1)!.url, 'http://fake.test/api/v1/training_runs/S%3Atrain%3A0/checkpoints/weights/a%20b');
    assert.equal(server.calls.at(-1)!.method, 'DELETE');
  });

  test('paging: iterTrainingRuns walks pages until the cursor says done', async () => {
    const server = new FakeServer();
    const runs = Array.from({ length: 5 }, (_, i) => ({ training_run_id: `r${i}`, base_model: 'm', model_owner: 'o', is_lora: true, last_request_time: 't' }));
    server.handlers.push((c) => {
      if (c.path !== 'training_runs') return undefined;
      const q = new URL(c.url).searchParams;
      const [limit, offset] = [Number(q.get('limit')), Number(q.get('offset'))];
      return json({ training_runs: runs.slice(offset, offset + limit), cursor: { offset, limit, total_count: runs.length } });
    });
    const rest = client(server).createRestClient();
    const ids: string[] = [];
    for await (const run of rest.iterTrainingRuns({ limit: 2 })) ids.push(run.trainingRunId);
    assert.deepEqual(ids, ['r0', 'r1', 'r2', 'r3', 'r4']);
    assert.equal(server.to('training_runs').length, 3);
    const page = await rest.listTrainingRuns({ limit: 2, offset: 4 });
    assert.deepEqual(page.cursor, { offset: 4, limit: 2, totalCount: 5 });
    assert.equal(page.trainingRuns[0]!.trainingRunId, 'r4');
  });

  test('rate limit on a REST call ends in RateLimitError after retries', async () => {
    const server = new FakeServer();
    server.handlers.push(() => json({ error: { message: 'too many requests' } }, 429));
    await assert.rejects(client(server, { maxRetries: 2 }).createRestClient().listSessions(), RateLimitError);
    assert.equal(server.calls.length, 3);
  });
});
