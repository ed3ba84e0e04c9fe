/**
 * control-plane-waiters: Heartbeat latency while 2,000 retrieve_future long-polls are held open, vs the idle server.
 *
 * Setup: one session and one training run (lathe/tiny-qwen3) over HTTP. Then --waiters forward_backward
 * requests with seq_id 2..N+1 are submitted; seq_id 1 is never sent, so the server buffers them all
 * behind the gap and none can complete: N honest, pending futures. One long-poll per future is
 * opened (each on its own keep-alive socket), in batches, until the server's FutureHub reports N
 * waiters (`server.services.hub.waiting`). Like the SDK, a waiter that gets 408 / try_again polls
 * again at once, so a server that does not hold polls shows up as re-polls and a lower held count.
 *
 * Measured, in one run, with sequential heartbeats on a separate keep-alive socket:
 *   idle        --heartbeats heartbeats before any long-poll is open (the baseline)
 *   loaded      the same while the N long-polls are held
 *   idle-after  the same after the waiters disconnected (and the hub dropped them)
 * ratio = idle_p99 / loaded_p99 (1 = long-polls cost heartbeats nothing; lower is worse).
 * Target: loaded p99 < 50 ms. Last stdout line: JSON summary.
 *
 * Run from the repository root (needs about 2 x N + 300 file descriptors; `npm run bench` raises the
 * soft limit to the hard one):
 *   npm run bench -- control-plane-waiters [--waiters 2000] [--heartbeats 500]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createServer, type LatheServer } from '../../packages/server/src/app.js';
import { encodeForwardBackwardRequest, type WireDatum } from '@lathe/protocol';
import { jsonOf, listenOnFreePort, quantile, type Reply, request, runBench } from './_http.js';
import { parseBenchArgs } from './_args.js';

const USAGE = `usage: npm run bench -- control-plane-waiters [options]

  --waiters N        long-polls to hold open (default 2000)
  --heartbeats N     timed heartbeats per phase (default 500)
  --long-poll-ms MS  how long the server holds a poll (default 120000; must outlast the run)
  --batch N          long-polls opened per batch before waiting for the server to register them (default 250)
  --model NAME       base model of the training run (default lathe/tiny-qwen3)
  --models-dir DIR   where models live (default <repo>/.lathe/models)
  --cpu-profile FILE write a V8 CPU profile of this process (server + client) covering only the
                     loaded phase (open it in Chrome DevTools or speedscope)
`;

const TARGET_LOADED_P99_MS = 50;





interface Stats {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  return { n: s.length, p50: quantile(s, 0.5), p90: quantile(s, 0.9), p99: quantile(s, 0.99), max: s[s.length - 1] ?? NaN, mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length) };
}

const r3 = (x: number): number => Math.round(x * 1000) / 1000;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The soft file-descriptor limit of this process (a child shell inherits it). */
function fdLimit(): number {
  try {
    const out = execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim();
    return out === 'unlimited' ? Infinity : Number(out);
  } catch {
    return NaN;
  }
}

async function main(): Promise<number> {
  const values = parseBenchArgs(USAGE, {
    waiters: { type: 'string', default: '2000' },
    heartbeats: { type: 'string', default: '500' },
    'long-poll-ms': { type: 'string', default: '120000' },
    batch: { type: 'string', default: '250' },
    'cpu-profile': { type: 'string' },
  });
  if (values === undefined) return 0;
  const nWaiters = Math.max(1, Number(values.waiters));
  const nHeartbeats = Math.max(10, Number(values.heartbeats));
  const longPollMs = Number(values['long-poll-ms']);
  const batch = Math.max(1, Number(values.batch));
  const model = values.model;
  const modelsDir = path.resolve(values['models-dir']);

  // Client and server share this process: each long-poll is two sockets here.
  const limit = fdLimit();
  const needed = 2 * nWaiters + 300;
  if (limit < needed) {
    console.error(`file-descriptor limit ${limit} is below the ~${needed} this run needs; run \`ulimit -n ${needed}\` first (npm run bench does it when the hard limit allows)`);
    return 2;
  }

  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-bench-waiters-'));
  let server: LatheServer | undefined;
  const control = new http.Agent({ keepAlive: true, maxSockets: 8 });
  const hbAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  // One socket per held long-poll (Node's default maxSockets is Infinity, but be explicit).
  const waitAgent = new http.Agent({ keepAlive: true, maxSockets: nWaiters + 64 });
  const waiters: Waiter[] = [];
  try {
    const t0 = performance.now();
    server = await createServer({ dataDir, modelsDir, longPollMs });
    const port = await listenOnFreePort(server);
    const { key } = await server.services.store.keys.create('bench-control-plane-waiters');
    const hub = server.services.hub;
    const postJson = (agent: http.Agent, p: string, body: unknown, headers: Record<string, string> = {}): Promise<Reply> =>
      request(agent, port, key, `/api/v1/${p}`, JSON.stringify(body), { 'content-type': 'application/json', ...headers });

    const session = jsonOf(await postJson(control, 'create_session', { tags: [], user_metadata: {}, sdk_version: '0.25.0', type: 'create_session' }), 'create_session');
    const sessionId = String(session['session_id']);
    const created = jsonOf(
      await postJson(control, 'create_model', { session_id: sessionId, model_seq_id: 0, base_model: model, lora_config: { rank: 8, train_unembed: true, train_mlp: true, train_attn: true }, type: 'create_model' }),
      'create_model',
    );
    const modelId = String(created['model_id']);
    // Wait for create_model (starts the worker), re-polling on 408 as the SDK does; bounded.
    for (let i = 0; ; i++) {
      const r = await postJson(control, 'retrieve_future', { request_id: created['request_id'], allow_metadata_only: true });
      if (r.status === 200) {
        const body = JSON.parse(r.body.toString()) as Record<string, unknown>;
        if (body['model_id'] === modelId) break;
        if ('error' in body) throw new Error(`create_model failed: ${String(body['error'])}`);
      } else if (r.status !== 408) throw new Error(`retrieve_future(create_model): HTTP ${r.status} ${r.body.toString()}`);
      if (performance.now() - t0 > 180_000) throw new Error('create_model did not finish in 180 s');
      if (i > 0) await sleep(5);
    }
    const setupS = (performance.now() - t0) / 1000;

    const heartbeatBody = JSON.stringify({ session_id: sessionId, type: 'session_heartbeat' });
    const loopDelay = monitorEventLoopDelay({ resolution: 10 });
    loopDelay.enable();
    /** `n` sequential heartbeats; returns their latencies (ms) and the event-loop delay p99 meanwhile. */
    async function heartbeats(n: number): Promise<{ ms: number[]; loopP99: number }> {
      loopDelay.reset();
      const ms: number[] = [];
      const deadline = performance.now() + 40_000; // bounded even when the server is swamped
      for (let i = 0; i < n && performance.now() < deadline; i++) {
        const start = performance.now();
        const r = await request(hbAgent, port, key, '/api/v1/session_heartbeat', heartbeatBody, { 'content-type': 'application/json' });
        ms.push(performance.now() - start);
        if (r.status !== 200) throw new Error(`session_heartbeat: HTTP ${r.status} ${r.body.toString()}`);
      }
      return { ms, loopP99: loopDelay.percentile(99) / 1e6 };
    }

    await heartbeats(300); // warm-up (JIT, sockets, SQLite statement cache)
    const idle = await heartbeats(nHeartbeats);

    // N pending futures: seq 2..N+1 wait forever behind the missing seq 1.
    const datum: WireDatum = {
      modelInput: [11, 12, 13, 14],
      lossFnInputs: {
        target_tokens: { dtype: 'int64', shape: [4], data: BigInt64Array.of(12n, 13n, 14n, 15n) },
        weights: { dtype: 'float32', shape: [4], data: Float32Array.of(1, 1, 1, 1) },
      },
    };
    const requestIds: string[] = new Array<string>(nWaiters);
    const tSubmit = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < nWaiters) {
          const i = next++;
          const body = encodeForwardBackwardRequest({ modelId, seqId: i + 2, data: [datum], lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: false });
          const r = await request(control, port, key, '/api/v1/forward_backward', body, { 'content-type': 'application/x-protobuf' });
          requestIds[i] = String(jsonOf(r, `forward_backward seq ${i + 2}`)['request_id']);
        }
      }),
    );
    const submitS = (performance.now() - tSubmit) / 1000;
    const queued = server.services.queues()[model]?.training ?? 0;
    if (queued !== nWaiters) throw new Error(`expected ${nWaiters} buffered training requests, the lane reports ${queued}`);

    // Open the long-polls in batches; after each, wait (bounded) until the hub has registered them.
    const memBefore = process.memoryUsage();
    const tOpen = performance.now();
    const counters = { answers: new Map<number, number>(), errors: 0 };
    let registerWaitMs = 10_000; // cut short once a batch fails to register (a server that does not hold)
    for (let start = 0; start < nWaiters; start += batch) {
      const end = Math.min(nWaiters, start + batch);
      for (let i = start; i < end; i++) {
        const w = new Waiter(waitAgent, port, key, requestIds[i]!, counters);
        waiters.push(w);
        w.poll();
      }
      const until = performance.now() + registerWaitMs;
      while (hub.waiting < end && performance.now() < until) await sleep(5);
      if (hub.waiting < end) registerWaitMs = 500;
    }
    const openS = (performance.now() - tOpen) / 1000;
    const heldBefore = hub.waiting;
    const answersBefore = sumAnswers(counters.answers);
    const memLoaded = process.memoryUsage();

    let profiler: Session | undefined;
    if (values['cpu-profile']) {
      profiler = new Session();
      profiler.connect();
      await profiler.post('Profiler.enable');
      await profiler.post('Profiler.start');
    }
    const loaded = await heartbeats(nHeartbeats);
    if (profiler && values['cpu-profile']) {
      const { profile } = await profiler.post('Profiler.stop');
      writeFileSync(values['cpu-profile'], JSON.stringify(profile));
      profiler.disconnect();
      console.log(`CPU profile of the loaded phase written to ${values['cpu-profile']}`);
    }
    const heldAfter = hub.waiting;
    const answeredDuringLoaded = sumAnswers(counters.answers) - answersBefore;
    const statusCounts = Object.fromEntries(counters.answers);

    // Release: disconnect every waiter; the server must drop each one (no leaked waiters).
    const tRelease = performance.now();
    for (const w of waiters) w.stop();
    const releaseUntil = performance.now() + 15_000;
    while (hub.waiting > 0 && performance.now() < releaseUntil) await sleep(10);
    const leftAfterRelease = hub.waiting;
    const releaseS = (performance.now() - tRelease) / 1000;
    waitAgent.destroy();
    await sleep(200);
    const idleAfter = await heartbeats(nHeartbeats);
    loopDelay.disable();

    const i = stats(idle.ms);
    const l = stats(loaded.ms);
    const a = stats(idleAfter.ms);
    const ratio = i.p99 / l.p99;
    const held = Math.min(heldBefore, heldAfter);
    const valid = held >= nWaiters * 0.99 && answeredDuringLoaded === 0;
    const mb = (x: number): string => (x / 1024 / 1024).toFixed(1);

    console.log(`setup ${setupS.toFixed(1)} s (fd limit ${limit}); ${nWaiters} pending futures submitted in ${submitS.toFixed(2)} s (${(nWaiters / submitS).toFixed(0)}/s); long-polls opened in ${openS.toFixed(2)} s`);
    console.log(`waiters held by the server (hub.waiting): ${heldBefore} after opening, ${heldAfter} after the loaded phase (target ${nWaiters}); long-poll answers during the loaded phase: ${answeredDuringLoaded}; all answers by status: ${JSON.stringify(statusCounts)}; client errors: ${counters.errors}`);
    console.log(`memory with waiters held: rss ${mb(memLoaded.rss)} MiB (+${mb(memLoaded.rss - memBefore.rss)}), heap ${mb(memLoaded.heapUsed)} MiB (+${mb(memLoaded.heapUsed - memBefore.heapUsed)}), client and server together`);
    console.log(`release: ${leftAfterRelease} waiters left in the hub ${releaseS.toFixed(2)} s after the clients disconnected`);
    const row = (name: string, s: Stats, loopP99: number): string =>
      `  ${name.padEnd(11)} n ${String(s.n).padStart(4)}  p50 ${s.p50.toFixed(2).padStart(7)} ms  p90 ${s.p90.toFixed(2).padStart(7)} ms  p99 ${s.p99.toFixed(2).padStart(7)} ms  max ${s.max.toFixed(2).padStart(7)} ms  (event-loop delay p99 ${loopP99.toFixed(1)} ms)`;
    console.log('session_heartbeat latency:');
    console.log(row('idle', i, idle.loopP99));
    console.log(row('loaded', l, loaded.loopP99));
    console.log(row('idle-after', a, idleAfter.loopP99));
    console.log(`ratio idle_p99 / loaded_p99 = ${ratio.toFixed(3)}; loaded p99 ${l.p99.toFixed(2)} ms vs target < ${TARGET_LOADED_P99_MS} ms: ${l.p99 < TARGET_LOADED_P99_MS ? 'met' : 'MISSED'}`);
    if (!valid) {
      console.log(`INVALID: the server did not hold the ${nWaiters} long-polls (held ${held}, ${answeredDuringLoaded} answered during the loaded phase), so "loaded" was not the intended load`);
    }
    console.log(
      JSON.stringify({
        bench: 'control-plane-waiters',
        ratio: r3(ratio),
        baseline: 'heartbeats on the idle server',
        idle_p50_ms: r3(i.p50),
        idle_p99_ms: r3(i.p99),
        loaded_p50_ms: r3(l.p50),
        loaded_p99_ms: r3(l.p99),
        idle_after_p50_ms: r3(a.p50),
        idle_after_p99_ms: r3(a.p99),
        target_loaded_p99_ms: TARGET_LOADED_P99_MS,
        target_met: l.p99 < TARGET_LOADED_P99_MS,
        waiters_target: nWaiters,
        waiters_held: held,
        polls_answered_while_loaded: answeredDuringLoaded,
        waiters_left_after_release: leftAfterRelease,
        valid,
        heartbeats: nHeartbeats,
        long_poll_ms: longPollMs,
      }),
    );
    return valid ? 0 : 1;
  } finally {
    for (const w of waiters) w.stop();
    control.destroy();
    hbAgent.destroy();
    waitAgent.destroy();
    await server?.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

function sumAnswers(m: Map<number, number>): number {
  let n = 0;
  for (const v of m.values()) n += v;
  return n;
}

/** One future's long-poll, re-polled at once on 408 / try_again (as the SDK does) until stopped. */
class Waiter {
  private req: http.ClientRequest | undefined;
  private stopped = false;
  private iteration = 0;

  constructor(
    private readonly agent: http.Agent,
    private readonly port: number,
    private readonly apiKey: string,
    private readonly requestId: string,
    private readonly counters: { answers: Map<number, number>; errors: number },
  ) {}

  poll(): void {
    if (this.stopped) return;
    const payload = Buffer.from(JSON.stringify({ request_id: this.requestId, allow_metadata_only: true }));
    const req = http.request(
      {
        host: '127.0.0.1',
        port: this.port,
        method: 'POST',
        path: '/api/v1/retrieve_future',
        agent: this.agent,
        headers: {
          'x-api-key': this.apiKey,
          'content-type': 'application/json',
          'content-length': String(payload.byteLength),
          accept: 'application/x-protobuf',
          'x-tinker-request-iteration': String(this.iteration++),
          'x-tinker-request-type': 'ForwardBackward',
        },
      },
      (res) => {
        res.resume();
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          this.counters.answers.set(status, (this.counters.answers.get(status) ?? 0) + 1);
          // 408 (or a 200 try_again, which this server does not send) means "poll again".
          if (status === 408) this.poll();
        });
      },
    );
    req.on('error', () => {
      if (!this.stopped) this.counters.errors++;
    });
    req.end(payload);
    this.req = req;
  }

  stop(): void {
    this.stopped = true;
    this.req?.destroy();
  }
}

runBench(main);
