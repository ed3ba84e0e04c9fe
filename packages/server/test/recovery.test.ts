import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '../src/index.js';
import { encodeForwardBackwardRequest, type WireDatum } from '@lathe/protocol';
import { tokensToWire } from '../src/worker/tensor.js';
import { until as untilEvery } from './until.js';

/** Polls every 5 ms: the tests catch a run between two steps. */
const until = <T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 120_000) => untilEvery(what, probe, timeoutMs, 5);

// Faults in the middle of multi-tenant training: a worker killed with SIGKILL, a server restarted,
// a poisoned request. Every check is against an uninterrupted run with the same inputs and seeds,
// compared bit for bit (weights and optimizer state as the worker saves them). Real servers, real
// worker processes.
const MODEL = 'lathe/tiny-qwen3';
const MODELS = [{ model_name: MODEL, max_context_length: 2048, vocab_size: 151936, architecture: 'qwen3' }];
/** Small, so a crash lands between snapshots and recovery replays logged steps. */
const SNAPSHOT_EVERY = 3;
const STEPS = 10;
/** Two tenants: run i of the plan belongs to API key i, with its own seed and datum lengths. */
const TENANTS = [{ seed: 11, lengths: [3, 8] }, { seed: 12, lengths: [12, 21] }];

/** A server whose handle a test may replace (a restart); requests go to the current one. */
class Tenant {
  constructor(private readonly server: () => LatheServer, readonly key: string) {}

  async post(url: string, payload: Record<string, unknown> | Buffer): Promise<{ status: number; body: Record<string, unknown> }> {
    const contentType = Buffer.isBuffer(payload) ? 'application/x-protobuf' : 'application/json';
    const response = await this.server().app.inject({ method: 'POST', url, headers: { 'x-api-key': this.key, 'content-type': contentType }, payload });
    return { status: response.statusCode, body: response.json() as Record<string, unknown> };
  }

  /** Submits; asserts the acknowledgement and returns the future's request id. */
  async submit(url: string, payload: Record<string, unknown> | Buffer): Promise<string> {
    const submitted = await this.post(url, payload);
    assert.equal(submitted.status, 200, JSON.stringify(submitted.body));
    return submitted.body['request_id'] as string;
  }

  /** The future's outcome (long polls until it is known). */
  async result(requestId: string): Promise<Record<string, unknown>> {
    for (;;) {
      const polled = await this.post('/api/v1/retrieve_future', { request_id: requestId, allow_metadata_only: true });
      if (polled.status === 408) continue;
      assert.equal(polled.status, 200, JSON.stringify(polled.body));
      return polled.body;
    }
  }

  /** A future that must succeed. */
  async ok(requestId: string): Promise<Record<string, unknown>> {
    const body = await this.result(requestId);
    assert.ok(!('error' in body), JSON.stringify(body));
    return body;
  }

  async createRun(seed: number): Promise<string> {
    const sessionId = (await this.post('/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' })).body['session_id'];
    const created = await this.post('/api/v1/create_model', { session_id: sessionId, model_seq_id: 0, base_model: MODEL, lora_config: { rank: 4, seed }, type: 'create_model' });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    await this.ok(created.body['request_id'] as string);
    return created.body['model_id'] as string;
  }

  forwardBackward(modelId: string, seqId: number, data: Datum[], lossFn = 'cross_entropy'): Promise<string> {
    return this.submit('/api/v1/forward_backward', Buffer.from(encodeForwardBackwardRequest({ modelId, seqId, lossFn, lossFnConfig: {}, forwardOnly: false, data })));
  }

  optimStep(modelId: string, seqId: number): Promise<string> {
    return this.submit('/api/v1/optim_step', { model_id: modelId, seq_id: seqId, adam_params: { learning_rate: 0.01 }, type: 'optim_step' });
  }
}

type Datum = WireDatum;

/** A next-token datum of `length` targets, different for every (tenant, step, row). */
function datum(tenant: number, step: number, row: number, length: number): Datum {
  const tokens = Array.from({ length: length + 1 }, (_, i) => 1 + ((tenant * 7919 + step * 104_729 + row * 1_299_709 + i * 15_485_863) % 150_000));
  return { modelInput: tokens.slice(0, -1), lossFnInputs: { target_tokens: { dtype: 'int64', shape: [length], data: BigInt64Array.from(tokens.slice(1), BigInt) } } };
}

/** The requests of one tenant's run: STEPS x (forward_backward at seq 2s+1, optim_step at 2s+2). */
interface Plan {
  tenant: Tenant;
  modelId: string;
  forwards: string[];
  steps: string[];
}

/** Every tenant submits its whole run before awaiting anything (as the SDK pipelines), interleaved. */
async function submitRuns(tenants: Tenant[]): Promise<Plan[]> {
  const plans = await Promise.all(tenants.map(async (tenant, i) => ({ tenant, modelId: await tenant.createRun(TENANTS[i]!.seed), forwards: [] as string[], steps: [] as string[] })));
  for (let step = 0; step < STEPS; step++) {
    for (const [i, plan] of plans.entries()) {
      plan.forwards.push(await plan.tenant.forwardBackward(plan.modelId, 2 * step + 1, TENANTS[i]!.lengths.map((length, row) => datum(i, step, row, length))));
      plan.steps.push(await plan.tenant.optimStep(plan.modelId, 2 * step + 2));
    }
  }
  return plans;
}

/** Every future of the plans completes; returns each run's losses, step by step. */
async function finish(plans: Plan[]): Promise<number[][]> {
  return Promise.all(plans.map(async (plan) => {
    const losses: number[] = [];
    for (const [step, requestId] of plan.forwards.entries()) {
      losses.push(((await plan.tenant.ok(requestId))['metrics'] as Record<string, number>)['loss:sum']!);
      assert.equal((await plan.tenant.ok(plan.steps[step]!))['type'], 'optim_step');
    }
    return losses;
  }));
}

/** A run's adapter and optimizer state as the worker saves them: each tensor's dtype, shape and bytes. */
async function weights(server: LatheServer, modelId: string): Promise<Map<string, string>> {
  const dir = path.join(mkdtempSync(path.join(os.tmpdir(), 'lathe-recovery-weights-')), 'adapter');
  await (await server.services.pool.client(MODEL)).request('save_adapter', { adapter: modelId, path: dir, include_optimizer: true });
  const tensors = new Map<string, string>();
  for (const file of ['adapter.safetensors', 'optimizer.safetensors']) {
    const bytes = readFileSync(path.join(dir, file));
    const headerLength = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    for (const [name, info] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const data = bytes.subarray(8 + headerLength + info.data_offsets[0], 8 + headerLength + info.data_offsets[1]);
      tensors.set(`${file}:${name}`, `${info.dtype}${JSON.stringify(info.shape)}:${data.toString('base64')}`);
    }
  }
  assert.ok(tensors.size > 0);
  return tensors;
}

function assertSameWeights(actual: Map<string, string>, expected: Map<string, string>, what: string): void {
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), what);
  const differing = [...expected].filter(([name, value]) => actual.get(name) !== value).map(([name]) => name);
  assert.deepEqual(differing, [], `${what}: tensors that differ from the uninterrupted run`);
}

async function serverWithTenants(dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-recovery-test-'))): Promise<{ server: LatheServer; dataDir: string; keys: { key: string; id: string }[] }> {
  const server = await createServer({ dataDir, models: MODELS, snapshotEvery: SNAPSHOT_EVERY });
  const keys = [];
  for (const name of ['alice', 'bob']) keys.push(await server.services.store.keys.create(name));
  return { server, dataDir, keys };
}

/** Whether `requestId` of `owner` has finished, as the server's log says. */
async function finished(server: LatheServer, requestId: string, owner: string): Promise<boolean> {
  const row = await server.services.store.requests.get(requestId, owner);
  return row?.status === 'complete' || server.services.completion.held(requestId) !== undefined;
}

// The uninterrupted reference: both tenants' runs, their losses and final weights.
let reference: LatheServer;
let referenceLosses: number[][];
let referenceWeights: Map<string, string>[];

before(async () => {
  const { server, keys } = await serverWithTenants();
  reference = server;
  const plans = await submitRuns(keys.map(({ key }) => new Tenant(() => server, key)));
  referenceLosses = await finish(plans);
  referenceWeights = await Promise.all(plans.map((plan) => weights(server, plan.modelId)));
});
after(async () => {
  await reference?.close();
});

test('kill -9 of the worker mid-run: every future completes and both tenants end with the bits of an uninterrupted run', async () => {
  const { server, keys } = await serverWithTenants();
  try {
    const plans = await submitRuns(keys.map(({ key }) => new Tenant(() => server, key)));
    // Kill once the first tenant's 4th step is done (the snapshot at step 3 is behind it), while
    // the rest of both runs is queued or running.
    await until('step 4 of the first run', async () => ((await finished(server, plans[0]!.steps[3]!, keys[0]!.id)) ? true : undefined));
    const pid = (await server.services.pool.pids())[MODEL];
    assert.ok(pid);
    process.kill(pid, 'SIGKILL');
    for (const [i, plan] of plans.entries()) assert.ok(!(await finished(server, plan.steps.at(-1)!, keys[i]!.id)), 'the crash lands mid-run');

    const losses = await finish(plans);
    assert.deepEqual(losses, referenceLosses);
    for (const [i, plan] of plans.entries()) assertSameWeights(await weights(server, plan.modelId), referenceWeights[i]!, `tenant ${i}`);
    assert.notEqual((await server.services.pool.pids())[MODEL], pid);
    const rebuilt = server.services.recoveries;
    assert.deepEqual([...new Set(rebuilt.map((r) => r.modelId))].sort(), plans.map((p) => p.modelId).sort(), 'both runs were rebuilt');
    assert.ok(rebuilt.some((r) => r.fromSeq >= 0 && r.replayed > 0), `a rebuild restored a snapshot and replayed steps after it: ${JSON.stringify(rebuilt)}`);
  } finally {
    await server.close();
  }
});

test('a server restart mid-run: queued futures complete on the next server and no acknowledged step is lost', async () => {
  let { server, dataDir, keys } = await serverWithTenants();
  try {
    const tenants = keys.map(({ key }) => new Tenant(() => server, key));
    const plans = await submitRuns(tenants);
    await until('step 4 of the first run', async () => ((await finished(server, plans[0]!.steps[3]!, keys[0]!.id)) ? true : undefined));
    await server.close();
    // What was acknowledged but not run stays in the log, unfinished and not failed.
    server = await createServer({ dataDir, models: MODELS, snapshotEvery: SNAPSHOT_EVERY });
    const unfinished = await server.services.store.requests.unfinished();
    assert.ok(unfinished.some((row) => row.target === plans[0]!.modelId), 'the restart lands mid-run');

    const losses = await finish(plans);
    assert.deepEqual(losses, referenceLosses);
    for (const [i, plan] of plans.entries()) assertSameWeights(await weights(server, plan.modelId), referenceWeights[i]!, `tenant ${i}`);
  } finally {
    await server.close();
  }
});

/** An importance-sampling datum whose sampler log-probs (-3e38, finite) make exp(lp - q) overflow. */
function poisoned(length: number): Datum {
  const good = datum(0, 0, 0, length);
  return {
    modelInput: good.modelInput,
    lossFnInputs: {
      target_tokens: good.lossFnInputs['target_tokens']!,
      logprobs: { dtype: 'float32', shape: [length], data: new Float32Array(length).fill(-3e38) },
      advantages: { dtype: 'float32', shape: [length], data: new Float32Array(length).fill(1) },
    },
  };
}

test('a poisoned request fails alone with a user error; the tenant sharing its batch and the poisoner\'s own run train on unharmed', async () => {
  const [aliceKey, bobKey] = await Promise.all(['poisoner', 'neighbour'].map((name) => reference.services.store.keys.create(name)));
  const [alice, bob] = [aliceKey, bobKey].map((created) => new Tenant(() => reference, created!.key));
  const good = (step: number) => [datum(1, step, 0, 5), datum(1, step, 1, 9)];
  const [victim, attacker, victimAlone, attackerAlone] = await Promise.all([bob!.createRun(22), alice!.createRun(21), bob!.createRun(22), alice!.createRun(21)]);

  // A long sample holds the worker while both requests queue, so one cycle packs them together.
  const sessionId = (await bob!.post('/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' })).body['session_id'];
  const sampler = (await bob!.post('/api/v1/create_sampling_session', { session_id: sessionId, sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' })).body['sampling_session_id'] as string;
  const lane = reference.services.lane(MODEL);
  const idle = lane.cycles;
  // Greedy, no stop tokens: exactly max_tokens decoding steps.
  const sample = await reference.services.submitSample(bobKey!.id, sampler, 0, {
    baseModel: MODEL, adapter: null, load: null,
    item: { prompt: tokensToWire([9707, 1879]), num_samples: 1, sampling_params: { max_tokens: 1200, temperature: 0, top_k: -1, top_p: 1 }, prompt_logprobs: false, topk_prompt_logprobs: 0 },
  });
  await until('the sample to start', async () => (lane.cycles > idle ? true : undefined));
  const bad = await alice!.forwardBackward(attacker, 1, [poisoned(6)], 'importance_sampling');
  const neighbour = await bob!.forwardBackward(victim, 1, good(0));
  const cycle = lane.cycles;
  assert.ok(!(await finished(reference, sample, bobKey!.id)), 'the sample still holds the worker');
  const failed = await alice!.result(bad);
  assert.equal(failed['category'], 'user', JSON.stringify(failed));
  assert.match(String(failed['error']), /not finite/);
  const shared = (await bob!.ok(neighbour))['metrics'] as Record<string, number>;
  assert.equal(lane.cycles, cycle + 1, 'both requests ran in the one training cycle after the sample');
  await bob!.ok(await bob!.optimStep(victim, 2));
  // The poisoner's run goes on from the gradient it had: the failed request left nothing behind.
  await alice!.ok(await alice!.forwardBackward(attacker, 2, good(1)));
  await alice!.ok(await alice!.optimStep(attacker, 3));

  // The same requests without the poison, each alone.
  const alone = ((await bob!.ok(await bob!.forwardBackward(victimAlone, 1, good(0))))['metrics'] as Record<string, number>);
  await bob!.ok(await bob!.optimStep(victimAlone, 2));
  await alice!.ok(await alice!.forwardBackward(attackerAlone, 1, good(1)));
  await alice!.ok(await alice!.optimStep(attackerAlone, 2));
  assert.equal(shared['loss:sum'], alone['loss:sum']);
  assertSameWeights(await weights(reference, victim), await weights(reference, victimAlone), 'the neighbour');
  assertSameWeights(await weights(reference, attacker), await weights(reference, attackerAlone), 'the poisoner');
});
