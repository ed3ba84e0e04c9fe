// The SDK across a server restart mid-run: futures submitted before the restart resolve after it
// (polls that meet a closed server, and submits answered 503 while it stops, are retried), and the
// run ends exactly where an uninterrupted run with the same inputs and seed ends. Real servers on
// loopback, real workers, the tiny model.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { createServer, type LatheServer } from '@lathe/server';
import { ModelInput, ServiceClient, type Datum } from '../src/index.js';

const MODEL = 'lathe/tiny-qwen3';
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const STEPS = 8;

/** Step `step`'s batch: two next-token datums of different lengths. */
function batch(step: number): Datum[] {
  return [5, 11].map((length, row) => {
    const seq = Array.from({ length: length + 1 }, (_, i) => 1 + ((step * 104_729 + row * 1_299_709 + i * 15_485_863) % 150_000));
    return { modelInput: ModelInput.fromInts(seq.slice(0, -1)), lossFnInputs: { target_tokens: seq.slice(1), weights: seq.slice(1).map(() => 1) } };
  });
}

async function listen(dataDir: string, port = 0): Promise<{ server: LatheServer; port: number }> {
  const server = await createServer({ dataDir, modelsDir: MODELS_DIR, snapshotEvery: 3 });
  const address = await server.app.listen({ host: '127.0.0.1', port });
  return { server, port: Number(new URL(address).port) };
}

/**
 * Runs STEPS pipelined steps (every forward_backward and optim_step submitted before any is
 * awaited), with `restart` the server is closed once step 3 is done and a new one started on the
 * same data directory and port. Returns each step's loss, the final logprobs of the data (a
 * fingerprint of the weights), and how many requests the new server found unfinished.
 */
async function train(restart: boolean): Promise<{ losses: number[]; logprobs: number[]; resumed: number }> {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-sdk-restart-'));
  let { server, port } = await listen(dataDir);
  const { key } = await server.services.store.keys.create('restart');
  // The server is down for the whole restart (graceful stop, then a new server scanning its models:
  // ~20 s on a busy 2-core box); the retries must outlast that.
  const service = new ServiceClient({ baseUrl: `http://127.0.0.1:${port}`, apiKey: key, initialRetryDelayMs: 200, maxRetries: 12 });
  try {
    const training = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 4, seed: 5 });
    const forwards = [];
    const steps = [];
    for (let step = 0; step < STEPS; step++) {
      forwards.push(training.forwardBackward(batch(step), 'cross_entropy'));
      steps.push(training.optimStep({ learningRate: 0.01 }));
    }
    let resumed = 0;
    if (restart) {
      await steps[2];
      await server.close();
      ({ server } = await listen(dataDir, port));
      resumed = (await server.services.store.requests.unfinished()).length;
    }
    const losses = [];
    for (const forward of forwards) losses.push((await forward).metrics['loss:sum']!);
    await Promise.all(steps);
    const out = await training.forward(batch(STEPS), 'cross_entropy');
    return { losses, logprobs: out.lossFnOutputs.flatMap((o) => Array.from(o['logprobs']!.data as Float32Array)), resumed };
  } finally {
    await service.close();
    await server.close();
  }
}

test('futures pipelined before a server restart resolve after it, and the run ends bit for bit where an uninterrupted one does', async () => {
  const reference = await train(false);
  const restarted = await train(true);
  assert.ok(restarted.resumed > 0, 'the restart lands mid-run');
  assert.deepEqual(restarted.losses, reference.losses);
  assert.deepEqual(restarted.logprobs, reference.logprobs);
});
