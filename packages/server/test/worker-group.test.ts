import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { startLocalWorker, tokensToWire, floatsToWire, wireToNumbers, type LocalWorker, type WireTensor } from '../src/index.js';
import { workerCommand, workerProcesses } from '../src/worker/process.js';

// One worker process and a tensor-parallel group of two (`LATHE_WORKER_PROCS=2`, torchrun, gloo on CPU)
// must give the same answers.
let single: LocalWorker;
let group: LocalWorker;

before(async () => {
  const modelsDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-models-'));
  single = await startLocalWorker({ modelsDir, model: 'lathe/tiny-qwen3', env: { LATHE_WORKER_PROCS: '1' } });
  group = await startLocalWorker({ modelsDir, model: 'lathe/tiny-qwen3', env: { LATHE_WORKER_PROCS: '2', OMP_NUM_THREADS: '1' } });
});
after(async () => {
  await Promise.all([single?.stop(), group?.stop()]);
});

type Fb = { results: { ok: boolean; metrics: Record<string, number>; loss_fn_outputs: { logprobs: WireTensor }[] }[] };
type Sample = { results: { ok: boolean; sequences: { tokens: WireTensor }[] }[] };

async function trainAndSample(worker: LocalWorker): Promise<{ losses: number[]; tokens: number[][] }> {
  const { client } = worker;
  await client.request('create_adapter', { adapter: 'x', lora: { rank: 8, seed: 3 } });
  const tokens = [151643, 9707, 1879, 11, 1246, 525, 498, 30];
  const item = {
    adapter: 'x',
    loss_fn: 'cross_entropy',
    data: [{ tokens: tokensToWire(tokens.slice(0, -1)), loss_fn_inputs: { target_tokens: tokensToWire(tokens.slice(1)), weights: floatsToWire(Array(7).fill(1)) } }],
  };
  const losses: number[] = [];
  for (let step = 0; step < 2; step++) {
    const reply = await client.request<Fb>('forward_backward', { items: [item] });
    losses.push(reply.results[0]!.metrics['loss:sum']!);
    await client.request('optim_step', { adapter: 'x', adam_params: { learning_rate: 0.05 } });
  }
  const sample = await client.request<Sample>('sample', {
    items: [{ adapter: 'x', prompt: tokensToWire(tokens.slice(0, 4)), num_samples: 2, sampling_params: { max_tokens: 5, seed: 11 } }],
  });
  return { losses, tokens: sample.results[0]!.sequences.map((s) => wireToNumbers(s.tokens)) };
}

test('a torchrun group of two processes trains and samples like one worker', async () => {
  const want = await trainAndSample(single);
  const got = await trainAndSample(group);
  for (const [i, loss] of got.losses.entries()) {
    // The all-reduce sums in another order: equal up to float rounding, relative to the loss.
    assert.ok(Math.abs(loss - want.losses[i]!) <= 2e-4 * Math.abs(want.losses[i]!), `step ${i}: ${loss} vs ${want.losses[i]}`);
  }
  assert.deepEqual(got.tokens, want.tokens);
  await group.stop(); // shutdown reaches every rank and torchrun exits
  assert.notEqual(group.child.exitCode, null);
});

test('the process count comes from the option, then LATHE_WORKER_PROCS, and must be a positive integer', () => {
  assert.equal(workerProcesses({ processes: 3, env: { LATHE_WORKER_PROCS: '2' } }), 3);
  assert.equal(workerProcesses({ env: { LATHE_WORKER_PROCS: '2' } }), 2);
  assert.throws(() => workerProcesses({ env: { LATHE_WORKER_PROCS: 'two' } }), /LATHE_WORKER_PROCS/);
  assert.throws(() => workerProcesses({ processes: 0 }), /positive integer/);
  assert.deepEqual(workerCommand(1, ['--socket', 's']), ['-m', 'lathe_worker', '--socket', 's']);
  assert.deepEqual(workerCommand(2, ['--socket', 's']).slice(0, 5), ['-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2']);
});
