// `lathe runs|checkpoints|models` against a real server and worker on the tiny model: a run trained
// here is listed; its checkpoints are listed, downloaded, exported (PEFT and merged, each checked in
// Python against Lathe's logprobs) and deleted; models are pulled from a local server that speaks
// the Hugging Face Hub's endpoints (the only stand-in: this machine cannot reach the Hub).
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { ModelInput, ServiceClient, type Datum } from '@lathe/sdk';
import { createServer, pythonExecutable, type LatheServer } from '@lathe/server';
import { list as listTar } from 'tar';
import { checkpointsTable, deleteCheckpoint, downloadCheckpoint, exportCheckpoint, listCheckpoints } from '../src/commands/checkpoints.js';
import { listModels, modelsTable } from '../src/commands/models.js';
import { listRuns, runsTable, showRun } from '../src/commands/runs.js';
import { HubError, pullModel } from '../src/hub.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const LATHE = path.join(ROOT, 'packages/cli/test/fixtures/lathe.ts');
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const TINY_FOLDER = path.join(MODELS_DIR, 'lathe__tiny-qwen3');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'lathe-cli-manage-'));

/** Runs the `lathe` CLI from source; resolves with its exit code and output. */
function lathe(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--conditions=lathe-source', '--import', 'tsx', LATHE, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const out: string[] = [];
  const err: string[] = [];
  child.stdout.on('data', (chunk: Buffer) => out.push(chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => err.push(chunk.toString()));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, stdout: out.join(''), stderr: err.join('') })));
}

const SEQUENCES = [
  [9707, 1879, 11, 1246, 525, 498, 30],
  [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13],
];
const DATA: Datum[] = SEQUENCES.map((seq) => ({ modelInput: ModelInput.fromInts(seq.slice(0, -1)), lossFnInputs: { target_tokens: seq.slice(1), weights: seq.slice(1).map(() => 1) } }));

let server: LatheServer;
let service: ServiceClient;
let connection: { baseUrl: string; apiKey: string; dataDir: string; log: (line: string) => void };
let runId: string;
let statePath: string;
let samplerPath: string;
/** Lathe's logprobs of SEQUENCES with the adapter as saved, for the Python checks. */
let expectFile: string;

before(async () => {
  const dataDir = path.join(scratch, 'data');
  server = await createServer({ dataDir, modelsDir: MODELS_DIR });
  const baseUrl = await server.app.listen({ host: '127.0.0.1', port: 0 });
  const apiKey = (await server.services.store.keys.create('manage-test')).key;
  service = new ServiceClient({ baseUrl, apiKey });
  connection = { baseUrl, apiKey, dataDir: path.join(scratch, 'unused'), log: () => {} };
  const training = await service.createLoraTrainingClient({ baseModel: 'lathe/tiny-qwen3', rank: 4, seed: 0 });
  runId = training.modelId;
  for (let step = 0; step < 3; step++) await Promise.all([training.forwardBackward(DATA, 'cross_entropy'), training.optimStep({ learningRate: 2e-2 })]);
  statePath = (await training.saveState('step-3')).path;
  samplerPath = (await training.saveWeightsForSampler('final')).path;
  const out = await training.forward(DATA, 'cross_entropy');
  expectFile = path.join(scratch, 'expect.json');
  writeFileSync(expectFile, JSON.stringify({ sequences: SEQUENCES, logprobs: out.lossFnOutputs.map((o) => Array.from(o['logprobs']!.data as Float32Array)) }));
});

after(async () => {
  await service?.close();
  await server?.close();
  rmSync(scratch, { recursive: true, force: true });
});

/** `worker/tests/check_export.py`: exit 0 when the exports give Lathe's logprobs; its report. */
async function checkExports(peft: string, merged: string): Promise<string> {
  const script = path.join(ROOT, 'worker/tests/check_export.py');
  const { stdout } = await promisify(execFile)(pythonExecutable(), [script, '--base', TINY_FOLDER, '--peft', peft, '--merged', merged, '--expect', expectFile], { cwd: path.join(ROOT, 'worker') });
  return stdout;
}

describe('runs and checkpoints', () => {
  test('runs list shows the run trained here (JSON and table), runs show lists its checkpoints', async () => {
    const listed = await lathe(['runs', 'list', '--base-url', connection.baseUrl, '--api-key', connection.apiKey, '--json']);
    assert.equal(listed.code, 0, listed.stderr);
    const runs = JSON.parse(listed.stdout) as { trainingRunId: string; baseModel: string; loraRank: number }[];
    assert.deepEqual(runs.map((r) => [r.trainingRunId, r.baseModel, r.loraRank]), [[runId, 'lathe/tiny-qwen3', 4]]);
    const table = runsTable(await listRuns({ ...connection, limit: 10 }));
    assert.match(table, /^RUN +BASE MODEL +RANK +LAST REQUEST +LAST CHECKPOINT\n/);
    assert.ok(table.includes(runId) && table.includes(statePath), table);
    const { run, checkpoints } = await showRun({ ...connection, runId });
    assert.equal(run.baseModel, 'lathe/tiny-qwen3');
    assert.deepEqual(checkpoints.map((c) => c.tinkerPath).sort(), [samplerPath, statePath].sort());
    await assert.rejects(showRun({ ...connection, runId: 'no-such-run' }), /no-such-run/);
  });

  test('checkpoints list: per run and for the key, with types and sizes', async () => {
    const checkpoints = await listCheckpoints({ ...connection, runId, limit: 100 });
    assert.deepEqual(checkpoints.map((c) => [c.tinkerPath, c.checkpointType]).sort(), [[samplerPath, 'sampler'], [statePath, 'training']].sort());
    assert.ok(checkpoints.every((c) => (c.sizeBytes ?? 0) > 0));
    assert.equal((await listCheckpoints({ ...connection, limit: 1 })).length, 1);
    const table = checkpointsTable(checkpoints);
    assert.match(table, /^PATH +TYPE +SIZE +CREATED +EXPIRES +PUBLIC\n/);
    assert.match(table, new RegExp(`${samplerPath.replace(/[/:.]/g, '\\$&')} +sampler +\\d`));
  });

  test('checkpoints download writes a tar of the PEFT-layout adapter', async () => {
    const output = path.join(scratch, 'final.tar');
    const { file, bytes } = await downloadCheckpoint({ ...connection, tinkerPath: samplerPath, output });
    assert.equal(file, output);
    assert.equal(statSync(output).size, bytes);
    const entries: string[] = [];
    await listTar({ file: output, onReadEntry: (entry) => entries.push(entry.path) });
    assert.deepEqual(entries.sort(), ['adapter_config.json', 'adapter_model.safetensors']);
    await assert.rejects(downloadCheckpoint({ ...connection, tinkerPath: `tinker://${runId}/weights/nope`, output: path.join(scratch, 'nope.tar') }), /nope/);
  });

  test('checkpoints export (CLI): --peft loads in peft and --merged in transformers, both with Lathe\'s logprobs', async () => {
    const peft = path.join(scratch, 'export-peft');
    const merged = path.join(scratch, 'export-merged');
    const result = await lathe(['checkpoints', 'export', samplerPath, '--peft', peft, '--merged', merged, '--base-url', connection.baseUrl, '--api-key', connection.apiKey, '--models-dir', MODELS_DIR]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /wrote the PEFT adapter to .*\nwrote the merged model to /);
    const adapterConfig = JSON.parse(readFileSync(path.join(peft, 'adapter_config.json'), 'utf8')) as { target_modules: string[]; r: number };
    assert.equal(adapterConfig.r, 4);
    assert.ok(adapterConfig.target_modules.includes('lm_head') && !adapterConfig.target_modules.includes('unembed_tokens'));
    assert.deepEqual(readdirSync(merged).sort(), ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    assert.equal((JSON.parse(readFileSync(path.join(merged, 'config.json'), 'utf8')) as { tie_word_embeddings: boolean }).tie_word_embeddings, false);

    const report = await checkExports(peft, merged);
    assert.match(report, /merged: max \|exported - lathe\|/);
    assert.match(report, /peft: max \|exported - lathe\|/);
  });

  test('checkpoints export refuses a non-empty output folder, and a base model it cannot find, naming them', async () => {
    const busy = path.join(scratch, 'busy');
    mkdirSync(busy);
    writeFileSync(path.join(busy, 'keep.txt'), 'mine');
    await assert.rejects(exportCheckpoint({ ...connection, tinkerPath: statePath, merged: busy, modelsDir: MODELS_DIR }), /--merged .*busy exists and is not empty/);
    assert.deepEqual(readdirSync(busy), ['keep.txt']);
    const merged = path.join(scratch, 'merged-absent-base');
    await assert.rejects(exportCheckpoint({ ...connection, tinkerPath: statePath, merged, modelsDir: MODELS_DIR, baseModel: 'acme/absent' }), /model 'acme\/absent' is neither built in nor found locally/);
    assert.ok(!existsSync(merged));
  });

  test('checkpoints delete removes it; deleting it again is a not-found error', async () => {
    await deleteCheckpoint({ ...connection, tinkerPath: statePath });
    assert.deepEqual((await listCheckpoints({ ...connection, runId, limit: 100 })).map((c) => c.tinkerPath), [samplerPath]);
    await assert.rejects(deleteCheckpoint({ ...connection, tinkerPath: statePath }), /not found|404/i);
  });
});

// ------------------------------------------------------------------------------------------------
// models pull against a local server with the Hub's endpoints

/** What the fake Hub serves for one repo and how it misbehaves. */
interface FakeRepo {
  files: Record<string, Buffer>;
  /** Cut the connection halfway through this many first downloads of model.safetensors. */
  cuts: number;
  /** Listed sha256 overrides (a corrupt mirror). */
  sha256?: Record<string, string>;
}

const hubRepos = new Map<string, FakeRepo>();
const hubRequests: { path: string; range: string | undefined }[] = [];
let hub: http.Server;
let endpoint: string;

/** The Hub's two endpoints: the revision listing (with blobs) and resolve, with Range support. */
function handleHub(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = new URL(req.url!, 'http://hub');
  hubRequests.push({ path: url.pathname, range: req.headers.range });
  const listing = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
  if (listing) {
    const repo = hubRepos.get(listing[1]!);
    if (!repo) return void res.writeHead(404, { 'x-error-code': 'RepoNotFound' }).end('{"error":"Repository not found"}');
    const siblings = Object.entries(repo.files).map(([name, data]) =>
      name.endsWith('.safetensors') ? { rfilename: name, size: data.length, lfs: { size: data.length, sha256: repo.sha256?.[name] ?? createHash('sha256').update(data).digest('hex') } } : { rfilename: name, size: data.length },
    );
    siblings.push({ rfilename: 'pytorch_model.bin', size: 10 }, { rfilename: 'original/consolidated.pth', size: 10 });
    return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: listing[1], sha: 'abc123', siblings }));
  }
  const resolve = /^\/([^/]+\/[^/]+)\/resolve\/abc123\/(.+)$/.exec(url.pathname);
  const repo = resolve ? hubRepos.get(resolve[1]!) : undefined;
  const data = repo?.files[decodeURIComponent(resolve![2]!)];
  if (!repo || !data) return void res.writeHead(404).end('Entry not found');
  const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
  if (start >= data.length && start > 0) return void res.writeHead(416, { 'content-range': `bytes */${data.length}` }).end();
  const body = data.subarray(start);
  res.writeHead(start > 0 ? 206 : 200, { 'content-length': body.length, 'accept-ranges': 'bytes', ...(start > 0 && { 'content-range': `bytes ${start}-${data.length - 1}/${data.length}` }) });
  if (resolve![2] === 'model.safetensors' && repo.cuts > 0) {
    repo.cuts--;
    res.write(body.subarray(0, Math.floor(body.length / 2)), () => res.socket?.destroy());
    return;
  }
  res.end(body);
}

const tinyFiles = (): Record<string, Buffer> =>
  Object.fromEntries(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'].map((f) => [f, readFileSync(path.join(TINY_FOLDER, f))]));

describe('models pull and list', () => {
  const pulledDir = path.join(scratch, 'pulled-models');

  before(async () => {
    hub = http.createServer(handleHub);
    await new Promise<void>((resolve) => hub.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(hub.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((resolve) => hub.close(() => resolve())));

  const pull = (repo: string, retries: number): ReturnType<typeof pullModel> => pullModel({ repo, modelsDir: pulledDir, endpoint, retries, progress: { write: () => true }, log: () => {} });
  const rangesOf = (repo: string): (string | undefined)[] => hubRequests.filter((r) => r.path.endsWith(`${repo}/resolve/abc123/model.safetensors`)).map((r) => r.range);

  test('a connection cut mid-file is resumed with a Range request; the files are the Hub\'s, other weight formats are skipped', async () => {
    hubRepos.set('acme/tiny-pulled', { files: tinyFiles(), cuts: 1 });
    const progressLines: string[] = [];
    const result = await pullModel({ repo: 'acme/tiny-pulled', modelsDir: pulledDir, endpoint, retries: 3, progress: { write: (text: string) => progressLines.push(text) }, log: () => {} });
    assert.equal(result.folder, path.join(pulledDir, 'acme__tiny-pulled'));
    assert.deepEqual(readdirSync(result.folder).sort(), ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    for (const [name, data] of Object.entries(tinyFiles())) assert.ok(readFileSync(path.join(result.folder, name)).equals(data), name);
    const [first, second] = rangesOf('acme/tiny-pulled');
    assert.equal(first, undefined);
    assert.match(second ?? '', /^bytes=[1-9]\d*-$/, 'the second request continues after the bytes already written');
    assert.ok(!hubRequests.some((r) => /\.(bin|pth)$/.test(r.path)), 'no other weight formats are fetched');
    assert.match(progressLines.at(-1) ?? '', /acme\/tiny-pulled \[#{20}\] .*MB\/.*MB/);
    assert.equal((await pull('acme/tiny-pulled', 0)).alreadyPresent, true);
  });

  test('an interrupted pull leaves a .incomplete file that the next pull continues', async () => {
    hubRepos.set('acme/tiny-resume', { files: tinyFiles(), cuts: 1 });
    await assert.rejects(pull('acme/tiny-resume', 0), /run the same command again to resume/);
    const partial = path.join(pulledDir, '.acme__tiny-resume.partial', 'model.safetensors.incomplete');
    const kept = statSync(partial).size;
    assert.ok(kept > 0);
    const result = await pull('acme/tiny-resume', 0);
    assert.ok(readFileSync(path.join(result.folder, 'model.safetensors')).equals(tinyFiles()['model.safetensors']!));
    assert.equal(rangesOf('acme/tiny-resume').at(-1), `bytes=${kept}-`);
    assert.ok(!existsSync(path.dirname(partial)));
  });

  test('an unknown model is a 404 naming it (CLI: exit 1); a bad name or a foreign folder is refused; a file with the wrong sha256 is removed', async () => {
    await assert.rejects(pull('acme/missing', 0), (error: unknown) => error instanceof HubError && /model acme\/missing was not found/.test(error.message));
    const cli = await lathe(['models', 'pull', 'acme/missing', '--endpoint', endpoint, '--models-dir', pulledDir]);
    assert.equal(cli.code, 1);
    assert.match(cli.stderr, /^lathe models pull: model acme\/missing was not found on http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\)/);
    await assert.rejects(pull('../etc', 0), /ORG\/NAME/);
    mkdirSync(path.join(pulledDir, 'acme__squatter'), { recursive: true });
    writeFileSync(path.join(pulledDir, 'acme__squatter', 'notes.txt'), 'mine');
    await assert.rejects(pull('acme/squatter', 0), /acme__squatter exists but has no config\.json/);
    assert.equal(readFileSync(path.join(pulledDir, 'acme__squatter', 'notes.txt'), 'utf8'), 'mine');

    hubRepos.set('acme/corrupt', { files: tinyFiles(), cuts: 0, sha256: { 'model.safetensors': '0'.repeat(64) } });
    await assert.rejects(pull('acme/corrupt', 0), /model\.safetensors of acme\/corrupt has sha256 [0-9a-f]{64}, expected 0{64}/);
    assert.ok(!existsSync(path.join(pulledDir, '.acme__corrupt.partial', 'model.safetensors.incomplete')));
    assert.ok(!existsSync(path.join(pulledDir, 'acme__corrupt')));
  });

  test('models list (CLI) shows the built-in models and the pulled ones', async () => {
    const listed = await lathe(['models', 'list', '--models-dir', pulledDir, '--json']);
    assert.equal(listed.code, 0, listed.stderr);
    const names = (JSON.parse(listed.stdout) as { name: string; architecture: string }[]).map((m) => m.name);
    for (const name of ['lathe/tiny-qwen3', 'lathe/tiny-llama3', 'acme/tiny-pulled', 'acme/tiny-resume']) assert.ok(names.includes(name), `${name} in ${names.join(', ')}`);
    assert.ok(!names.includes('acme/corrupt'));
    const table = modelsTable(await listModels({ dataDir: scratch, modelsDir: pulledDir, log: () => {} }));
    assert.match(table, /^MODEL +ARCHITECTURE +CONTEXT +VOCAB\n/);
    assert.match(table, /acme\/tiny-pulled +qwen3 +2048 +151936/);
  });
});
