/**
 * Placement across workers and servers, with real worker processes:
 * - one server, two base models: each gets its own worker, both train, and the workers keep at most
 *   the configured number of adapters on the device (the rest in host memory or on disk);
 * - two servers on one database (a SQLite file, and PostgreSQL when `LATHE_TEST_DATABASE_URL` is
 *   set): each trains its own runs, refuses the other's (409), and resumes only its own requests.
 *
 *   scripts/with-postgres.sh node --conditions=lathe-source --import tsx --test packages/server/test/placement.test.ts
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { encode } from '@msgpack/msgpack';
import { createServer, type LatheServer } from '../src/index.js';
import { encodeForwardBackwardRequest } from '@lathe/protocol';
import { openStore, type Store } from '../src/store/index.js';
import { tokensToWire } from '../src/worker/tensor.js';
import { databaseLanes } from './fixtures/postgres.js';
import { until } from './until.js';

const QWEN = 'lathe/tiny-qwen3';
const LLAMA = 'lathe/tiny-llama3';
const MODELS = [
  { model_name: QWEN, max_context_length: 2048, vocab_size: 151936, architecture: 'qwen3' },
  { model_name: LLAMA, max_context_length: 4096, vocab_size: 128256, architecture: 'llama' },
];
function tempDir(prefix: string): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** An API client of one server for one key. */
class Client {
  constructor(readonly server: LatheServer, private readonly key: string) {}

  async call(method: 'GET' | 'POST', url: string, payload?: Record<string, unknown>): Promise<{ status: number; body: Record<string, unknown> }> {
    const response = await this.server.app.inject({ method, url, headers: { 'x-api-key': this.key }, ...(payload ? { payload } : {}) });
    return { status: response.statusCode, body: response.json() as Record<string, unknown> };
  }

  async result(requestId: string): Promise<Record<string, unknown>> {
    return until(`${requestId} to finish`, async () => {
      const polled = await this.call('POST', '/api/v1/retrieve_future', { request_id: requestId, allow_metadata_only: true });
      if (polled.status === 408) return undefined;
      assert.equal(polled.status, 200, JSON.stringify(polled.body));
      return polled.body;
    });
  }

  async createModel(baseModel: string, seed: number): Promise<string> {
    const session = await this.call('POST', '/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' });
    const created = await this.call('POST', '/api/v1/create_model', { session_id: session.body['session_id'], model_seq_id: 0, base_model: baseModel, lora_config: { rank: 4, seed }, type: 'create_model' });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    assert.equal((await this.result(created.body['request_id'] as string))['type'], 'create_model');
    return created.body['model_id'] as string;
  }

  /** Submits a forward_backward of one short datum; the raw reply (a future, or a refusal). */
  async submitForwardBackward(modelId: string, seqId: number): Promise<{ status: number; body: Record<string, unknown> }> {
    const tokens = [9707, 1879, 11, 1246, 9707];
    const body = encodeForwardBackwardRequest({
      modelId, seqId, lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: false,
      data: [{ modelInput: tokens.slice(0, -1), lossFnInputs: { target_tokens: { dtype: 'int64', shape: [4], data: BigInt64Array.from(tokens.slice(1), BigInt) } } }],
    });
    const response = await this.server.app.inject({ method: 'POST', url: '/api/v1/forward_backward', headers: { 'x-api-key': this.key, 'content-type': 'application/x-protobuf' }, payload: Buffer.from(body) });
    return { status: response.statusCode, body: response.json() as Record<string, unknown> };
  }

  /** One training step (forward_backward at `seqId`, optim_step at `seqId + 1`); returns the loss before it. */
  async trainStep(modelId: string, seqId: number): Promise<number> {
    const submitted = await this.submitForwardBackward(modelId, seqId);
    assert.equal(submitted.status, 200, JSON.stringify(submitted.body));
    const done = await this.result(submitted.body['request_id'] as string);
    const loss = (done['metrics'] as Record<string, number> | undefined)?.['loss:sum'];
    assert.ok(typeof loss === 'number' && Number.isFinite(loss), JSON.stringify(done));
    const stepped = await this.call('POST', '/api/v1/optim_step', { model_id: modelId, seq_id: seqId + 1, adam_params: { learning_rate: 0.01 }, type: 'optim_step' });
    assert.equal(stepped.status, 200, JSON.stringify(stepped.body));
    assert.equal((await this.result(stepped.body['request_id'] as string))['type'], 'optim_step');
    return loss;
  }

  /** Trains `steps` steps from seq 1; returns the losses. */
  async train(modelId: string, steps: number, firstSeq = 1): Promise<number[]> {
    const losses: number[] = [];
    for (let step = 0; step < steps; step++) losses.push(await this.trainStep(modelId, firstSeq + 2 * step));
    return losses;
  }
}

interface TierCounts {
  adapters: number;
  bytes: number;
}
interface WorkerStats {
  model: string;
  adapters: { adapter: string; tier: string }[];
  placement: { limits: Record<string, number | null>; device: TierCounts; host: TierCounts; disk: TierCounts };
}

describe('placement on one server', () => {
  test('two base models get a worker each and both train; a worker keeps at most the configured adapters on the device', async () => {
    const server = await createServer({ dataDir: tempDir('lathe-placement-'), models: MODELS, maxResidentAdapters: 1, maxHostAdapters: 0 });
    try {
      const created = await server.services.store.keys.create('placement');
      const client = new Client(server, created.key);
      // Twins: the same seed and data give the same losses, wherever the adapters were in between.
      const [first, second, llama] = [await client.createModel(QWEN, 1), await client.createModel(QWEN, 1), await client.createModel(LLAMA, 3)];
      // Interleaved: each qwen run's turn moves the other one to disk and back.
      const [firstLosses, secondLosses, llamaLosses]: [number[], number[], number[]] = [[], [], []];
      for (let step = 0; step < 3; step++) {
        firstLosses.push(await client.trainStep(first, 1 + 2 * step));
        secondLosses.push(await client.trainStep(second, 1 + 2 * step));
        llamaLosses.push(await client.trainStep(llama, 1 + 2 * step));
      }
      for (const losses of [firstLosses, llamaLosses]) assert.ok(losses[2]! < losses[0]!, `losses fall: ${losses}`);
      assert.deepEqual(secondLosses, firstLosses);
      const pids = await server.services.pool.pids();
      assert.ok(pids[QWEN] && pids[LLAMA] && pids[QWEN] !== pids[LLAMA], JSON.stringify(pids));
      const qwen = await (await server.services.pool.client(QWEN)).request<WorkerStats>('stats');
      assert.equal(qwen.model, QWEN);
      assert.deepEqual(qwen.placement.limits, { max_resident_adapters: 1, max_host_adapters: 0 });
      assert.deepEqual(Object.fromEntries(qwen.adapters.map((a) => [a.adapter, a.tier])), { [first]: 'disk', [second]: 'device' });
      assert.equal(qwen.placement.disk.adapters, 1);
      assert.ok(qwen.placement.disk.bytes > 0);
      const llamaStats = await (await server.services.pool.client(LLAMA)).request<WorkerStats>('stats');
      assert.deepEqual(llamaStats.adapters.map((a) => a.adapter), [llama]);
    } finally {
      await server.close();
    }
  });

  test('bad limits are refused before anything starts', async () => {
    await assert.rejects(createServer({ dataDir: tempDir('lathe-placement-'), models: MODELS, maxResidentAdapters: 0 }), /maxResidentAdapters must be an integer >= 1, got 0/);
    await assert.rejects(createServer({ dataDir: tempDir('lathe-placement-'), models: MODELS, maxHostAdapters: 1.5 }), /maxHostAdapters must be an integer >= 0, got 1.5/);
  });
});

const lanes = databaseLanes('lathe_placement');

/** Losses of twin runs on two servers: the same computation, so equal up to float noise. */
function assertCloseLosses(actual: number[], expected: number[]): void {
  assert.equal(actual.length, expected.length);
  actual.forEach((loss, i) => assert.ok(Math.abs(loss - expected[i]!) <= 1e-5 * Math.abs(expected[i]!), `step ${i}: ${loss} vs ${expected[i]}`));
}

/** A logged, not yet run sampling request (as a server logs one before acknowledging it). */
async function loggedSample(store: Store, owner: string, target: string, serverId?: string): Promise<string> {
  const job = {
    baseModel: QWEN,
    adapter: null,
    load: null,
    item: { prompt: tokensToWire([9707, 1879]), num_samples: 1, sampling_params: { max_tokens: 2, temperature: 0, top_k: -1, top_p: 1 }, prompt_logprobs: false, topk_prompt_logprobs: 0 },
  };
  const { row } = await store.requests.insert({ owner, target, seqId: 0, kind: 'sample', payload: encode(job), now: Date.now(), ...(serverId ? { serverId } : {}) });
  return row.requestId;
}

async function finished(store: Store, requestId: string, owner: string): Promise<string> {
  return until(`${requestId} to finish`, async () => {
    const row = await store.requests.get(requestId, owner);
    return row?.status === 'complete' || row?.status === 'failed' ? row.status : undefined;
  });
}

for (const lane of lanes) {
  describe(`several servers on one database (${lane.name})`, { skip: lane.skip }, () => {
    test('each server trains its own runs, refuses the other\'s with 409, and resumes only its own requests', async () => {
      const database = await lane.database();
      const admin = await openStore(database.url);
      const servers: LatheServer[] = [];
      const start = async (dataDir: string): Promise<LatheServer> => {
        const server = await createServer({ dataDir, databaseUrl: database.url, models: MODELS });
        servers.push(server);
        return server;
      };
      try {
        const key = await admin.keys.create('shared');
        // A request logged before servers recorded ownership is adopted by the first server to start.
        const legacy = await loggedSample(admin, key.id, 'adhoc:legacy');
        const dirA = tempDir('lathe-server-a-');
        const a = await start(dirA);
        const b = await start(tempDir('lathe-server-b-'));
        assert.notEqual(a.services.serverId, b.services.serverId);
        assert.equal(await finished(admin, legacy, key.id), 'complete');
        assert.equal((await admin.requests.get(legacy, key.id))?.status, 'complete');

        // The key made in the database works on both; each trains its own run, at the same time. The
        // runs are twins (same seed, same data), so every step must give both the same loss.
        const [onA, onB] = [new Client(a, key.key), new Client(b, key.key)];
        const [runA, runB] = await Promise.all([onA.createModel(QWEN, 1), onB.createModel(QWEN, 1)]);
        const [lossesA, lossesB] = await Promise.all([onA.train(runA, 3), onB.train(runB, 3)]);
        assert.ok(lossesA[2]! < lossesA[0]!, `losses fall: ${lossesA}`);
        assertCloseLosses(lossesB, lossesA);

        // A's run sent to B: a clear refusal naming A, nothing logged in the run's order, A goes on.
        const refused = await onB.submitForwardBackward(runA, 7);
        assert.equal(refused.status, 409, JSON.stringify(refused.body));
        const error = refused.body['error'] as { type: string; message: string };
        assert.equal(error.type, 'run_on_other_server');
        assert.ok(error.message.includes(a.services.serverId), error.message);
        assert.equal(await admin.requests.maxSeq(runA), 6);
        assert.equal((await onB.call('POST', '/api/v1/optim_step', { model_id: runA, seq_id: 7, adam_params: { learning_rate: 0.01 }, type: 'optim_step' })).status, 409);
        const [moreA, moreB] = await Promise.all([onA.trainStep(runA, 7), onB.trainStep(runB, 7)]);
        assertCloseLosses([moreA], [moreB]);

        // Both see the same rows, each run marked with its server.
        for (const client of [onA, onB]) {
          const listed = await client.call('GET', '/api/v1/training_runs');
          assert.equal(listed.status, 200);
          const ids = (listed.body['training_runs'] as { training_run_id: string }[]).map((r) => r.training_run_id).sort();
          assert.deepEqual(ids, [runA, runB].sort());
        }
        assert.equal((await admin.runs.get(runA, key.id))?.serverId, a.services.serverId);
        assert.equal((await admin.runs.get(runB, key.id))?.serverId, b.services.serverId);

        // A stops with a request of its own still logged; a new server C (and B) leave it alone, and A
        // runs it once it is back on its data dir (same server id).
        await a.close();
        servers.splice(servers.indexOf(a), 1);
        const pending = await loggedSample(admin, key.id, 'adhoc:pending', a.services.serverId);
        const c = await start(tempDir('lathe-server-c-'));
        assert.deepEqual(c.services.queues(), {});
        assert.equal((await admin.requests.get(pending, key.id))?.status, 'pending');
        assert.equal((await new Client(c, key.key).submitForwardBackward(runA, 9)).status, 409);
        const again = await start(dirA);
        assert.equal(again.services.serverId, a.services.serverId);
        assert.equal(await finished(admin, pending, key.id), 'complete');
        // The restarted A rebuilds its run from its log: still the twin of B's.
        const [resumedA, stepB] = await Promise.all([new Client(again, key.key).trainStep(runA, 9), onB.trainStep(runB, 9)]);
        assertCloseLosses([resumedA], [stepB]);
      } finally {
        for (const server of servers) await server.close();
        await admin.close();
        await database.drop();
      }
    });
  });
}
