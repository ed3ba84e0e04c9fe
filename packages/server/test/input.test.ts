// Hostile and odd-but-legal request bodies: zstd bombs and big zstd bodies, deeply nested JSON,
// the SDK's empty JSON bodies, and the client config the SDK steers by. One real server (SQLite);
// nothing here needs a worker.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '../src/index.js';
import { encodeForwardBackwardRequest } from '@lathe/protocol';
import { zstdProgress } from '../src/protocol/zstd.js';

let server: LatheServer;
let key: string;
let owner: string;
const MODEL = 'lathe/tiny-qwen3';
const PROTOBUF_LIMIT = 64 * 1024 * 1024;

before(async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-input-test-'));
  server = await createServer({ dataDir, models: [{ model_name: MODEL, max_context_length: 2048, vocab_size: 151936, architecture: 'qwen3' }] });
  const created = await server.services.store.keys.create('test');
  key = created.key;
  owner = created.id;
});
after(async () => {
  await server.close();
});

/** A zstd frame (no declared size, 128 KiB window) made of `blocks`, each a 3-byte header and its payload. */
function zstdFrame(blocks: { type: 'raw' | 'rle'; size: number; payload: Uint8Array }[]): Buffer {
  const parts: Uint8Array[] = [Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd, 0x00, (17 - 10) << 3)];
  blocks.forEach((block, i) => {
    const header = (i === blocks.length - 1 ? 1 : 0) | ((block.type === 'rle' ? 1 : 0) << 1) | (block.size << 3);
    parts.push(Uint8Array.of(header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff), block.payload);
  });
  return Buffer.concat(parts);
}

/** `payload` as zstd raw blocks: valid zstd for any bytes, and as costly to decode as it is big. */
function zstdRaw(payload: Uint8Array): Buffer {
  const blocks = [];
  for (let at = 0; at < payload.length; at += 128 << 10) {
    const chunk = payload.subarray(at, at + (128 << 10));
    blocks.push({ type: 'raw' as const, size: chunk.length, payload: chunk });
  }
  return zstdFrame(blocks);
}

/** A few KiB that decompress to `bytes` zero bytes. */
function zstdBomb(bytes: number): Buffer {
  const blocks = Array.from({ length: Math.ceil(bytes / (128 << 10)) }, () => ({ type: 'rle' as const, size: 128 << 10, payload: Uint8Array.of(0) }));
  return zstdFrame(blocks);
}

function postZstd(body: Buffer) {
  return server.app.inject({
    method: 'POST',
    url: '/api/v1/forward_backward',
    headers: { 'x-api-key': key, 'content-type': 'application/x-protobuf', 'content-encoding': 'zstd' },
    payload: body,
  });
}

test('a zstd bomb is refused with 413 naming the decompressed-size limit', async () => {
  const bomb = zstdBomb(PROTOBUF_LIMIT + (1 << 20));
  assert.ok(bomb.length < 8192, `the bomb is ${bomb.length} bytes`);
  const response = await postZstd(bomb);
  assert.equal(response.statusCode, 413, response.body);
  const error = (response.json() as { error: { type: string; message: string; category: string } }).error;
  assert.equal(error.type, 'payload_too_large');
  assert.equal(error.category, 'user');
  assert.match(error.message, new RegExp(`more than ${PROTOBUF_LIMIT} bytes`));
});

test('while a big zstd body decodes, other requests (a health check) are answered', async () => {
  // A legitimate 24 MiB forward_backward body (for a run that does not exist: it ends in a 404).
  const tokens = 6 << 20;
  const body = encodeForwardBackwardRequest({
    modelId: 'no-such-run',
    seqId: 1,
    lossFn: 'cross_entropy',
    lossFnConfig: {},
    forwardOnly: true,
    data: [{ modelInput: Array.from({ length: tokens }, (_, i) => i % 1000), lossFnInputs: {} }],
  });
  assert.ok(body.length > 20 << 20);
  const events: string[] = [];
  let health: Promise<unknown> | undefined;
  const onProgress = (): void => {
    // The first time decoding pauses, ask for /healthz: it must be answered before decoding ends.
    health ??= server.app.inject({ method: 'GET', url: '/api/v1/healthz' }).then((r) => events.push(`healthz ${r.statusCode}`));
  };
  zstdProgress.subscribe(onProgress);
  try {
    const big = await postZstd(zstdRaw(body));
    events.push(`forward_backward ${big.statusCode}`);
    await health;
  } finally {
    zstdProgress.unsubscribe(onProgress);
  }
  assert.deepEqual(events, ['healthz 200', 'forward_backward 404']);
});

test('JSON nested thousands of levels deep is a 400 naming the field, not a 500', async () => {
  let nested = '1';
  for (let i = 0; i < 10_000; i++) nested = `{"a":${nested}}`;
  const response = await server.app.inject({
    method: 'POST',
    url: '/api/v1/create_session',
    headers: { 'x-api-key': key, 'content-type': 'application/json' },
    payload: `{"tags":[],"sdk_version":"0.25.0","user_metadata":${nested}}`,
  });
  assert.equal(response.statusCode, 400, response.body);
  const error = (response.json() as { error: { type: string; message: string } }).error;
  assert.match(error.message, /^user_metadata\.a\.a/);
  assert.match(error.message, /nests deeper than 64 levels/);
  // Arrays too, far deeper than any stack.
  const arrays = await server.app.inject({
    method: 'POST',
    url: '/api/v1/create_session',
    headers: { 'x-api-key': key, 'content-type': 'application/json' },
    payload: `{"tags":${'['.repeat(200_000)}${']'.repeat(200_000)}}`,
  });
  assert.equal(arrays.statusCode, 400, arrays.body);
  assert.match(arrays.body, /tags\.0\.0/);
  // Ordinary nesting is fine.
  const ok = await server.app.inject({
    method: 'POST',
    url: '/api/v1/create_session',
    headers: { 'x-api-key': key, 'content-type': 'application/json' },
    payload: { tags: [], user_metadata: { a: { b: { c: [1, [2, [3]]] } } } },
  });
  assert.equal(ok.statusCode, 200, ok.body);
});

test('an empty JSON body (as the SDK sends on DELETE and some POSTs) counts as {}', async () => {
  const { store } = server.services;
  const session = (
    await server.app.inject({ method: 'POST', url: '/api/v1/create_session', headers: { 'x-api-key': key }, payload: { tags: [], user_metadata: {} } })
  ).json() as { session_id: string };
  const modelId = `${session.session_id}:train:0`;
  await store.runs.create({
    modelId, owner, sessionId: session.session_id, baseModel: MODEL, loraRank: 4, userMetadata: {}, now: Date.now(),
    loraConfig: { rank: 4, seed: null, trainAttn: true, trainMlp: true, trainUnembed: true },
  });
  const storagePath = path.join(mkdtempSync(path.join(os.tmpdir(), 'lathe-input-ckpt-')), 'ckpt');
  mkdirSync(storagePath);
  await store.checkpoints.put({
    modelId, checkpointId: 'weights/c', owner, checkpointType: 'training', tinkerPath: `tinker://${modelId}/weights/c`,
    storagePath, sizeBytes: 1, expiresAt: null, ephemeral: false, now: Date.now(),
  });
  const base = `/api/v1/training_runs/${encodeURIComponent(modelId)}/checkpoints/weights/c`;
  const empty = async (method: 'POST' | 'DELETE', url: string, withLength: boolean) => {
    const headers: Record<string, string> = { 'x-api-key': key, 'content-type': 'application/json', ...(withLength ? { 'content-length': '0' } : {}) };
    return server.app.inject({ method, url, headers });
  };
  for (const withLength of [true, false]) {
    const publish = await empty('POST', `${base}/publish`, withLength);
    assert.equal(publish.statusCode, 200, publish.body);
    assert.equal((await store.checkpoints.get(modelId, 'weights/c', owner))?.public, true);
    const unpublish = await empty('DELETE', `${base}/publish`, withLength);
    assert.equal(unpublish.statusCode, 200, unpublish.body);
    assert.equal((await store.checkpoints.get(modelId, 'weights/c', owner))?.public, false);
  }
  const deleted = await empty('DELETE', base, true);
  assert.equal(deleted.statusCode, 200, deleted.body);
  assert.equal(existsSync(storagePath), false);
  const finished = await empty('POST', `/api/v1/sessions/${session.session_id}/finish`, false);
  assert.equal(finished.statusCode, 200, finished.body);
  assert.equal(finished.json().session_id, session.session_id);
  // A route that needs fields still says which one is missing.
  const heartbeat = await empty('POST', '/api/v1/session_heartbeat', true);
  assert.equal(heartbeat.statusCode, 400);
  assert.match(heartbeat.body, /session_id/);
});

test('client/config sets every flag the SDK reads to what Lathe supports, with the plain httpx transport', async () => {
  const response = await server.app.inject({ method: 'POST', url: '/api/v1/client/config', headers: { 'x-api-key': key }, payload: { sdk_version: '0.25.0' } });
  assert.equal(response.statusCode, 200);
  assert.deepEqual(response.json(), {
    pjwt_auth_enabled: false,
    credential_default_source: 'api_key',
    sample_dispatch_bytes_semaphore_size: 10 * 1024 * 1024,
    inflight_response_bytes_semaphore_size: 50 * 1024 * 1024,
    proto_compress_fwdbwd: true,
    proto_write_fwdbwd: true,
    fwd_via_fwdbwd: true,
    parallel_fwdbwd_chunks: true,
    fwdbwd_max_chunk_len: 1024,
    fwdbwd_max_chunk_bytes_count: 5_000_000,
    fwdbwd_dispatch_bytes_semaphore_size: 50_000_000,
    billing_exception_max_pause_duration_sec: 3600,
    sample_no_retries: false,
    sample_enable_stuck_detection: true,
    sample_max_concurrent_requests: 2000,
    use_pyqwest_transport: false,
    create_model_via_load_weights: false,
    sample_use_retrieve_futures: true,
    sample_join_sampling_session: true,
  });
  const dynamic = await server.app.inject({ method: 'POST', url: '/api/v1/client/dynamic_config', headers: { 'x-api-key': key }, payload: { sdk_version: '0.32.0' } });
  assert.deepEqual(dynamic.json(), { refresh_interval_sec: 300, sample_cancel_enabled: true, sample_cancel_max_batch_size: 64 });
});
