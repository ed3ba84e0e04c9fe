import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { Lane } from '../src/scheduler/lane.js';
import { replaySteps, type ReplayStep } from '../src/scheduler/recovery.js';
import type { WorkerClient } from '../src/worker/client.js';
import { changesAdapter, forwardItem, type ForwardOp, type TrainingOp } from '../src/worker/ops.js';
import { startLocalWorker, type LocalWorker } from '../src/worker/process.js';
import { floatsToWire, tokensToWire } from '../src/worker/tensor.js';

// Crash recovery rebuilds a run by sending its logged ops again. Those requests must be the very
// ones the live lane sent (same fields, same optimizer choice), or a rebuilt run quietly differs.
const MODEL = 'lathe/tiny-qwen3';
const RUN = 'replay-run';
let worker: LocalWorker;
let dir: string;

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'lathe-replay-test-'));
  worker = await startLocalWorker({ modelsDir: path.join(dir, 'models'), model: MODEL });
});
after(async () => {
  await worker.stop();
});

interface Sent {
  op: string;
  fields: Record<string, unknown>;
}

/** The real worker's client, recording every request sent through it. */
function recording(sent: Sent[]): WorkerClient {
  return {
    request: (op: string, fields: Record<string, unknown> = {}) => {
      sent.push({ op, fields });
      return worker.client.request(op, fields);
    },
  } as unknown as WorkerClient;
}

function fb(shift: number, kind: 'forward_backward' | 'forward' = 'forward_backward'): ForwardOp {
  const tokens = Array.from({ length: 9 }, (_, i) => [9707, 1879, 11, 1246, 525][(i + shift) % 5]!);
  return {
    kind,
    lossFn: 'cross_entropy',
    lossFnConfig: {},
    data: [{ tokens: tokensToWire(tokens.slice(0, -1)), loss_fn_inputs: { target_tokens: tokensToWire(tokens.slice(1)), weights: floatsToWire(Array(8).fill(1)) } }],
  };
}

/** The run's loss on a fixed batch (a forward pass: no state change). */
async function loss(): Promise<number> {
  const reply = await worker.client.request('forward', { items: [forwardItem(RUN, fb(0, 'forward'))] });
  assert.equal(reply.results[0]?.ok, true, JSON.stringify(reply.results[0]?.error));
  return (reply.results[0]!['metrics'] as Record<string, number>)['loss:sum']!;
}

test("a replayed run sends the worker the same requests as the live run, and ends with the same weights", async () => {
  const saved = path.join(dir, 'saved');
  const ops: TrainingOp[] = [
    { kind: 'create_adapter', lora: { rank: 4, seed: 3 }, optimizer: { type: 'adamw' } },
    fb(1),
    { kind: 'optim_step', adamParams: { learning_rate: 1e-2 } },
    { kind: 'save_adapter', path: saved, includeOptimizer: true },
    fb(2),
    { kind: 'optim_step' }, // logged before optimizer params were chosen: AdamW defaults
    { kind: 'load_adapter', path: saved, includeOptimizer: true },
    fb(3, 'forward'),
    fb(4),
    { kind: 'optim_step', adamParams: { learning_rate: 5e-3 } },
  ];
  const live: Sent[] = [];
  const failures: string[] = [];
  let finished = 0;
  let allDone!: () => void;
  const done = new Promise<void>((resolve) => (allDone = resolve));
  const settle = (): void => {
    if (++finished === ops.length) allDone();
  };
  const lane = new Lane({
    baseModel: MODEL,
    worker: async () => recording(live),
    completion: {
      complete: async () => settle(),
      fail: async (requestId, error) => {
        failures.push(`${requestId}: ${error.message}`);
        settle();
      },
    },
    recover: async () => {},
  });
  lane.registerRun(RUN);
  ops.forEach((op, seqId) => lane.submitTraining({ requestId: `#${seqId}`, owner: 'k', modelId: RUN, seqId, op, bytes: 1, finalize: async (reply) => reply }));
  await done;
  assert.deepEqual(failures, []);
  const liveLoss = await loss();

  await worker.client.request('drop_adapter', { adapter: RUN });
  const replayed: Sent[] = [];
  const steps: ReplayStep[] = ops.map((op, seqId) => ({ seqId, op }));
  assert.equal(await replaySteps(recording(replayed), RUN, steps), ops.filter(changesAdapter).length);

  const stateChanging = new Set(['create_adapter', 'forward_backward', 'optim_step', 'load_adapter', 'drop_adapter']);
  assert.deepEqual(replayed, live.filter((sent) => stateChanging.has(sent.op)));
  assert.deepEqual(replayed.map((sent) => sent.op), ['create_adapter', 'forward_backward', 'optim_step', 'forward_backward', 'optim_step', 'load_adapter', 'forward_backward', 'optim_step']);
  const replayedLoss = await loss();
  assert.ok(Math.abs(replayedLoss - liveLoss) <= 1e-5 * Math.abs(liveLoss), `live ${liveLoss}, replayed ${replayedLoss}`);
});
