// The model catalogue over HTTP with real workers: folder paths as base_model, models added while
// the server runs, aliases (option and models.json); and error messages that never show server paths.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createServer, type LatheServer } from '../src/index.js';
import { pythonExecutable, REPO_ROOT } from '../src/worker/process.js';
import { apiHelpers } from './fixtures/api.js';

let server: LatheServer;
let key: string;
let dataDir: string;
let modelsDir: string;
let scratch: string;
/** A complete tiny-qwen3 HF folder to copy models from. */
let tiny: string;

before(async () => {
  scratch = mkdtempSync(path.join(os.tmpdir(), 'lathe-models-scratch-'));
  dataDir = path.join(mkdtempSync(path.join(os.tmpdir(), 'lathe-models-test-')), 'data');
  modelsDir = path.join(dataDir, 'models');
  mkdirSync(modelsDir, { recursive: true });
  tiny = execFileSync(
    pythonExecutable(),
    ['-c', 'import sys; from pathlib import Path; from lathe_worker.models.tiny import materialize_tiny; print(materialize_tiny("lathe/tiny-qwen3", Path(sys.argv[1])))', scratch],
    { cwd: path.join(REPO_ROOT, 'worker'), encoding: 'utf8' },
  ).trim();
  cpSync(tiny, path.join(scratch, 'aliased'), { recursive: true });
  cpSync(tiny, path.join(dataDir, 'from-config'), { recursive: true });
  // models.json: a relative folder path is taken from the data directory.
  writeFileSync(path.join(dataDir, 'models.json'), JSON.stringify({ aliases: { 'acme/from-config': './from-config' } }));
  // The hub cache is empty at start; a model appears in it later.
  process.env['HF_HUB_CACHE'] = path.join(scratch, 'hub');
  server = await createServer({ dataDir, modelAliases: { 'Qwen/Qwen3-8B': path.join(scratch, 'aliased') } });
  key = (await server.services.store.keys.create('test')).key;
});
after(async () => {
  await server.close();
});

const { call, result } = apiHelpers(() => ({ server, key }));

let sessionId: string | undefined;
let modelSeq = 0;
async function createModel(baseModel: string): Promise<{ status: number; body: Record<string, unknown>; modelId?: string }> {
  sessionId ??= (await call('POST', '/api/v1/create_session', { tags: [], user_metadata: {} })).body['session_id'] as string;
  const created = await call('POST', '/api/v1/create_model', { session_id: sessionId, model_seq_id: modelSeq++, base_model: baseModel, lora_config: { rank: 4 } });
  if (created.status !== 200) return created;
  return { status: 200, body: await result(created.body['request_id'] as string), modelId: created.body['model_id'] as string };
}

async function forward(modelId: string, seqId: number): Promise<Record<string, unknown>> {
  const submitted = await call('POST', '/api/v1/forward', {
    model_id: modelId,
    seq_id: seqId,
    forward_input: { loss_fn: 'cross_entropy', data: [{ model_input: { chunks: [{ type: 'encoded_text', tokens: [9707, 1879, 11] }] }, loss_fn_inputs: { target_tokens: [1879, 11, 1246] } }] },
  });
  assert.equal(submitted.status, 200, JSON.stringify(submitted.body));
  return result(submitted.body['request_id'] as string);
}

async function capabilities(): Promise<Map<string, Record<string, unknown>>> {
  const caps = await call('GET', '/api/v1/get_server_capabilities');
  return new Map((caps.body['supported_models'] as Record<string, unknown>[]).map((m) => [m['model_name'] as string, m]));
}

test('aliases (from the option and from models.json) are listed and served from their folders', async () => {
  const models = await capabilities();
  assert.equal(models.get('Qwen/Qwen3-8B')?.['max_context_length'], 2048);
  assert.equal(models.get('acme/from-config')?.['max_context_length'], 2048);
  // The aliased folders are offered under their alias only.
  assert.ok(![...models.keys()].some((name) => name.includes(scratch) || name.includes(dataDir)));
  const run = await createModel('Qwen/Qwen3-8B');
  assert.equal(run.body['model_id'], run.modelId, JSON.stringify(run.body));
  const info = await call('POST', '/api/v1/get_info', { model_id: run.modelId });
  assert.equal((info.body['model_data'] as Record<string, unknown>)['model_name'], 'Qwen/Qwen3-8B');
  assert.equal((info.body['model_data'] as Record<string, unknown>)['arch'], 'qwen3');
  assert.ok('metrics' in (await forward(run.modelId!, 1)));
  const fromConfig = await createModel('acme/from-config');
  assert.equal(fromConfig.body['model_id'], fromConfig.modelId, JSON.stringify(fromConfig.body));
});

test('a folder path given as base_model loads', async () => {
  const folder = path.join(scratch, 'by-path');
  cpSync(tiny, folder, { recursive: true });
  const run = await createModel(folder);
  assert.equal(run.body['model_id'], run.modelId, JSON.stringify(run.body));
  assert.ok('metrics' in (await forward(run.modelId!, 1)));
  assert.ok((await capabilities()).has(folder));
  // A path that is no model folder is an unknown model, not a worker failure.
  const missing = await createModel(path.join(scratch, 'nothing-here'));
  assert.equal(missing.status, 400);
  assert.match(JSON.stringify(missing.body), /unknown base model/);
});

test('models added to the models directory or the HF cache after start are found without a restart', async () => {
  assert.equal((await createModel('late/flat')).status, 400);
  cpSync(tiny, path.join(modelsDir, 'late__flat'), { recursive: true });
  const flat = await createModel('late/flat');
  assert.equal(flat.body['model_id'], flat.modelId, JSON.stringify(flat.body));
  // The hub layout, in the HF cache and copied into the models directory.
  cpSync(tiny, path.join(scratch, 'hub', 'models--late--cached', 'snapshots', 'rev1'), { recursive: true });
  cpSync(tiny, path.join(modelsDir, 'models--late--copied', 'snapshots', 'rev1'), { recursive: true });
  const models = await capabilities();
  assert.ok(models.has('late/flat') && models.has('late/cached') && models.has('late/copied'), [...models.keys()].join(', '));
  const cached = await createModel('late/cached');
  assert.equal(cached.body['model_id'], cached.modelId, JSON.stringify(cached.body));
});

test('error messages never show server paths: a corrupt checkpoint, a model with a missing weights file', async () => {
  const run = await createModel('lathe/tiny-qwen3');
  assert.ok(run.modelId, JSON.stringify(run.body));
  const saved = await call('POST', '/api/v1/save_weights', { model_id: run.modelId, seq_id: 1, path: 'c' });
  const tinkerPath = (await result(saved.body['request_id'] as string))['path'] as string;
  const checkpoint = await server.services.store.checkpoints.byTinkerPath(tinkerPath, (await server.services.store.keys.list())[0]!.id);
  writeFileSync(path.join(checkpoint!.storagePath, 'adapter.safetensors'), 'not a safetensors file');
  const loaded = await call('POST', '/api/v1/load_weights', { model_id: run.modelId, seq_id: 2, path: tinkerPath, optimizer: false });
  const corrupt = await result(loaded.body['request_id'] as string);
  assert.match(String(corrupt['error']), /cannot read <data-dir>\/checkpoints\/.*adapter\.safetensors/);

  cpSync(tiny, path.join(modelsDir, 'broken__weights'), { recursive: true });
  rmSync(path.join(modelsDir, 'broken__weights', 'model.safetensors'));
  const sampled = await call('POST', '/api/v1/asample', {
    base_model: 'broken/weights', num_samples: 1, prompt: { chunks: [{ type: 'encoded_text', tokens: [9707] }] }, sampling_params: { max_tokens: 2 },
  });
  assert.equal(sampled.status, 200, JSON.stringify(sampled.body));
  const broken = await result(sampled.body['request_id'] as string);
  assert.match(String(broken['error']), /<models-dir>\/broken__weights/);

  for (const message of [String(corrupt['error']), String(broken['error'])]) {
    for (const secret of [dataDir, modelsDir, REPO_ROOT, os.tmpdir()]) assert.ok(!message.includes(secret), `${JSON.stringify(secret)} in: ${message}`);
  }
});
