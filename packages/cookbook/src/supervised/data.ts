/**
 * @module Supervised datasets: conversation files (JSONL with a `messages` field), seeded shuffling,
 * batching and a held-out split. Turning a conversation into tokens is injected
 * ({@link ConversationToExample}), so any renderer plugs in.
 */
import { readFileSync } from 'node:fs';
import type { Datum } from '@lathe/sdk';
import type { TextTokenizer } from '../tokenizers.js';
import { datumFromExample, type DatumOptions, type SupervisedExample } from './datum.js';

/** One chat message. */
export interface ChatMessage {
  role: string;
  content: string;
}

/** A conversation: the `messages` of one JSONL line. */
export type Conversation = readonly ChatMessage[];

/** Renders a conversation into tokens with loss weights (a renderer's `buildSupervisedExample`). */
export type ConversationToExample = (conversation: Conversation) => SupervisedExample;

/**
 * Parses conversation JSONL: one `{"messages": [{"role", "content"}, …]}` object per non-blank line.
 * Errors name the line.
 *
 * @example
 * parseConversationsJsonl('{"messages":[{"role":"user","content":"Hi"}]}\n'); // [[{ role: 'user', content: 'Hi' }]]
 */
export function parseConversationsJsonl(text: string, source = 'input'): Conversation[] {
  return parseJsonlRows(text, source, (row, where) => {
    const messages = (row as { messages?: unknown } | null)?.messages;
    if (!Array.isArray(messages)) throw new TypeError(`${where}: expected an object with a "messages" array`);
    return parseMessages(messages, where);
  });
}

/**
 * Parses each non-blank line of JSONL text and hands it to `parseRow` with its place
 * (`source line N`), for error messages that name the line.
 *
 * @example
 * parseJsonlRows('{"a":1}\n', 'x.jsonl', (row) => row); // [{ a: 1 }]
 */
export function parseJsonlRows<T>(text: string, source: string, parseRow: (row: unknown, where: string) => T): T[] {
  const rows: T[] = [];
  text.split('\n').forEach((line, index) => {
    if (line.trim() === '') return;
    const where = `${source} line ${index + 1}`;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch (error) {
      throw new SyntaxError(`${where}: not JSON (${(error as Error).message})`);
    }
    rows.push(parseRow(row, where));
  });
  return rows;
}

/**
 * A JSON array of `{"role", "content"}` objects as a conversation; `where` prefixes errors.
 *
 * @example
 * parseMessages([{ role: 'user', content: 'Hi' }], 'line 1'); // [{ role: 'user', content: 'Hi' }]
 */
export function parseMessages(messages: readonly unknown[], where: string): Conversation {
  return messages.map((m: unknown, i) => {
    const { role, content } = (m ?? {}) as Partial<Record<string, unknown>>;
    if (typeof role !== 'string' || typeof content !== 'string') {
      throw new TypeError(`${where}: message ${i} needs string "role" and "content"`);
    }
    return { role, content };
  });
}

/** Reads a conversation JSONL file (see {@link parseConversationsJsonl}). */
export function readConversationsJsonl(file: string): Conversation[] {
  return parseConversationsJsonl(readFileSync(file, 'utf8'), file);
}

/** A deterministic 32-bit PRNG (mulberry32): uniform floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A shuffled copy (Fisher–Yates); the same seed gives the same order.
 *
 * @example
 * seededShuffle([1, 2, 3, 4], 0); // the same permutation on every call
 */
export function seededShuffle<T>(items: readonly T[], seed: number): T[] {
  const random = seededRandom(seed);
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/**
 * Splits off a held-out set of `testSize` items after a seeded shuffle.
 *
 * @example
 * const { train, test } = splitHeldOut(conversations, 2, 0);
 */
export function splitHeldOut<T>(items: readonly T[], testSize: number, seed: number): { train: T[]; test: T[] } {
  if (!Number.isInteger(testSize) || testSize < 0 || testSize >= items.length) {
    throw new RangeError(`testSize must be an integer in [0, ${items.length}), got ${testSize}`);
  }
  const shuffled = seededShuffle(items, seed);
  return { test: shuffled.slice(0, testSize), train: shuffled.slice(testSize) };
}

/**
 * Batches of datums. `length` is the number of batches per epoch; `setEpoch` reshuffles
 * deterministically, so a resumed run sees the same batches as an uninterrupted one.
 */
export interface SupervisedDataset {
  readonly length: number;
  getBatch(index: number): Datum[];
  setEpoch(epoch: number): void;
}

/** Options of {@link DatumDataset}. */
export interface DatumDatasetOptions {
  batchSize: number;
  /** Seed of the per-epoch shuffle; the order of epoch e uses `seed + e`. Default 0. */
  seed?: number;
  /** Keep the given order (no shuffle), e.g. for evaluation sets. */
  shuffle?: boolean;
}

/**
 * A {@link SupervisedDataset} over prepared datums: batch i = rows [i·B, (i+1)·B) of the epoch's
 * order, dropping the last partial batch (as the cookbook does).
 *
 * @example
 * const dataset = new DatumDataset(datums, { batchSize: 4, seed: 0 });
 * dataset.getBatch(0); // 4 datums
 */
export class DatumDataset implements SupervisedDataset {
  readonly #datums: readonly Datum[];
  readonly #batchSize: number;
  readonly #seed: number;
  readonly #shuffle: boolean;
  #order: readonly Datum[];

  constructor(datums: readonly Datum[], options: DatumDatasetOptions) {
    if (!Number.isInteger(options.batchSize) || options.batchSize < 1) {
      throw new RangeError(`batchSize must be a positive integer, got ${options.batchSize}`);
    }
    if (datums.length < options.batchSize) {
      throw new RangeError(`${datums.length} examples make no batch of ${options.batchSize}`);
    }
    this.#datums = datums;
    this.#batchSize = options.batchSize;
    this.#seed = options.seed ?? 0;
    this.#shuffle = options.shuffle ?? true;
    this.#order = datums;
    this.setEpoch(0);
  }

  get length(): number {
    return Math.floor(this.#datums.length / this.#batchSize);
  }

  getBatch(index: number): Datum[] {
    if (!Number.isInteger(index) || index < 0 || index >= this.length) {
      throw new RangeError(`batch ${index} is out of range [0, ${this.length})`);
    }
    return this.#order.slice(index * this.#batchSize, (index + 1) * this.#batchSize);
  }

  setEpoch(epoch: number): void {
    this.#order = this.#shuffle ? seededShuffle(this.#datums, this.#seed + epoch) : this.#datums;
  }
}

/** Options of {@link conversationDatasets}. */
export interface ConversationDatasetsOptions extends DatumOptions {
  batchSize: number;
  /** Conversations held out for evaluation (default 0: no test set). */
  testSize?: number;
  /** Seed of the split and the shuffles (default 0). */
  seed?: number;
}

/**
 * Renders conversations into a training dataset and an optional held-out set (the cookbook's
 * `FromConversationFileBuilder`).
 *
 * @example
 * const { train, test } = conversationDatasets(readConversationsJsonl('chats.jsonl'), roleColonExample(tok), { batchSize: 8, testSize: 16, maxLength: 1024 });
 */
export function conversationDatasets(
  conversations: readonly Conversation[],
  toExample: ConversationToExample,
  options: ConversationDatasetsOptions,
): { train: DatumDataset; test: Datum[] } {
  const seed = options.seed ?? 0;
  const { train, test } = splitHeldOut(conversations, options.testSize ?? 0, seed);
  const datumOptions: DatumOptions = { ...(options.maxLength !== undefined && { maxLength: options.maxLength }), ...(options.reduction !== undefined && { reduction: options.reduction }) };
  const toDatum = (c: Conversation): Datum => datumFromExample(toExample(c), datumOptions);
  return { train: new DatumDataset(train.map(toDatum), { batchSize: options.batchSize, seed }), test: test.map(toDatum) };
}

/**
 * A minimal built-in renderer for tests and demos: each message becomes `Role: content\n\n`
 * (role capitalised); only assistant messages carry weight 1 (their text and the separator that
 * ends them, so the model learns to stop). Not a chat template: use a real renderer for models.
 *
 * @example
 * const toExample = roleColonExample(loadTokenizer('qwen3'));
 * toExample([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello' }]);
 */
export function roleColonExample(tokenizer: TextTokenizer): ConversationToExample {
  return (conversation) => {
    const tokens: number[] = [];
    const weights: number[] = [];
    for (const message of conversation) {
      const header = tokenizer.encode(`${message.role.charAt(0).toUpperCase()}${message.role.slice(1)}:`);
      const body = tokenizer.encode(` ${message.content}\n\n`);
      const weight = message.role === 'assistant' ? 1 : 0;
      tokens.push(...header, ...body);
      weights.push(...header.map(() => 0), ...body.map(() => weight));
    }
    return { tokens, weights };
  };
}
