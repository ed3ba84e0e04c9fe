// Datum construction, datasets, LR schedules, getLr and the metrics table: pure client-side logic.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { pythonExecutable } from '@lathe/server';
import { ServiceClient, TensorData } from '@lathe/sdk';
import {
  applyReduction,
  conversationDatasets,
  datumFromExample,
  datumWeights,
  DatumDataset,
  formatMetricsTable,
  getLoraLrOverFullFinetuneLr,
  getLoraParamCount,
  getLr,
  loadTokenizer,
  lrMultiplier,
  meanBitsPerByte,
  meanNll,
  parseConversationsJsonl,
  readConversationsJsonl,
  readJsonl,
  appendJsonl,
  roleColonExample,
  seededShuffle,
  splitHeldOut,
  trainSupervised,
  type Conversation,
} from '../src/index.js';

const close = (actual: number, expected: number, rel = 1e-6): void =>
  assert.ok(Math.abs(actual - expected) <= rel * Math.abs(expected), `${actual} is not within ${rel} (relative) of ${expected}`);

test('datumFromExample shifts tokens and weights, truncates, and reduces', () => {
  const example = { tokens: [10, 11, 12, 13, 14], weights: [0, 0, 1, 1, 2] };
  const none = datumFromExample(example, { reduction: 'none' });
  assert.deepEqual(none.modelInput.toInts(), [10, 11, 12, 13]);
  assert.deepEqual((none.lossFnInputs['target_tokens'] as TensorData).toArray(), [11, 12, 13, 14]);
  assert.equal((none.lossFnInputs['target_tokens'] as TensorData).dtype, 'int64');
  assert.deepEqual((none.lossFnInputs['weights'] as TensorData).toArray(), [0, 1, 1, 2]);

  const mean = datumFromExample(example); // mean is the default
  assert.deepEqual((mean.lossFnInputs['weights'] as TensorData).toArray(), [0, 0.25, 0.25, 0.5]);

  const cut = datumFromExample(example, { maxLength: 3, reduction: 'mean' });
  assert.deepEqual(cut.modelInput.toInts(), [10, 11]);
  assert.deepEqual((cut.lossFnInputs['target_tokens'] as TensorData).toArray(), [11, 12]);
  assert.deepEqual((cut.lossFnInputs['weights'] as TensorData).toArray(), [0, 1]);
});

test('datumFromExample refuses mismatched or too-short examples', () => {
  assert.throws(() => datumFromExample({ tokens: [1, 2, 3], weights: [1, 1] }), /3 tokens, 2 weights/);
  assert.throws(() => datumFromExample({ tokens: [1, 2, 3], weights: [1, 1, 1] }, { maxLength: 1 }), /at least 2 tokens/);
  assert.deepEqual(applyReduction([0, 0], 'mean'), [0, 0]);
});

test('meanNll is the weight-averaged negative logprob', () => {
  const data = [datumFromExample({ tokens: [1, 2, 3], weights: [0, 1, 1] }, { reduction: 'none' }), datumFromExample({ tokens: [4, 5], weights: [0, 2] }, { reduction: 'none' })];
  const logprobs = [TensorData.float32([-1, -3]), TensorData.float32([-0.5])];
  close(meanNll(data, logprobs), (1 + 3 + 2 * 0.5) / 4);
});

test('meanBitsPerByte is the NLL in bits times loss tokens per byte of their text', () => {
  const tokenizer = loadTokenizer('qwen3');
  const answer = ' Paris is the capital of France. ½ €\n\n';
  const example = roleColonExample(tokenizer)([{ role: 'user', content: 'Capital of France?' }, { role: 'assistant', content: answer.slice(1, -2) }]);
  const datum = datumFromExample(example);
  const weights = datumWeights(datum);
  const lossTokens = weights.filter((w) => w > 0).length;
  // Distinct logprobs per position, so a misaligned weight or target would change the result.
  const logprobs = [TensorData.float32(weights.map((_, i) => -0.25 * (i + 1)))];
  const nll = meanNll([datum], logprobs);
  close(meanBitsPerByte([datum], logprobs, (t) => tokenizer.byteLength(t)), (nll / Math.LN2) * (lossTokens / Buffer.byteLength(answer)));

  // A special token adds its loss but no bytes.
  const imEnd = tokenizer.tokenId('<|im_end|>');
  const withEnd = datumFromExample({ tokens: [...example.tokens, imEnd], weights: [...example.weights, 1] });
  const endLogprobs = [TensorData.float32(Array<number>(weights.length + 1).fill(-1))];
  close(meanBitsPerByte([withEnd], endLogprobs, (t) => tokenizer.byteLength(t)), (1 / Math.LN2) * ((lossTokens + 1) / Buffer.byteLength(answer)));
  assert.ok(Number.isNaN(meanBitsPerByte([datumFromExample({ tokens: [1, imEnd], weights: [0, 1] })], [TensorData.float32([-1])], (t) => tokenizer.byteLength(t))));
});

test('conversation JSONL parses, and bad lines are named', () => {
  const text = '{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]}\n\n{"messages":[]}\n';
  assert.deepEqual(parseConversationsJsonl(text), [[{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello' }], []]);
  assert.throws(() => parseConversationsJsonl('{"messages":[]}\nnot json\n', 'chats.jsonl'), /chats\.jsonl line 2: not JSON/);
  assert.throws(() => parseConversationsJsonl('{"msgs":[]}'), /line 1: expected an object with a "messages" array/);
  assert.throws(() => parseConversationsJsonl('{"messages":[{"role":"user"}]}'), /line 1: message 0 needs string "role" and "content"/);

  const dir = mkdtempSync(path.join(os.tmpdir(), 'lathe-cookbook-data-'));
  try {
    writeFileSync(path.join(dir, 'c.jsonl'), text);
    assert.equal(readConversationsJsonl(path.join(dir, 'c.jsonl')).length, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('seeded shuffle, held-out split and batching are deterministic and cover every item', () => {
  const items = Array.from({ length: 20 }, (_, i) => i);
  assert.deepEqual(seededShuffle(items, 3), seededShuffle(items, 3));
  assert.notDeepEqual(seededShuffle(items, 3), seededShuffle(items, 4));
  assert.deepEqual([...seededShuffle(items, 3)].sort((a, b) => a - b), items);

  const { train, test: heldOut } = splitHeldOut(items, 5, 1);
  assert.equal(heldOut.length, 5);
  assert.deepEqual([...train, ...heldOut].sort((a, b) => a - b), items);
  assert.throws(() => splitHeldOut(items, 20, 1), /testSize must be an integer in \[0, 20\)/);

  const datums = items.map((i) => datumFromExample({ tokens: [i, i + 1], weights: [0, 1] }));
  const dataset = new DatumDataset(datums, { batchSize: 6, seed: 7 });
  assert.equal(dataset.length, 3); // drop-last: 20 // 6
  const epochTokens = (): number[] => [0, 1, 2].flatMap((b) => dataset.getBatch(b).map((d) => d.modelInput.toInts()[0]!));
  const epoch0 = epochTokens();
  assert.equal(new Set(epoch0).size, 18);
  dataset.setEpoch(1);
  const epoch1 = epochTokens();
  assert.notDeepEqual(epoch1, epoch0);
  dataset.setEpoch(0);
  assert.deepEqual(epochTokens(), epoch0);
  assert.throws(() => dataset.getBatch(3), /batch 3 is out of range \[0, 3\)/);
  assert.throws(() => new DatumDataset(datums.slice(0, 2), { batchSize: 4 }), /2 examples make no batch of 4/);
});

test('roleColonExample weights only the assistant turns, and conversationDatasets holds out a test set', () => {
  const tokenizer = loadTokenizer('qwen3');
  const toExample = roleColonExample(tokenizer);
  const conversation: Conversation = [
    { role: 'user', content: 'What is 2+2?' },
    { role: 'assistant', content: 'It is 4.' },
  ];
  const { tokens, weights } = toExample(conversation);
  assert.equal(tokenizer.decode(tokens), 'User: What is 2+2?\n\nAssistant: It is 4.\n\n');
  assert.equal(tokenizer.decode(tokens.filter((_, i) => weights[i] === 1)), ' It is 4.\n\n');
  assert.ok(weights.every((w) => w === 0 || w === 1));

  const conversations = Array.from({ length: 10 }, (_, i) => [
    { role: 'user', content: `Echo ${i}` },
    { role: 'assistant', content: `${i}` },
  ]);
  const { train, test: heldOut } = conversationDatasets(conversations, toExample, { batchSize: 4, testSize: 2, maxLength: 10, seed: 0 });
  assert.equal(heldOut.length, 2);
  assert.equal(train.length, 2);
  for (const datum of [...heldOut, ...train.getBatch(0)]) {
    assert.equal(datum.modelInput.length, 9); // 11 tokens cut to 10, then shifted
    const w = (datum.lossFnInputs['weights'] as TensorData).toArray();
    close(w.reduce((a, b) => a + b, 0), 1, 1e-6); // mean reduction
  }
});

test('LR schedules: linear, cosine, constant, with warmup', () => {
  assert.equal(lrMultiplier('linear', 0, 10), 1);
  close(lrMultiplier('linear', 5, 10), 0.5);
  close(lrMultiplier('linear', 9, 10), 0.1);
  assert.equal(lrMultiplier('cosine', 0, 10), 1);
  close(lrMultiplier('cosine', 5, 10), 0.5);
  close(lrMultiplier('cosine', 2, 8), 0.5 * (1 + Math.cos(Math.PI / 4)));
  assert.equal(lrMultiplier('constant', 7, 10), 1);
  // Warmup: (step + 1) / warmup, then the schedule over the remaining steps.
  close(lrMultiplier('linear', 0, 12, 4), 0.25);
  assert.equal(lrMultiplier('linear', 3, 12, 4), 1);
  assert.equal(lrMultiplier('linear', 4, 12, 4), 1);
  close(lrMultiplier('linear', 8, 12, 4), 0.5);
  assert.throws(() => lrMultiplier('linear', 10, 10), /step must be an integer in \[0, 10\)/);
  assert.throws(() => lrMultiplier('linear', 0, 10, 10), /warmupSteps/);
  assert.throws(() => lrMultiplier('warm' as 'linear', 0, 10), /unknown learning-rate schedule "warm"/);
});

test('getLr reproduces the cookbook formula and its documented values', () => {
  // The values quoted in the cookbook notes (§1.13), to their 3 significant digits.
  close(getLr('Qwen/Qwen3-8B'), 4.73e-4, 2e-3);
  close(getLr('Qwen/Qwen3.5-4B'), 4.91e-4, 2e-3);
  close(getLr('meta-llama/Llama-3.1-8B'), 2.86e-4, 2e-3);
  close(getLr('meta-llama/Llama-3.1-70B'), 1.66e-4, 2e-3);
  close(getLr('meta-llama/Llama-3.2-1B'), 4.91e-4, 2e-3);
  // The formula itself, and the LoRA factor.
  close(getLr('my-qwen', { hiddenSize: 2000 }), 5e-4);
  close(getLr('Qwen/Qwen3-8B', { isLora: false }) * getLoraLrOverFullFinetuneLr(), getLr('Qwen/Qwen3-8B'));
  assert.throws(() => getLr('deepseek-ai/DeepSeek-V3.1'), /not calibrated for deepseek/);
  assert.throws(() => getLr('mistralai/Mistral-7B'), /Qwen and Llama models only/);
  assert.throws(() => getLr('Qwen/Qwen9-1B'), /pass options.hiddenSize/);
});

test('getLoraParamCount matches the adapters the worker builds', () => {
  // Ground truth: the worker's own LoraAdapter on the tiny models (shapes only, no weights).
  const script = [
    'import json, sys, torch',
    'from lathe_worker.models.tiny import TINY_MODELS',
    'from lathe_worker.models.transformer import Transformer',
    'from lathe_worker.lora import LoraAdapter, LoraConfig',
    'out = []',
    'for name, rank, attn, mlp, unembed in json.loads(sys.stdin.read()):',
    '    with torch.device("meta"):',
    '        model = Transformer(TINY_MODELS[name])',
    '    adapter = LoraAdapter.create(model, LoraConfig(rank=rank, train_attn=attn, train_mlp=mlp, train_unembed=unembed))',
    '    out.append(sum(p.numel() for p in adapter.parameters()))',
    'print(json.dumps(out))',
  ].join('\n');
  const cases: [string, number, boolean, boolean, boolean][] = [
    ['lathe/tiny-qwen3', 8, true, true, true],
    ['lathe/tiny-qwen3', 32, true, false, false],
    ['lathe/tiny-llama3', 4, false, true, true],
    ['lathe/tiny-llama3', 16, true, true, false],
  ];
  const workerDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../worker');
  const expected = JSON.parse(
    execFileSync(pythonExecutable(), ['-c', script], { input: JSON.stringify(cases), env: { ...process.env, PYTHONPATH: workerDir } }).toString(),
  ) as number[];
  cases.forEach(([model, loraRank, trainAttn, trainMlp, trainUnembed], i) => {
    assert.equal(getLoraParamCount(model, { loraRank, trainAttn, trainMlp, trainUnembed }), expected[i], `${model} rank ${loraRank}`);
  });
  assert.equal(getLoraParamCount('lathe/tiny-qwen3', { loraRank: 8 }), 1_232_384);
  assert.throws(() => getLoraParamCount('Qwen/Qwen3-30B-A3B'), /no dense-model dims/);
});

test('the metrics table lists every metric, aligned', () => {
  const table = formatMetricsTable(3, { train_mean_nll: 1.25, learning_rate: 1e-4, num_tokens: 120 });
  const lines = table.split('\n');
  assert.match(lines[0]!, /step 3/);
  assert.deepEqual(lines.slice(1, -1).map((l) => l.split('│').map((c) => c.trim()).filter(Boolean)), [
    ['learning_rate', '1.000e-4'],
    ['num_tokens', '120'],
    ['train_mean_nll', '1.2500'],
  ]);
  assert.equal(new Set(lines.map((l) => l.length)).size, 1);
});

test('trainSupervised refuses bad settings before it contacts the server or writes logs', async () => {
  // Nothing listens at this address: a setting that got past validation would fail differently.
  const service = new ServiceClient({ baseUrl: 'http://127.0.0.1:9', apiKey: 'tml-unused', maxRetries: 0 });
  const datums = [0, 1, 2, 3].map((i) => datumFromExample({ tokens: [i, i + 1], weights: [0, 1] }));
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lathe-cookbook-config-'));
  const base = { service, logPath: path.join(dir, 'run'), modelName: 'lathe/tiny-qwen3', dataset: new DatumDataset(datums, { batchSize: 2 }) };
  try {
    await assert.rejects(trainSupervised({ ...base, warmupSteps: 2 }), /warmupSteps must be an integer in \[0, 2\)/);
    await assert.rejects(trainSupervised({ ...base, saveEvery: -1 }), /saveEvery must be a non-negative integer, got -1/);
    await assert.rejects(trainSupervised({ ...base, learningRate: 0 }), /learningRate must be positive/);
    await assert.rejects(trainSupervised({ ...base, numEpochs: 0 }), /nothing to train: 0 steps/);
    await assert.rejects(trainSupervised({ ...base, lrSchedule: 'step' as 'linear' }), /unknown learning-rate schedule "step"/);
    assert.equal(existsSync(base.logPath), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('readJsonl skips a cut-off last line, appendJsonl replaces it, and a bad line elsewhere is named', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lathe-cookbook-jsonl-'));
  try {
    const file = path.join(dir, 'checkpoints.jsonl');
    assert.deepEqual(readJsonl(file), []);
    writeFileSync(file, '{"step":1}\n{"step":2}\n{"step":3,"na');
    assert.deepEqual(readJsonl(file), [{ step: 1 }, { step: 2 }]);
    appendJsonl(file, { step: 3 }); // replaces the cut-off line
    assert.deepEqual(readJsonl(file), [{ step: 1 }, { step: 2 }, { step: 3 }]);
    assert.equal(readFileSync(file, 'utf8'), '{"step":1}\n{"step":2}\n{"step":3}\n');
    writeFileSync(file, '{"step":1}\n{"st\n{"step":3}\n');
    assert.throws(() => readJsonl(file), /checkpoints\.jsonl line 2: not JSON/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
