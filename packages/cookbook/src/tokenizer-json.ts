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
  /**
   * UTF-8 bytes of the text one token stands for (cached per id); 0 for special tokens, which are
   * markup rather than text. Exact for byte-level BPE, where a token may hold part of a character.
   *
   * @example
   * tok.byteLength(tok.encode(' world')[0]!); // 6
   * tok.byteLength(tok.tokenId('<|im_end|>')); // 0
   */
  byteLength(token: number): number;
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
  const byteLength = tokenByteLengths(tokenizer, json);
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
    byteLength,
  };
}

const utf8 = new TextEncoder();

/** Byte lengths of tokens, computed on first use of each id. */
function tokenByteLengths(tokenizer: Tokenizer, json: Record<string, unknown>): (token: number) => number {
  const added = tokenizer.get_added_tokens_decoder();
  // A byte-level vocabulary spells each byte as one character; decoding a single token instead would
  // turn a partial UTF-8 character into a 3-byte replacement character.
  const byteLevel = (json.decoder as { type?: unknown } | null | undefined)?.type === 'ByteLevel';
  const cache = new Map<number, number>();
  return (token) => {
    let bytes = cache.get(token);
    if (bytes !== undefined) return bytes;
    const piece = tokenizer.id_to_token(token);
    if (piece === undefined) throw new RangeError(`token ${token} is not in the vocabulary`);
    const addedToken = added.get(token);
    if (addedToken !== undefined) bytes = addedToken.special ? 0 : utf8.encode(addedToken.content).length;
    else bytes = byteLevel ? [...piece].length : utf8.encode(tokenizer.decode([token], { skip_special_tokens: false })).length;
    cache.set(token, bytes);
    return bytes;
  };
}

// tokenizer_config.json writes a special token either as a string or as an AddedToken object.
function specialTokenText(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') return (value as { content: string }).content;
  return undefined;
}

