// `lathe models list` without a server: the models.json aliases are listed as the server would serve them.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { listModels } from '../src/commands/models.js';

// Enough of a Qwen3 config.json for the worker to describe the folder (no weights are read).
const HOUSE_CONFIG = {
  architectures: ['Qwen3ForCausalLM'],
  model_type: 'qwen3',
  head_dim: 16,
  hidden_size: 64,
  intermediate_size: 128,
  max_position_embeddings: 512,
  num_attention_heads: 4,
  num_hidden_layers: 2,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1_000_000,
  tie_word_embeddings: true,
  vocab_size: 151_936,
};

let dataDir: string;

before(() => {
  dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-cli-models-'));
});

after(() => rmSync(dataDir, { recursive: true, force: true }));

test('models list without --base-url includes the aliases of <data-dir>/models.json', async () => {
  mkdirSync(path.join(dataDir, 'house'));
  writeFileSync(path.join(dataDir, 'house', 'config.json'), JSON.stringify(HOUSE_CONFIG));
  const aliases = { 'acme/house-model': './house', 'acme/tiny': 'lathe/tiny-qwen3', 'acme/missing': './nowhere' };
  writeFileSync(path.join(dataDir, 'models.json'), JSON.stringify({ aliases }));

  const models = await listModels({ dataDir, log: () => {} });
  const byName = new Map(models.map((m) => [m.name, m]));
  assert.deepEqual(byName.get('acme/house-model'), { name: 'acme/house-model', maxContextLength: 512, architecture: 'qwen3', vocabSize: 151_936 });
  // An alias of another model has that model's description, under its own name.
  assert.deepEqual(byName.get('acme/tiny'), { ...byName.get('lathe/tiny-qwen3'), name: 'acme/tiny' });
  assert.ok(byName.has('lathe/tiny-llama3'));
  // An alias whose target is no model is not listed, and a folder behind an alias only under it.
  assert.ok(!byName.has('acme/missing'));
  assert.ok(!models.some((m) => m.name.includes(dataDir)), models.map((m) => m.name).join(', '));
});

test('models list names models.json when it is not valid', async () => {
  const badDir = path.join(dataDir, 'bad');
  mkdirSync(badDir);
  writeFileSync(path.join(badDir, 'models.json'), JSON.stringify({ aliases: { 'acme/x': 7 } }));
  await assert.rejects(listModels({ dataDir: badDir, log: () => {} }), (error: Error) => {
    assert.match(error.message, /models\.json: "aliases" must map model names to folder paths or model names/);
    assert.ok(error.message.includes(path.join(badDir, 'models.json')));
    return true;
  });
});
