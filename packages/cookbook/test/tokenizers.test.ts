import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { pythonExecutable } from '@lathe/server';
import { familyForModel, getTokenizer, loadTokenizer, loadTokenizerFromDir, tokenizerDir, type TokenizerFamily } from '../src/index.js';

const CORPUS = [
  'Hello world',
  '<|im_start|>user\nHi<|im_end|>\n',
  'def f(x):\n\treturn x ** 2  # squares\r\n',
  '日本語のテキストと한국어 и кириллица 👩‍👩‍👧 ﬁ ＡＢＣ',
  '12345678901234567890 3.14159 {"json": [1, 2, 3]}',
  '',
];

// Ground truth: the Rust `tokenizers` library through its Python binding, on the same files.
function pythonIds(family: TokenizerFamily): number[][] {
  const script = [
    'import json, sys',
    'from tokenizers import Tokenizer',
    'tok = Tokenizer.from_file(sys.argv[1])',
    'print(json.dumps([tok.encode(t, add_special_tokens=False).ids for t in json.loads(sys.stdin.read())]))',
  ].join('\n');
  const out = execFileSync(pythonExecutable(), ['-c', script, path.join(tokenizerDir(family), 'tokenizer.json')], { input: JSON.stringify(CORPUS) });
  return JSON.parse(out.toString()) as number[][];
}

for (const family of ['qwen3', 'llama3'] as const) {
  test(`${family} ids and decodes match the Python tokenizers library`, () => {
    const tokenizer = loadTokenizer(family);
    const expected = pythonIds(family);
    CORPUS.forEach((text, i) => {
      const ids = tokenizer.encode(text);
      assert.deepEqual(ids, expected[i], `ids of ${JSON.stringify(text)}`);
      assert.equal(tokenizer.decode(ids), text.normalize('NFC'));
    });
  });
}

test('known ids and model families', () => {
  assert.deepEqual(loadTokenizer('qwen3').encode('Hello world'), [9707, 1879]);
  assert.equal(loadTokenizer('qwen3').tokenId('<|im_end|>'), 151645);
  assert.equal(loadTokenizer('llama3').tokenId('<|eot_id|>'), 128009);
  assert.equal(familyForModel('Qwen/Qwen3-8B'), 'qwen3');
  assert.equal(familyForModel('meta-llama/Llama-3.2-1B'), 'llama3');
  assert.equal(familyForModel('lathe/tiny-llama3'), 'llama3');
  assert.throws(() => familyForModel('gpt2'), /no bundled tokenizer/);
});

test('getTokenizer: model names, a local Hugging Face folder, and clear errors', () => {
  const byName = getTokenizer('Qwen/Qwen3-8B');
  assert.equal(getTokenizer('lathe/tiny-qwen3'), byName, 'one tokenizer per family');
  assert.equal(getTokenizer('Qwen/Qwen3-8B:peft:abc'), byName, 'a :suffix is ignored');
  assert.equal(getTokenizer('lathe/tiny-llama3').family, 'llama3');
  assert.equal(getTokenizer('meta-llama/Llama-3.1-8B-Instruct').bosToken, '<|begin_of_text|>');
  assert.equal(byName.eosToken, '<|im_end|>');

  // Any folder holding tokenizer.json + tokenizer_config.json loads; its family comes from the vocabulary.
  const scratch = mkdtempSync(path.join(tmpdir(), 'lathe-tok-'));
  try {
    for (const file of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(path.join(tokenizerDir('llama3'), file), path.join(scratch, file));
    const fromDir = getTokenizer(scratch);
    assert.equal(fromDir.family, 'llama3');
    assert.deepEqual(fromDir.encode('Hello world'), loadTokenizer('llama3').encode('Hello world'));
    rmSync(path.join(scratch, 'tokenizer_config.json'));
    assert.throws(() => loadTokenizerFromDir(scratch), /has no tokenizer_config\.json/);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  assert.throws(() => getTokenizer('gpt2'), /no bundled tokenizer/);
});

test('byteLength: token byte counts add up to the UTF-8 length of the text; special tokens count 0', () => {
  // CJK and emoji split across tokens: decoding such a token alone would give a 3-byte U+FFFD.
  const text = 'héllo 你好世界 🙂 Hello, world!\n\n';
  for (const family of ['qwen3', 'llama3'] as const) {
    const tokenizer = loadTokenizer(family);
    const ids = tokenizer.encode(text);
    assert.equal(ids.reduce((sum, id) => sum + tokenizer.byteLength(id), 0), Buffer.byteLength(text), family);
  }
  const qwen = loadTokenizer('qwen3');
  assert.equal(qwen.byteLength(qwen.tokenId('<|im_end|>')), 0);
  // <think> is an added token that is not special: it is text the model writes.
  assert.equal(qwen.byteLength(qwen.tokenId('<think>')), '<think>'.length);
  assert.throws(() => qwen.byteLength(10_000_000), /token 10000000 is not in the vocabulary/);
});
