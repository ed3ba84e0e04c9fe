import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { startLocalWorker, tokensToWire, floatsToWire, wireToNumbers, WorkerRequestError, type LocalWorker, type WireTensor } from '../src/index.js';

let worker: LocalWorker;

before(async () => {
  worker = await startLocalWorker({ modelsDir: mkdtempSync(path.join(os.tmpdir(), 'lathe-models-')), model: 'lathe/tiny-llama3' });
});
after(async () => {
  await worker.stop();
});

test('a real worker trains, samples and reports errors by category', async () => {
  const { client } = worker;
  const hello = await client.request<{ model: string }>('hello');
  assert.equal(hello.model, 'lathe/tiny-llama3');
  await client.request('create_adapter', { adapter: 'x', lora: { rank: 8, seed: 3 } });
  const tokens = [128000, 9906, 1917, 11, 1268, 527, 499, 30];
  const item = {
    adapter: 'x',
    loss_fn: 'cross_entropy',
    data: [{ tokens: tokensToWire(tokens.slice(0, -1)), loss_fn_inputs: { target_tokens: tokensToWire(tokens.slice(1)), weights: floatsToWire(Array(7).fill(1)) } }],
  };
  type Fb = { results: { ok: boolean; metrics: Record<string, number>; loss_fn_outputs: { logprobs: WireTensor }[] }[] };
  const first = await client.request<Fb>('forward_backward', { items: [item] });
  assert.equal(first.results[0]?.ok, true);
  assert.equal(wireToNumbers(first.results[0]!.loss_fn_outputs[0]!.logprobs).length, 7);
  await client.request('optim_step', { adapter: 'x', adam_params: { learning_rate: 0.02 } });
  const second = await client.request<Fb>('forward', { items: [item] });
  assert.ok(second.results[0]!.metrics['loss:sum']! < first.results[0]!.metrics['loss:sum']!);

  await assert.rejects(client.request('create_adapter', { adapter: 'y', lora: { rank: 12 } }), (error: unknown) => {
    assert.ok(error instanceof WorkerRequestError);
    assert.equal(error.category, 'user');
    assert.equal(error.code, 'invalid_lora_rank');
    assert.match(error.message, /power of 2/);
    return true;
  });
  // Concurrent requests resolve against their own ids.
  const stats = await Promise.all([client.request<{ adapters: unknown[] }>('stats'), client.request<{ protocol: number }>('hello')]);
  assert.equal(stats[0].adapters.length, 1);
  assert.equal(stats[1].protocol, 1);
});
