/**
 * @module Tokenizers from their Hugging Face JSON (`tokenizer.json` + `tokenizer_config.json`), and
 * model families. No Node modules: the dashboard builds its tokenizer with this in the browser.
 */
import { Tokenizer } from '@huggingface/tokenizers';

/** Model families with a bundled tokenizer. */
export type TokenizerFamily = 'qwen3' | 'llama3';

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

/** The tokenizer family for a model name (`Qwen/Qwen3-8B` → qwen3, `meta-llama/Llama-3.1-8B` → llama3). */
export function familyForModel(model: string): TokenizerFamily {
  const lower = model.toLowerCase();
  if (lower.includes('qwen3')) return 'qwen3';
  if (lower.includes('llama-3') || lower.includes('llama3')) return 'llama3';
  throw new Error(`no bundled tokenizer for model ${JSON.stringify(model)}; expected a Qwen3 or Llama 3 model`);
}

/**
 * A tokenizer from the parsed contents of `tokenizer.json` and `tokenizer_config.json`; `where`
 * names their origin in errors.
 *
 * @example
 * const [json, config] = await Promise.all([fetch('/tokenizer.json'), fetch('/tokenizer_config.json')].map(async (r) => (await r).json()));
 * tokenizerFromJson(json, config, 'qwen3').encode('Hello world'); // [9707, 1879]
 */
export function tokenizerFromJson(json: Record<string, unknown>, config: Record<string, unknown>, where: string): TextTokenizer {
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
      if (id === undefined) throw new Error(`tokenizer in ${where} has no token ${JSON.stringify(token)}`);
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

