/**
 * control-plane-overhead: Latency of a small forward_backward through HTTP + futures vs the same call sent straight to the worker.
 *
 *   http:     POST /api/v1/forward_backward (protobuf body, built with the server's own
 *             encodeForwardBackwardRequest), then POST /api/v1/retrieve_future (Accept:
 *             application/x-protobuf) until the result arrives, then decode it. Everything the SDK
 *             would see: auth hook, decode + validation, request log (SQLite), seq ordering, lane,
 *             worker call, result packing, long-poll wake-up, protobuf rendering.
 *   baseline: WorkerClient.request('forward_backward', { items: [...] }) with the same datum on the
 *             same worker process (the one the server's pool started with startLocalWorker; pass
 *             --separate-worker to start a second one with startLocalWorker instead).
 *
 * One datum of --tokens tokens (default 16), cross_entropy, lathe/tiny-qwen3, LoRA rank 8, B = 0 at
 * init so both sides compute exactly the same function: the first warm-up pair must report the same
 * loss. After warm-up the two sides alternate (ABBA order, so neither always goes first).
 * ratio = worker_median / http_median (<= 1; higher is better). added_ms = http_median - worker_median.
 * Last stdout line: JSON summary.
 *
 * Run from the repository root:
 *   npm run bench -- control-plane-overhead [--iters 200] [--warmup 10] [--tokens 16] [--json-body]
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createServer, type LatheServer } from '../../packages/server/src/app.js';
import { prepareData } from '../../packages/server/src/protocol/datums.js';
import { decodeForwardBackwardOutput, encodeForwardBackwardRequest, type WireDatum } from '@lathe/protocol';
import type { WorkerClient } from '../../packages/server/src/worker/client.js';
import { startLocalWorker, type LocalWorker } from '../../packages/server/src/worker/process.js';
import { fromWire, type WireTensor } from '../../packages/server/src/worker/tensor.js';
import { jsonOf, listenOnFreePort, quantile, type Reply, request, runBench } from './_http.js';
import { parseBenchArgs } from './_args.js';

const USAGE = `usage: npm run bench -- control-plane-overhead [options]

  --iters N          timed calls per side (default 200)
  --max-seconds S    stop the timed phase after S seconds even if fewer calls ran (default 75;
                     at least 20 per side always run)
  --warmup N         untimed calls per side first (default 10)
  --tokens N         tokens in the one datum (default 16)
  --model NAME       base model (default lathe/tiny-qwen3)
  --rank N           LoRA rank (default 8)
  --json-body        send forward_backward as JSON (SDK <= 0.24 form) instead of protobuf
  --separate-worker  baseline on a second worker started with startLocalWorker (default: the
                     server's own worker, so both sides hit the same process)
  --worker-threads N torch/OpenMP threads of the worker process(es) (default 1: on a small shared
                     machine two OpenMP threads fighting the Node process for cores make the worker's
                     own time swing 10x and drown the overhead being measured; 0 = inherit the env)
  --models-dir DIR   where models live (default <repo>/.lathe/models)
  --cpu-profile FILE write a V8 CPU profile of this process (server + client) covering only the
                     timed phase (open it in Chrome DevTools or speedscope)
`;

// -------------------------------------------------------------------------------------------------
// A minimal keep-alive HTTP client (node:http, so nothing but Node is needed).




// -------------------------------------------------------------------------------------------------
// Statistics


function summary(samples: number[]): { median: number; p90: number; p99: number; mean: number; min: number; max: number } {
  const s = [...samples].sort((a, b) => a - b);
  return {
    median: quantile(s, 0.5),
    p90: quantile(s, 0.9),
    p99: quantile(s, 0.99),
    mean: s.reduce((a, b) => a + b, 0) / s.length,
    min: s[0]!,
    max: s[s.length - 1]!,
  };
}

const r3 = (x: number): number => Math.round(x * 1000) / 1000;

// -------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const values = parseBenchArgs(USAGE, {
    iters: { type: 'string', default: '200' },
    'max-seconds': { type: 'string', default: '75' },
    warmup: { type: 'string', default: '10' },
    tokens: { type: 'string', default: '16' },
    rank: { type: 'string', default: '8' },
    'json-body': { type: 'boolean', default: false },
    'separate-worker': { type: 'boolean', default: false },
    'worker-threads': { type: 'string', default: '1' },
    'cpu-profile': { type: 'string' },
  });
  if (values === undefined) return 0;
  const maxIters = Math.max(2, Number(values.iters));
  const maxSeconds = Number(values['max-seconds']);
  const warmup = Math.max(1, Number(values.warmup));
  const nTokens = Math.max(2, Number(values.tokens));
  const model = values.model;
  const rank = Number(values.rank);
  const jsonBody = values['json-body'];
  const modelsDir = path.resolve(values['models-dir']);
  // Worker processes (the pool's and --separate-worker's) inherit this process's environment.
  const workerThreads = Number(values['worker-threads']);
  if (workerThreads > 0) {
    process.env['OMP_NUM_THREADS'] = String(workerThreads);
    process.env['MKL_NUM_THREADS'] = String(workerThreads);
  }

  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-bench-overhead-'));
  let server: LatheServer | undefined;
  let separate: LocalWorker | undefined;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  try {
    const t0 = performance.now();
    server = await createServer({ dataDir, modelsDir });
    const port = await listenOnFreePort(server);
    const { key } = await server.services.store.keys.create('bench-control-plane-overhead');
    const entry = server.services.model(model);

    const postJson = (p: string, body: unknown, headers: Record<string, string> = {}): Promise<Reply> =>
      request(agent, port, key, `/api/v1/${p}`, JSON.stringify(body), { 'content-type': 'application/json', ...headers });

    /**
     * Long-polls a future to its result (protobuf ForwardBackwardOutput bytes or a JSON value), the
     * way the SDK does: re-poll at once on 408 / try_again. `polls` counts the requests it took
     * (1 when the server holds the poll until the result is ready).
     */
    let polls = 0;
    async function retrieve(requestId: string, proto: boolean, deadlineMs = 120_000): Promise<Reply> {
      let allowMetadataOnly = true;
      const deadline = performance.now() + deadlineMs;
      for (let iteration = 0; performance.now() < deadline; iteration++) {
        const headers: Record<string, string> = { 'x-tinker-request-iteration': String(iteration) };
        if (proto) headers['accept'] = 'application/x-protobuf';
        polls++;
        const reply = await postJson('retrieve_future', { request_id: requestId, allow_metadata_only: allowMetadataOnly }, headers);
        if (reply.status === 408) continue;
        if (reply.status !== 200) throw new Error(`retrieve_future ${requestId}: HTTP ${reply.status} ${reply.body.toString()}`);
        if (reply.contentType.includes('application/x-protobuf')) return reply;
        const body = JSON.parse(reply.body.toString()) as Record<string, unknown>;
        if (body['type'] === 'try_again') continue;
        if (body['status'] === 'complete_metadata') {
          allowMetadataOnly = false;
          continue;
        }
        if ('error' in body) throw new Error(`future ${requestId} failed: ${String(body['error'])}`);
        return reply;
      }
      throw new Error(`future ${requestId} did not finish within ${deadlineMs} ms`);
    }

    // Session and training run over HTTP, exactly as the SDK would create them.
    const session = jsonOf(await postJson('create_session', { tags: [], user_metadata: {}, sdk_version: '0.25.0', type: 'create_session' }), 'create_session');
    const sessionId = String(session['session_id']);
    const lora = { rank, train_unembed: true, train_mlp: true, train_attn: true };
    const created = jsonOf(await postJson('create_model', { session_id: sessionId, model_seq_id: 0, base_model: model, lora_config: lora, type: 'create_model' }), 'create_model');
    const modelId = String(jsonOf(await retrieve(String(created['request_id']), false), 'create_model result')['model_id']);

    // The baseline's worker and adapter (same LoRA config: seed 0, B = 0, so the same function).
    let worker: WorkerClient;
    if (values['separate-worker']) {
      separate = await startLocalWorker({ modelsDir, model });
      worker = separate.client;
    } else {
      worker = await server.services.pool.client(model);
    }
    const directAdapter = 'bench-direct';
    await worker.request('create_adapter', { adapter: directAdapter, lora });

    // Timestamps of the lane's own worker call, to split the HTTP path into "before the worker",
    // "in the worker" and "after the worker". Observation only: the call is passed through as is.
    const laneClient = await server.services.pool.client(model);
    const laneCall = { active: false, sent: 0, replied: 0 };
    const passThrough = laneClient.request.bind(laneClient) as (op: string, fields?: Record<string, unknown>) => Promise<unknown>;
    (laneClient as unknown as { request: typeof passThrough }).request = (op, fields) => {
      if (!laneCall.active || op !== 'forward_backward') return passThrough(op, fields);
      laneCall.sent = performance.now();
      return passThrough(op, fields).then((reply) => {
        laneCall.replied = performance.now();
        return reply;
      });
    };
    const setupS = (performance.now() - t0) / 1000;

    // One datum: input = seq[:-1], targets = seq[1:] (the cookbook's convention), all weights 1.
    const vocab = Math.min(entry.vocab_size, 1000);
    const seq = Array.from({ length: nTokens + 1 }, (_, i) => 1 + ((i * 7919 + 13) % (vocab - 1)));
    const datum: WireDatum = {
      modelInput: seq.slice(0, -1),
      lossFnInputs: {
        target_tokens: { dtype: 'int64', shape: [nTokens], data: BigInt64Array.from(seq.slice(1), (t) => BigInt(t)) },
        weights: { dtype: 'float32', shape: [nTokens], data: new Float32Array(nTokens).fill(1) },
      },
    };
    const items = [{ adapter: directAdapter, loss_fn: 'cross_entropy', loss_fn_config: {}, data: prepareData('cross_entropy', [datum], entry) }];
    const jsonDatum = {
      model_input: { chunks: [{ type: 'encoded_text', tokens: datum.modelInput }] },
      loss_fn_inputs: {
        target_tokens: { data: seq.slice(1), dtype: 'int64', shape: [nTokens] },
        weights: { data: new Array<number>(nTokens).fill(1), dtype: 'float32', shape: [nTokens] },
      },
    };

    let nextSeq = 1;
    const phases = { submit: [] as number[], retrieve: [] as number[], before: [] as number[], inWorker: [] as number[], after: [] as number[] };

    /** One forward_backward through HTTP + futures; returns [ms, loss]. */
    async function viaHttp(record: boolean): Promise<[number, number]> {
      const seqId = nextSeq++;
      laneCall.active = true;
      laneCall.sent = laneCall.replied = 0;
      const start = performance.now();
      const submitted = jsonBody
        ? await postJson('forward_backward', { forward_backward_input: { data: [jsonDatum], loss_fn: 'cross_entropy' }, model_id: modelId, seq_id: seqId })
        : await request(agent, port, key, '/api/v1/forward_backward', encodeForwardBackwardRequest({ modelId, seqId, data: [datum], lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: false }), {
            'content-type': 'application/x-protobuf',
          });
      const requestId = String(jsonOf(submitted, 'forward_backward')['request_id']);
      const mid = performance.now();
      const result = await retrieve(requestId, true);
      const out = decodeForwardBackwardOutput(new Uint8Array(result.body.buffer, result.body.byteOffset, result.body.byteLength));
      const end = performance.now();
      laneCall.active = false;
      if (record) {
        phases.submit.push(mid - start);
        phases.retrieve.push(end - mid);
        if (laneCall.sent > 0 && laneCall.replied > 0) {
          phases.before.push(laneCall.sent - start);
          phases.inWorker.push(laneCall.replied - laneCall.sent);
          phases.after.push(end - laneCall.replied);
        }
      }
      const logprobs = out.lossFnOutputs[0]?.['logprobs'];
      if (!logprobs || logprobs.shape[0] !== nTokens) throw new Error(`http: unexpected loss_fn_outputs ${JSON.stringify(out.lossFnOutputs[0]?.['logprobs']?.shape)}`);
      return [end - start, lossOf(out.metrics)];
    }

    /** The same forward_backward straight to the worker; returns [ms, loss]. */
    async function viaWorker(): Promise<[number, number]> {
      const start = performance.now();
      const reply = await worker.request<{ results: { ok: boolean; metrics?: Record<string, number>; loss_fn_outputs?: Record<string, WireTensor>[]; error?: unknown }[] }>('forward_backward', { items });
      const end = performance.now();
      const result = reply.results[0];
      if (!result?.ok) throw new Error(`worker: ${JSON.stringify(result?.error)}`);
      const logprobs = result.loss_fn_outputs?.[0]?.['logprobs'];
      if (!logprobs || fromWire(logprobs).length !== nTokens) throw new Error('worker: unexpected loss_fn_outputs');
      return [end - start, lossOf(result.metrics ?? {})];
    }

    // Warm-up; the first pair must agree on the loss (same function, same data).
    const [, httpLoss] = await viaHttp(false);
    const [, workerLoss] = await viaWorker();
    if (!(Math.abs(httpLoss - workerLoss) <= 1e-4 * Math.max(1, Math.abs(workerLoss)))) {
      throw new Error(`the two sides disagree on the loss: http ${httpLoss} vs worker ${workerLoss}`);
    }
    for (let i = 1; i < warmup; i++) {
      await viaHttp(false);
      await viaWorker();
    }

    // Timed, interleaved: ABBA ABBA ...
    polls = 0;
    let profiler: Session | undefined;
    if (values['cpu-profile']) {
      profiler = new Session();
      profiler.connect();
      await profiler.post('Profiler.enable');
      await profiler.post('Profiler.setSamplingInterval', { interval: 200 });
      await profiler.post('Profiler.start');
    }
    const httpMs: number[] = [];
    const workerMs: number[] = [];
    const timedStart = performance.now();
    let iters = 0;
    for (let i = 0; i < maxIters; i++) {
      if (i >= 20 && performance.now() - timedStart > maxSeconds * 1000) break;
      iters++;
      if (i % 2 === 0) {
        httpMs.push((await viaHttp(true))[0]);
        workerMs.push((await viaWorker())[0]);
      } else {
        workerMs.push((await viaWorker())[0]);
        httpMs.push((await viaHttp(true))[0]);
      }
    }

    if (profiler && values['cpu-profile']) {
      const { profile } = await profiler.post('Profiler.stop');
      writeFileSync(values['cpu-profile'], JSON.stringify(profile));
      profiler.disconnect();
      console.log(`CPU profile of the timed phase written to ${values['cpu-profile']}`);
    }
    const h = summary(httpMs);
    const w = summary(workerMs);
    const sub = summary(phases.submit);
    const ret = summary(phases.retrieve);
    const before = summary(phases.before);
    const inWorker = summary(phases.inWorker);
    const after = summary(phases.after);
    const ratio = w.median / h.median;
    // Per interleaved pair, http minus worker: robust to slow drifts of the machine's load.
    const paired = summary(httpMs.map((x, i) => x - workerMs[i]!));
    const pollsPerCall = polls / iters;
    console.log(
      `model ${model}, 1 datum x ${nTokens} tokens, cross_entropy, LoRA rank ${rank}; body ${jsonBody ? 'JSON' : 'protobuf'}; baseline on ${values['separate-worker'] ? 'a separate worker' : "the server's own worker"}; worker threads ${process.env['OMP_NUM_THREADS'] ?? 'default'}; ${os.cpus().length} CPUs, load average ${os.loadavg()[0]!.toFixed(2)}`,
    );
    console.log(`setup ${setupS.toFixed(1)} s; warm-up ${warmup} per side; ${iters} timed per side (of ${maxIters}), interleaved, ${((performance.now() - timedStart) / 1000).toFixed(1)} s; loss http ${httpLoss.toFixed(4)} = worker ${workerLoss.toFixed(4)}`);
    const row = (name: string, s: ReturnType<typeof summary>): string =>
      `  ${name.padEnd(22)} median ${s.median.toFixed(2).padStart(7)} ms  p90 ${s.p90.toFixed(2).padStart(7)} ms  mean ${s.mean.toFixed(2).padStart(7)} ms  min ${s.min.toFixed(2).padStart(7)} ms  max ${s.max.toFixed(2).padStart(7)} ms`;
    console.log(row('http + futures', h));
    console.log(row('  submit (POST)', sub));
    console.log(row('  retrieve (long-poll)', ret));
    console.log(row('  until worker call', before));
    console.log(row('  worker call (lane)', inWorker));
    console.log(row('  after worker reply', after));
    console.log(row('worker direct', w));
    console.log(`retrieve_future requests per call: ${pollsPerCall.toFixed(2)} (1.00 = the long-poll held until the result was ready)`);
    if (pollsPerCall > 1.5) {
      console.log('WARNING: the server answered most long-polls before the result was ready (408 try_again at once), so this client, like the SDK, re-polled in a loop');
    }
    console.log(`added ${(h.median - w.median).toFixed(2)} ms per call (difference of medians; median of per-pair differences ${paired.median.toFixed(2)} ms); ratio worker/http ${ratio.toFixed(3)}`);
    console.log(
      JSON.stringify({
        bench: 'control-plane-overhead',
        ratio: r3(ratio),
        baseline: 'the same forward_backward sent straight to the worker',
        http_median_ms: r3(h.median),
        worker_median_ms: r3(w.median),
        added_ms: r3(h.median - w.median),
        added_paired_median_ms: r3(paired.median),
        http_p90_ms: r3(h.p90),
        worker_p90_ms: r3(w.p90),
        submit_median_ms: r3(sub.median),
        retrieve_median_ms: r3(ret.median),
        before_worker_median_ms: r3(before.median),
        lane_worker_call_median_ms: r3(inWorker.median),
        after_worker_median_ms: r3(after.median),
        polls_per_call: Math.round(pollsPerCall * 100) / 100,
        iters,
        warmup,
        tokens: nTokens,
        body: jsonBody ? 'json' : 'protobuf',
        worker: values['separate-worker'] ? 'separate' : 'shared',
        worker_threads: process.env['OMP_NUM_THREADS'] ?? 'default',
        model,
      }),
    );
    return 0;
  } finally {
    agent.destroy();
    await separate?.stop();
    await server?.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** The summed cross-entropy loss from a forward_backward's metrics (whatever its exact key). */
function lossOf(metrics: Record<string, number>): number {
  const key = Object.keys(metrics).find((k) => k.startsWith('loss'));
  if (key === undefined) throw new Error(`no loss metric in ${JSON.stringify(metrics)}`);
  return metrics[key]!;
}

runBench(main);
