/**
 * @module Shared by the multi-tenant benchmarks: a server in this process on a temporary data
 * directory, reached over real HTTP, and API-key clients that create runs and submit pipelined
 * training steps the way the SDK does (protobuf forward_backward, JSON optim_step, futures polled
 * with re-polls on 408).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createServer, type LatheServer } from '../../packages/server/src/app.js';
import { encodeForwardBackwardRequest, type WireDatum } from '@lathe/protocol';
import type { SchedulingOptions } from '../../packages/server/src/scheduler/lane.js';
import { jsonOf, listenOnFreePort, request } from './_http.js';

const TOKENS = [9707, 1879, 11, 1246, 525, 498, 30];

/** A prompt of a few ordinary tokens. */
export const PROMPT = TOKENS;

/** A cross-entropy datum of `length` tokens (next-token targets, weight 1). */
export function datum(length: number): WireDatum {
  const tokens = Array.from({ length: length + 1 }, (_, i) => TOKENS[i % TOKENS.length]!);
  return {
    modelInput: tokens.slice(0, -1),
    lossFnInputs: {
      target_tokens: { dtype: 'int64', shape: [length], data: BigInt64Array.from(tokens.slice(1), BigInt) },
      weights: { dtype: 'float32', shape: [length], data: new Float32Array(length).fill(1) },
    },
  };
}

/** A training run of one tenant. */
export interface BenchRun {
  modelId: string;
  /** Submits forward_backward of `data` then optim_step (pipelined); returns their request ids. */
  step(data: WireDatum[]): Promise<unknown[]>;
}

/** One API key's view of the server. */
export interface Tenant {
  post(urlPath: string, body: unknown): Promise<Record<string, unknown>>;
  /** Waits for a future's result (throws if it failed). */
  result(requestId: unknown): Promise<Record<string, unknown>>;
  sessionId: unknown;
  createRun(loraRank?: number): Promise<BenchRun>;
}

/** A running benchmark server. */
export interface BenchServer {
  server: LatheServer;
  tenant(name: string): Promise<Tenant>;
  close(): Promise<void>;
}

/**
 * Starts a server for `model` on a fresh data directory, listening on a free port.
 *
 * @example
 * const bench = await startBenchServer({ model: 'lathe/tiny-qwen3', modelsDir });
 * const alice = await bench.tenant('alice');
 * const run = await alice.createRun();
 * for (const id of await run.step([datum(64)])) await alice.result(id);
 * await bench.close();
 */
export async function startBenchServer(options: { model: string; modelsDir: string; ordering?: SchedulingOptions; snapshotEvery?: number }): Promise<BenchServer> {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-bench-tenants-'));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const server = await createServer({ dataDir, modelsDir: options.modelsDir, ...(options.ordering ? { ordering: options.ordering } : {}), ...(options.snapshotEvery ? { snapshotEvery: options.snapshotEvery } : {}) });
  const port = await listenOnFreePort(server);

  const tenant = async (name: string): Promise<Tenant> => {
    const { key } = await server.services.store.keys.create(name);
    const post = async (p: string, body: unknown): Promise<Record<string, unknown>> =>
      jsonOf(await request(agent, port, key, `/api/v1/${p}`, JSON.stringify(body), { 'content-type': 'application/json' }), p);
    const result = async (requestId: unknown): Promise<Record<string, unknown>> => {
      for (;;) {
        const r = await request(agent, port, key, '/api/v1/retrieve_future', JSON.stringify({ request_id: requestId, allow_metadata_only: true }), { 'content-type': 'application/json' });
        if (r.status === 408) continue;
        const body = jsonOf(r, 'retrieve_future');
        if ('error' in body) throw new Error(`request failed: ${JSON.stringify(body)}`);
        return body;
      }
    };
    const sessionId = (await post('create_session', { tags: [], user_metadata: {}, sdk_version: '0.32.0', type: 'create_session' }))['session_id'];
    let modelSeq = 0;
    const createRun = async (loraRank = 8): Promise<BenchRun> => {
      const created = await post('create_model', { session_id: sessionId, model_seq_id: modelSeq++, base_model: options.model, lora_config: { rank: loraRank }, type: 'create_model' });
      await result(created['request_id']);
      const modelId = String(created['model_id']);
      let seq = 1;
      const step = async (data: WireDatum[]): Promise<unknown[]> => {
        const body = encodeForwardBackwardRequest({ modelId, seqId: seq++, data, lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: false });
        const fb = jsonOf(await request(agent, port, key, '/api/v1/forward_backward', body, { 'content-type': 'application/x-protobuf' }), 'forward_backward');
        const optim = await post('optim_step', { model_id: modelId, seq_id: seq++, adam_params: { learning_rate: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-12 }, type: 'optim_step' });
        return [fb['request_id'], optim['request_id']];
      };
      return { modelId, step };
    };
    return { post, result, sessionId, createRun };
  };

  return {
    server,
    tenant,
    async close() {
      agent.destroy();
      await server.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Runs `body` against a server started as {@link startBenchServer} does, and closes it after.
 *
 * @example
 * return withBenchServer({ model: 'lathe/tiny-qwen3', modelsDir }, async (bench) => { await bench.tenant('alice'); return 0; });
 */
export async function withBenchServer<T>(options: Parameters<typeof startBenchServer>[0], body: (bench: BenchServer) => Promise<T>): Promise<T> {
  const bench = await startBenchServer(options);
  try {
    return await body(bench);
  } finally {
    await bench.close();
  }
}
