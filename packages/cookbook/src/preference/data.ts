/**
 * @module Preference pairs for DPO (the cookbook's `dpo_datasets.py`): a chosen and a rejected
 * conversation sharing a prompt become two datums with `none` reduction (0/1 masks over the
 * completions), chosen at even and rejected at odd positions of every batch.
 */
import type { Datum } from '@lathe/sdk';
import { readFileSync } from 'node:fs';
import { DatumDataset, parseJsonlRows, parseMessages, splitHeldOut, type Conversation, type ConversationToExample, type SupervisedDataset } from '../supervised/data.js';
import { datumFromExample } from '../supervised/datum.js';

/** One labelled comparison: the same prompt with a preferred and a dispreferred completion. */
export interface PreferencePair {
  chosen: Conversation;
  rejected: Conversation;
}

/** Options of {@link preferenceDatasets}. */
export interface PreferenceDatasetsOptions {
  /** Pairs per batch (a batch holds twice as many datums). */
  batchSize: number;
  /** Pairs held out for evaluation (default 0). */
  testSize?: number;
  /** Seed of the split and the per-epoch shuffles (default 0). */
  seed?: number;
  /** Keep at most this many tokens of each conversation. */
  maxLength?: number;
}

/**
 * Batches of pairs, laid out [chosen₀, rejected₀, chosen₁, rejected₁, …]; `length` counts batches.
 * Two {@link DatumDataset}s with the same seed and size shuffle in the same order (the permutation
 * depends on the count only), which keeps every chosen datum next to its rejected one.
 */
export class PreferenceDataset implements SupervisedDataset {
  readonly #chosen: DatumDataset;
  readonly #rejected: DatumDataset;

  constructor(pairs: readonly [Datum, Datum][], options: { batchSize: number; seed?: number; shuffle?: boolean }) {
    this.#chosen = new DatumDataset(pairs.map(([c]) => c), options);
    this.#rejected = new DatumDataset(pairs.map(([, r]) => r), options);
  }

  get length(): number {
    return this.#chosen.length;
  }

  getBatch(index: number): Datum[] {
    const rejected = this.#rejected.getBatch(index);
    return this.#chosen.getBatch(index).flatMap((chosen, i) => [chosen, rejected[i]!]);
  }

  setEpoch(epoch: number): void {
    this.#chosen.setEpoch(epoch);
    this.#rejected.setEpoch(epoch);
  }
}

/**
 * Renders preference pairs into a training {@link PreferenceDataset} and held-out pair datums
 * (same layout). `toExample` is any renderer's conversation → tokens-and-weights function.
 *
 * @example
 * const { train, test } = preferenceDatasets(answerFormatPairs(), roleColonExample(loadTokenizer('qwen3')), { batchSize: 4, testSize: 4 });
 */
export function preferenceDatasets(
  pairs: readonly PreferencePair[],
  toExample: ConversationToExample,
  options: PreferenceDatasetsOptions,
): { train: PreferenceDataset; test: Datum[] } {
  const seed = options.seed ?? 0;
  const { train, test } = splitHeldOut(pairs, options.testSize ?? 0, seed);
  const datumOptions = { reduction: 'none' as const, ...(options.maxLength !== undefined && { maxLength: options.maxLength }) };
  const toDatums = (pair: PreferencePair): [Datum, Datum] => [datumFromExample(toExample(pair.chosen), datumOptions), datumFromExample(toExample(pair.rejected), datumOptions)];
  return { train: new PreferenceDataset(train.map(toDatums), { batchSize: options.batchSize, seed }), test: test.flatMap(toDatums) };
}

/**
 * Parses preference-pair JSONL: one `{"chosen": [messages], "rejected": [messages]}` object per
 * non-blank line, each a whole conversation (`{"role", "content"}` messages) that usually shares
 * its prompt with the other and differs in the last assistant message. Errors name the line.
 *
 * @example
 * parsePreferencePairsJsonl('{"chosen":[{"role":"user","content":"1+1?"},{"role":"assistant","content":"2"}],"rejected":[{"role":"user","content":"1+1?"},{"role":"assistant","content":"3"}]}\n');
 */
export function parsePreferencePairsJsonl(text: string, source = 'input'): PreferencePair[] {
  return parseJsonlRows(text, source, (row, where) => {
    const { chosen, rejected } = (row ?? {}) as Partial<Record<string, unknown>>;
    if (!Array.isArray(chosen) || !Array.isArray(rejected)) throw new TypeError(`${where}: expected an object with "chosen" and "rejected" message arrays`);
    return { chosen: parseMessages(chosen, `${where} "chosen"`), rejected: parseMessages(rejected, `${where} "rejected"`) };
  });
}

/** Reads a preference-pair JSONL file (see {@link parsePreferencePairsJsonl}). */
export function readPreferencePairsJsonl(file: string): PreferencePair[] {
  return parsePreferencePairsJsonl(readFileSync(file, 'utf8'), file);
}

/**
 * Built-in pairs that need no download: arithmetic questions where the chosen answer is a full
 * sentence ("The answer is 7.") and the rejected one the bare number ("7"). A preference for the
 * form, learnable from a handful of pairs and measurable on held-out questions.
 *
 * @example
 * answerFormatPairs(2)[0]; // { chosen: [user "What is 1 plus 2?", assistant "The answer is 3."], rejected: [… assistant "3"] }
 */
export function answerFormatPairs(count = 24): PreferencePair[] {
  return Array.from({ length: count }, (_, i) => {
    const a = 1 + (i % 7);
    const b = 2 + ((i * 5) % 11);
    const prompt = { role: 'user', content: `What is ${a} plus ${b}?` };
    return {
      chosen: [prompt, { role: 'assistant', content: `The answer is ${a + b}.` }],
      rejected: [prompt, { role: 'assistant', content: `${a + b}` }],
    };
  });
}
