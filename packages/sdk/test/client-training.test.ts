// Client behaviour through an injected fetch: training order: seq_id ordering and reuse, the wire
// format, chunking and custom losses. (The real-server behaviour is in the e2e tests.)
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BadRequestError, ModelInput, RateLimitError, TensorData, type Datum, type TrainingClient } from '../src/index.js';
import { FakeServer, json, reset } from './fixtures/fake-server.js';
import { client, datum, failFirst, invalid } from './fixtures/client.js';

/**
 * The run goes on after a refused request that used seq 1 up: optim_step takes seq 2; a 429 that
 * outlasts the retries takes no place on the server, so the next call reuses its seq_id (3).
 */
async function assertStepsGoOnAtSeq2(server: FakeServer, training: TrainingClient): Promise<void> {
  await training.optimStep({});
  assert.deepEqual(server.to('optim_step').map((c) => c.body.seq_id), [2]);
  failFirst(server, 'optim_step', 4, () => json({ error: { message: 'seq_id 3 is too far ahead' } }, 429, { 'retry-after-ms': '1' }));
  await assert.rejects(training.optimStep({}, { maxRetries: 3 }).result(), RateLimitError);
  await training.optimStep({});
  assert.deepEqual(server.to('optim_step').map((c) => c.body.seq_id), [2, 3, 3, 3, 3, 3]);
}

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
    await assertStepsGoOnAtSeq2(server, training);
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
    await assertStepsGoOnAtSeq2(server, training);
  });
});
