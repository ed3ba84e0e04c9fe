// Client behaviour through an injected fetch: sampling, the service and session (environment,
// heartbeats, input checks) and REST. (The real-server behaviour is in the e2e tests.)
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { InvalidArgumentError, ModelInput, RateLimitError, ServiceClient, TensorData } from '../src/index.js';
import { Transport } from '../src/internal/transport.js';
import { FakeServer, json } from './fixtures/fake-server.js';
import { client, datum, failFirst, invalid, recordingSleep } from './fixtures/client.js';

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
