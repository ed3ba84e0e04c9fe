// Client behaviour through an injected fetch: futures polling: try_again, payloads, failures,
// expiry, backoff and error budgets. (The real-server behaviour is in the e2e tests.)
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BadRequestError, FutureExpiredError, InternalServerError, RequestFailedError } from '../src/index.js';
import { FakeServer, json, reset } from './fixtures/fake-server.js';
import { client, datum, recordingSleep } from './fixtures/client.js';

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
