import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '../src/index.js';
import { encodeForwardBackwardRequest } from '@lathe/protocol';
import { Lane, type JobError, type LaneOptions, type SampleJob, type TrainingOp } from '../src/scheduler/lane.js';
import type { WorkerClient } from '../src/worker/client.js';
import { startLocalWorker, type LocalWorker } from '../src/worker/process.js';
import { floatsToWire, tokensToWire, wireToNumbers, type WireTensor } from '../src/worker/tensor.js';

// Fair scheduling in a lane: what runs when. The lane tests drive a Lane over a real worker and
// record the worker calls it makes, in order; the first cycle waits for a gate, so everything a
// test submits up front is queued before the lane picks anything. The server tests drive a real
// server over HTTP.
const MODEL = 'lathe/tiny-qwen3';
let worker: LocalWorker;
let server: LatheServer;
const keys: Record<'a' | 'b', { key: string; id: string }> = {} as never;
const MAX_QUEUED_PER_KEY = 3;

before(async () => {
  worker = await startLocalWorker({ modelsDir: mkdtempSync(path.join(os.tmpdir(), 'lathe-models-')), model: MODEL });
  server = await createServer({
    dataDir: mkdtempSync(path.join(os.tmpdir(), 'lathe-scheduling-test-')),
    longPollMs: 200,
    models: [{ model_name: MODEL, max_context_length: 2048, vocab_size: 151936, architecture: 'qwen3' }],
    ordering: { maxWaitingRequests: 64, maxQueuedPerKey: MAX_QUEUED_PER_KEY },
  });
  for (const name of ['a', 'b'] as const) keys[name] = await server.services.store.keys.create(name);
});
after(async () => {
  await server.close();
  await worker.stop();
});

/** One worker call as the log shows it: the op and the adapters it names (`adapter:n@first` for sample pieces). */
type Call = string;

interface Harness {
  lane: Lane;
  calls: Call[];
  outcomes: Map<string, { result?: unknown; error?: JobError }>;
  /** Opens the gate: the lane's first cycle starts. */
  open(): void;
  /** Resolves once `n` jobs have finished. */
  finished(n: number): Promise<void>;
  /** Called at every worker call, before it is sent. */
  onCall?: (call: Call) => void;
}

function harness(options: Partial<LaneOptions> = {}): Harness {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const waiters: { n: number; resolve: () => void }[] = [];
  const settle = (): void => {
    for (const w of waiters.splice(0)) if (h.outcomes.size >= w.n) w.resolve(); else waiters.push(w);
  };
  const recording = {
    request: (op: string, fields: Record<string, unknown> = {}) => {
      const items = fields['items'] as Record<string, unknown>[] | undefined;
      const call = items
        ? `${op} ${items.map((i) => (op === 'sample' ? `${i['adapter'] ?? 'base'}:${i['num_samples']}@${i['first_sample_index'] ?? 0}` : i['adapter'])).join(',')}`
        : `${op} ${fields['adapter']}`;
      h.calls.push(call);
      h.onCall?.(call);
      return worker.client.request(op, fields);
    },
  } as unknown as WorkerClient;
  const h: Harness = {
    calls: [],
    outcomes: new Map(),
    open,
    finished: (n) => new Promise((resolve) => { waiters.push({ n, resolve }); settle(); }),
    lane: new Lane({
      baseModel: MODEL,
      worker: async () => { await gate; return recording; },
      completion: {
        complete: async (requestId, result) => { h.outcomes.set(requestId, { result }); settle(); },
        fail: async (requestId, error) => { h.outcomes.set(requestId, { error }); settle(); },
      },
      recover: async () => {},
      ...options,
    }),
  };
  return h;
}

const TOKENS = 8;
const create: TrainingOp = { kind: 'create_adapter', lora: { rank: 4, seed: 1 } };
const optim: TrainingOp = { kind: 'optim_step', adamParams: { learning_rate: 1e-3 } };
function fb(length = TOKENS): TrainingOp {
  const tokens = Array.from({ length: length + 1 }, (_, i) => [9707, 1879, 11, 1246][i % 4]!);
  return {
    kind: 'forward_backward',
    lossFn: 'cross_entropy',
    lossFnConfig: {},
    data: [{ tokens: tokensToWire(tokens.slice(0, -1)), loss_fn_inputs: { target_tokens: tokensToWire(tokens.slice(1)), weights: floatsToWire(Array(length).fill(1)) } }],
  };
}

/** Queues `ops` as seqs `first..` of run `modelId` owned by `owner` (registering the run at seq 0). */
function submit(h: Harness, owner: string, modelId: string, ops: TrainingOp[], first = 0): void {
  if (first === 0) h.lane.registerRun(modelId);
  ops.forEach((op, i) => {
    const seqId = first + i;
    h.lane.submitTraining({ requestId: `${modelId}#${seqId}`, owner, modelId, seqId, op, bytes: 100, finalize: async (reply) => reply });
  });
}

/** create, then `steps` x (forward_backward, optim_step). */
function pipelined(steps: number, length = TOKENS): TrainingOp[] {
  return [create, ...Array.from({ length: steps }, () => [fb(length), optim]).flat()];
}

function assertAllSucceeded(h: Harness): void {
  for (const [id, outcome] of h.outcomes) assert.equal(outcome.error, undefined, `${id}: ${outcome.error?.message}`);
}

test('a cycle runs every run\'s forward_backward in one batch and then every run\'s optim_step; a new run is created within one cycle', async () => {
  const h = harness();
  for (const run of ['c1-a', 'c1-b', 'c1-c']) submit(h, run.slice(-1), run, pipelined(3));
  let fbCalls = 0;
  h.onCall = (call) => {
    // A new user arrives while the second batch runs.
    if (call.startsWith('forward_backward') && ++fbCalls === 2) submit(h, 'd', 'c1-d', pipelined(1));
  };
  h.open();
  await h.finished(3 * 7 + 3);
  assertAllSucceeded(h);
  const abc = 'c1-a,c1-b,c1-c';
  const optims = (runs: string) => runs.split(',').map((run) => `optim_step ${run}`);
  assert.deepEqual(h.calls, [
    'create_adapter c1-a', 'create_adapter c1-b', 'create_adapter c1-c',
    `forward_backward ${abc}`, ...optims(abc),
    `forward_backward ${abc}`, ...optims(abc), 'create_adapter c1-d',
    `forward_backward c1-d,${abc}`, ...optims(`${abc},c1-d`), // the new key, served least recently, leads
  ]);
});

test('under the cycle token budget runs are picked round-robin across API keys: a key with three runs does not crowd out a key with one', async () => {
  const h = harness({ cycleTokens: 2 * TOKENS });
  for (const run of ['c2-x1', 'c2-x2', 'c2-x3']) submit(h, 'x', run, pipelined(3));
  submit(h, 'y', 'c2-y1', pipelined(3));
  h.open();
  await h.finished(4 * 7);
  assertAllSucceeded(h);
  const batches = h.calls.filter((call) => call.startsWith('forward_backward')).map((call) => call.split(' ')[1]!.split(','));
  for (const batch of batches) assert.ok(batch.length <= 2, `a batch over the budget: ${batch}`);
  assert.equal(batches.flat().length, 12);
  // y's one run gets a place in every cycle until it is done: half of each batch, not a quarter.
  assert.deepEqual(batches.slice(0, 3).map((batch) => batch.includes('c2-y1')), [true, true, true]);
  // x's runs take turns.
  assert.deepEqual(batches.slice(0, 3).map((batch) => batch.find((run) => run !== 'c2-y1')), ['c2-x1', 'c2-x2', 'c2-x3']);
});

test('a request larger than the cycle token budget runs alone, and the others wait for the next cycle', async () => {
  const h = harness({ cycleTokens: TOKENS / 2 });
  submit(h, 'p', 'c3-p', pipelined(2));
  submit(h, 'q', 'c3-q', pipelined(2));
  h.open();
  await h.finished(2 * 5);
  assertAllSucceeded(h);
  const batches = h.calls.filter((call) => call.startsWith('forward_backward'));
  assert.deepEqual(batches, ['forward_backward c3-p', 'forward_backward c3-q', 'forward_backward c3-p', 'forward_backward c3-q']);
});

test('a large sampling request is drawn in pieces that alternate with training cycles, and the pieces equal the unsplit request', async () => {
  const h = harness({ sampleCycleTokens: 8 });
  const item = {
    prompt: tokensToWire([9707, 1879, 11, 1246]),
    num_samples: 6,
    sampling_params: { max_tokens: 4, temperature: 1, top_k: -1, top_p: 1, seed: 5 },
    prompt_logprobs: true,
    topk_prompt_logprobs: 0,
  };
  const job: SampleJob = { requestId: 'big-sample', owner: 's', bytes: 100, adapter: null, load: null, item, finalize: async (reply) => reply };
  h.lane.submitSample(job);
  submit(h, 't', 'c4-t', pipelined(2));
  h.open();
  await h.finished(1 + 5);
  assertAllSucceeded(h);
  // Rows x max_tokens 8 per call: 2 samples of 4 tokens, numbered on from the pieces before.
  const sampleCalls = h.calls.map((call, i) => [call, i] as const).filter(([call]) => call.startsWith('sample'));
  assert.deepEqual(sampleCalls.map(([call]) => call), ['sample base:2@0', 'sample base:2@2', 'sample base:2@4']);
  for (let k = 1; k < sampleCalls.length; k++) assert.ok(sampleCalls[k]![1] - sampleCalls[k - 1]![1] > 1, `training ran between sampling pieces: ${h.calls.join(' | ')}`);
  type Sampled = { sequences: { tokens: WireTensor; logprobs: WireTensor }[]; prompt_logprobs?: unknown };
  const split = h.outcomes.get('big-sample')!.result as Sampled;
  const whole = (await worker.client.request<{ results: Sampled[] }>('sample', { items: [{ ...item, adapter: null }] })).results[0]!;
  const tokens = (r: Sampled) => r.sequences.map((s) => Array.from(wireToNumbers(s.tokens), Number));
  assert.equal(split.sequences.length, 6);
  assert.deepEqual(tokens(split), tokens(whole));
  assert.deepEqual(split.prompt_logprobs, whole.prompt_logprobs);
});

// ---- the server: per-key bounds and the control plane -------------------------------------------

async function call(who: 'a' | 'b', url: string, payload: Record<string, unknown>): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await server.app.inject({ method: 'POST', url, headers: { 'x-api-key': keys[who].key }, payload });
  return { status: response.statusCode, body: response.json() as Record<string, unknown> };
}

async function session(who: 'a' | 'b'): Promise<string> {
  return (await call(who, '/api/v1/create_session', { tags: [], user_metadata: {}, sdk_version: 'test', type: 'create_session' })).body['session_id'] as string;
}

async function outcome(who: 'a' | 'b', requestId: string): Promise<Record<string, unknown>> {
  for (;;) {
    const polled = await call(who, '/api/v1/retrieve_future', { request_id: requestId, allow_metadata_only: true });
    if (polled.status === 408) continue;
    assert.equal(polled.status, 200, JSON.stringify(polled.body));
    return polled.body;
  }
}

async function createModel(who: 'a' | 'b'): Promise<string> {
  const created = await call(who, '/api/v1/create_model', { session_id: await session(who), model_seq_id: 0, base_model: MODEL, lora_config: { rank: 4 }, type: 'create_model' });
  assert.equal(created.status, 200, JSON.stringify(created.body));
  await outcome(who, created.body['request_id'] as string);
  return created.body['model_id'] as string;
}

async function forward(who: 'a' | 'b', modelId: string, seqId: number): Promise<{ status: number; requestId: string; body: string }> {
  const body = encodeForwardBackwardRequest({
    modelId, seqId, lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: true,
    data: [{ modelInput: [9707, 1879, 11], lossFnInputs: { target_tokens: { dtype: 'int64', shape: [3], data: BigInt64Array.from([1879n, 11n, 1246n]) } } }],
  });
  const response = await server.app.inject({ method: 'POST', url: '/api/v1/forward_backward', headers: { 'x-api-key': keys[who].key, 'content-type': 'application/x-protobuf' }, payload: Buffer.from(body) });
  return { status: response.statusCode, requestId: response.statusCode === 200 ? (response.json() as { request_id: string }).request_id : '', body: response.body };
}

test('an API key may queue only so many requests (429 naming the bound); other keys are not affected, and the request that unblocks the queue is admitted', async () => {
  const modelA = await createModel('a');
  const modelB = await createModel('b');
  // seq 1 is missing: seqs 2..4 queue behind it, up to the key's bound.
  const queued = [];
  for (let seq = 2; seq < 2 + MAX_QUEUED_PER_KEY; seq++) {
    const r = await forward('a', modelA, seq);
    assert.equal(r.status, 200, r.body);
    queued.push(r.requestId);
  }
  const over = await forward('a', modelA, 2 + MAX_QUEUED_PER_KEY);
  assert.equal(over.status, 429, over.body);
  assert.match(over.body, new RegExp(`already has ${MAX_QUEUED_PER_KEY} requests queued .*at most ${MAX_QUEUED_PER_KEY} per key`));
  const sampler = (await call('a', '/api/v1/create_sampling_session', { session_id: await session('a'), sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' })).body['sampling_session_id'];
  const sample = await call('a', '/api/v1/asample', { sampling_session_id: sampler, num_samples: 1, prompt: { chunks: [{ type: 'encoded_text', tokens: [9707] }] }, sampling_params: { max_tokens: 1 }, type: 'sample' });
  assert.equal(sample.status, 429, JSON.stringify(sample.body));
  // Another key still gets its requests in.
  const other = await forward('b', modelB, 1);
  assert.equal(other.status, 200, other.body);
  // The gap filler is admitted although the key is at its bound; then everything runs and the key may send again.
  const filler = await forward('a', modelA, 1);
  assert.equal(filler.status, 200, filler.body);
  for (const id of [filler.requestId, ...queued]) assert.ok('metrics' in (await outcome('a', id)));
  assert.ok('metrics' in (await outcome('b', other.requestId)));
  const again = await forward('a', modelA, 2 + MAX_QUEUED_PER_KEY);
  assert.equal(again.status, 200, again.body);
  assert.ok('metrics' in (await outcome('a', again.requestId)));
});

test('while a sample runs on the worker, heartbeats, create_session and retrieve_future answer', async () => {
  const client = await server.services.pool.client(MODEL);
  const send = client.request.bind(client);
  let reached!: () => void;
  const started = new Promise<void>((resolve) => (reached = resolve));
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  client.request = (async (op: string, fields?: Record<string, unknown>) => {
    if (op === 'sample') {
      reached();
      await held; // the worker call is in flight until the test lets it go
    }
    return send(op, fields);
  }) as typeof client.request;
  try {
    const id = await session('b');
    const sampler = (await call('b', '/api/v1/create_sampling_session', { session_id: id, sampling_session_seq_id: 0, base_model: MODEL, type: 'create_sampling_session' })).body['sampling_session_id'];
    const submitted = await call('b', '/api/v1/asample', { sampling_session_id: sampler, num_samples: 4, prompt: { chunks: [{ type: 'encoded_text', tokens: [9707, 1879] }] }, sampling_params: { max_tokens: 16 }, type: 'sample' });
    assert.equal(submitted.status, 200, JSON.stringify(submitted.body));
    const requestId = submitted.body['request_id'] as string;
    await started;
    assert.equal((await call('b', '/api/v1/session_heartbeat', { session_id: id, type: 'session_heartbeat' })).status, 200);
    assert.ok(await session('b'));
    const polled = await call('b', '/api/v1/retrieve_future', { request_id: requestId, allow_metadata_only: true });
    assert.equal(polled.status, 408, JSON.stringify(polled.body));
    assert.equal((await server.services.store.requests.get(requestId, keys.b.id))?.status === 'complete', false);
    release();
    assert.equal(((await outcome('b', requestId))['sequences'] as unknown[]).length, 4);
  } finally {
    release();
    client.request = send as typeof client.request;
  }
});
