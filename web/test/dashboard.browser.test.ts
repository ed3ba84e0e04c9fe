// The dashboard in a real browser (Debian's Chromium through playwright-core) against a real server
// and worker on the tiny model. The test trains a run through the SDK, then in the browser: signs in,
// sees the run with a loss curve that has points, downloads a checkpoint archive (a real download,
// checked to be a tar of the PEFT adapter), and samples in the playground. Screenshots go to
// test-artifacts/dashboard/ (git-ignored).
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { list } from 'tar';
import { createServer, type LatheServer } from '@lathe/server';
import { LatheExtensions, ModelInput, ServiceClient } from '@lathe/sdk';
import { buildDashboard } from '../build.mjs';

const CHROMIUM = '/usr/bin/chromium';
const MODEL = 'lathe/tiny-qwen3';
// Shared with the other packages' tests: the tiny model is materialized there once.
const MODELS_DIR = path.join(os.tmpdir(), 'lathe-sdk-test-models');
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ARTIFACTS = path.join(REPO, 'test-artifacts', 'dashboard');
const STEPS = 3;

let root: string;
let server: LatheServer;
let baseUrl: string;
let apiKey: string;
let service: ServiceClient;
let modelId: string;
let samplerPath: string;
let statePath: string;
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];

before(async () => {
  // Not a skip: without the browser this suite would pass having checked nothing.
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) to run the dashboard's browser tests`);
  mkdirSync(ARTIFACTS, { recursive: true });
  await buildDashboard();
  root = mkdtempSync(path.join(os.tmpdir(), 'lathe-dashboard-browser-'));
  server = await createServer({ dataDir: path.join(root, 'server'), modelsDir: MODELS_DIR });
  baseUrl = await server.app.listen({ host: '127.0.0.1', port: 0 });
  apiKey = (await server.services.store.keys.create('dashboard')).key;

  // A short run: a few steps, the cookbook-style metrics rows, and sampler weights.
  service = new ServiceClient({ baseUrl, apiKey });
  const training = await service.createLoraTrainingClient({ baseModel: MODEL, rank: 4, seed: 0 });
  modelId = training.modelId;
  const tokens = [9707, 1879, 11, 1246, 525, 498];
  const datum = { modelInput: ModelInput.fromInts(tokens.slice(0, -1)), lossFnInputs: { target_tokens: tokens.slice(1), weights: tokens.slice(1).map(() => 1) } };
  const lathe = new LatheExtensions({ baseUrl, apiKey });
  for (let step = 0; step < STEPS; step++) {
    const fb = training.forwardBackward([datum], 'cross_entropy');
    await training.optimStep({ learningRate: 0.02 });
    await lathe.reportMetrics(modelId, [{ step, metrics: { 'env/reward': step / STEPS } }]);
    await fb;
  }
  samplerPath = (await training.saveWeightsForSampler('final')).path;
  statePath = (await training.saveState('kept')).path;

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(error.message));
});

after(async () => {
  await browser?.close();
  await service?.close();
  await server?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

test('sign in and see the trained run in the list', async () => {
  await page.goto(baseUrl);
  await page.fill('input[name="api-key"]', 'tml-not-a-key');
  await page.click('form.sign-in button[type="submit"]');
  await page.waitForSelector('form.sign-in .error');
  assert.match(await page.textContent('form.sign-in .error') ?? '', /Sign-in failed/);

  await page.fill('input[name="api-key"]', apiKey);
  await page.click('form.sign-in button[type="submit"]');
  const row = page.locator(`tr[data-run="${modelId}"]`);
  await row.waitFor();
  const cells = await row.locator('td').allTextContents();
  assert.deepEqual(cells.slice(1, 4), [MODEL, '4', String(STEPS)]);
  await page.screenshot({ path: path.join(ARTIFACTS, 'runs.png'), fullPage: true });
});

test("the run's page draws the server's loss curve and the reported reward curve", async () => {
  await page.click(`tr[data-run="${modelId}"] a`);
  // Polling fills the charts; each carries the number of points drawn.
  const points = async (title: string): Promise<number> => {
    const handle = await page.waitForFunction((t) => Number(document.querySelector(`[data-chart="${t}"]`)?.getAttribute('data-points') ?? 0) || undefined, title);
    return Number(await handle.jsonValue());
  };
  assert.equal(await points('loss (server)'), STEPS);
  assert.equal(await points('learning rate (server)'), STEPS);
  assert.equal(await points('env/reward'), STEPS);
  // uPlot drew them: one canvas per chart.
  assert.ok((await page.locator('.chart canvas').count()) >= 3);
  await page.screenshot({ path: path.join(ARTIFACTS, 'run.png'), fullPage: true });
});

test('download a checkpoint as a PEFT adapter archive', async () => {
  await page.click('nav a[href="#/checkpoints"]');
  const row = page.locator(`tr[data-checkpoint="${samplerPath}"]`);
  await row.waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, 'checkpoints.png'), fullPage: true });
  const [download] = await Promise.all([page.waitForEvent('download'), row.locator('button.download').click()]);
  const file = path.join(ARTIFACTS, download.suggestedFilename());
  await download.saveAs(file);
  assert.ok(statSync(file).size > 0);
  const names: string[] = [];
  await list({ file, onReadEntry: (entry) => void names.push(entry.path) });
  assert.deepEqual(names.sort(), ['adapter_config.json', 'adapter_model.safetensors']);
});

test('sample in the playground: the rendered prompt and a reply appear', async () => {
  await page.click('nav a[href="#/playground"]');
  await page.waitForSelector(`select[name="target"] option[value="path:${samplerPath}"]`, { state: 'attached' });
  await page.selectOption('select[name="target"]', `path:${samplerPath}`);
  await page.fill('textarea[name="message"]', 'What is the capital of Peru?');
  await page.fill('input[name="max-tokens"]', '12');
  await page.click('form.playground button[type="submit"]');
  const replyTokens = await page.waitForFunction(() => Number(document.querySelector('pre.reply')?.getAttribute('data-tokens') ?? 0) || undefined, undefined, { timeout: 120_000 });
  assert.ok(Number(await replyTokens.jsonValue()) > 0);
  const prompt = (await page.textContent('pre.prompt')) ?? '';
  // The qwen3 renderer's chat template, tokenized and decoded in the browser.
  assert.match(prompt, /<\|im_start\|>user\nWhat is the capital of Peru\?<\|im_end\|>\n<\|im_start\|>assistant\n/);
  await page.screenshot({ path: path.join(ARTIFACTS, 'playground.png'), fullPage: true });
});

test('publish a checkpoint, set its TTL, delete it', async () => {
  await page.click('nav a[href="#/checkpoints"]');
  const row = () => page.locator(`tr[data-checkpoint="${statePath}"]`);
  const cell = async (index: number): Promise<string> => (await row().locator('td').nth(index).textContent()) ?? '';
  await row().waitFor();
  assert.equal(await cell(5), 'no');
  await row().getByRole('button', { name: 'Publish' }).click();
  await page.waitForFunction((p) => document.querySelector(`tr[data-checkpoint="${p}"] td:nth-child(6)`)?.textContent === 'yes', statePath);
  assert.equal(await cell(4), 'never');
  await row().locator('input.ttl').fill('3600');
  await row().getByRole('button', { name: 'Set TTL' }).click();
  await page.waitForFunction((p) => document.querySelector(`tr[data-checkpoint="${p}"] td:nth-child(5)`)?.textContent !== 'never', statePath);
  const expires = Date.parse((await new ServiceClient({ baseUrl, apiKey }).createRestClient().listUserCheckpoints()).checkpoints.find((c) => c.tinkerPath === statePath)!.expiresAt!);
  assert.ok(Math.abs(expires - (Date.now() + 3600_000)) < 120_000, `expires ${new Date(expires).toISOString()}`);
  page.once('dialog', (dialog) => void dialog.accept());
  await row().getByRole('button', { name: 'Delete' }).click();
  await row().waitFor({ state: 'detached' });
  const left = (await new ServiceClient({ baseUrl, apiKey }).createRestClient().listUserCheckpoints()).checkpoints.map((c) => c.tinkerPath);
  assert.ok(!left.includes(statePath) && left.includes(samplerPath), JSON.stringify(left));
});

test('the service view shows the worker, the model and its adapters', async () => {
  await page.click('nav a[href="#/service"]');
  const row = page.locator(`tr[data-model="${MODEL}"]`);
  await row.waitFor();
  assert.match((await row.textContent()) ?? '', new RegExp(modelId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  assert.match((await page.textContent('.throughput')) ?? '', /tokens\/s/);
  await page.screenshot({ path: path.join(ARTIFACTS, 'service.png'), fullPage: true });
  assert.deepEqual(pageErrors, []);
});
