/**
 * @module SDK data types: model input: token chunks, images and ModelInput.
 */
import { InvalidArgumentError } from '../errors.js';

/**
 * A run of token ids.
 *
 * @example
 * const chunk: EncodedTextChunk = { type: 'encoded_text', tokens: [9707, 1879] };
 */
export interface EncodedTextChunk {
  readonly type: 'encoded_text';
  readonly tokens: readonly number[];
}

/**
 * An image, for servers that serve vision models (Lathe does not). `expectedTokens` is how many
 * positions it takes.
 *
 * @example
 * const chunk: ImageChunk = { type: 'image', data: pngBytes, format: 'png', expectedTokens: 256 };
 */
export interface ImageChunk {
  readonly type: 'image';
  readonly data: Uint8Array;
  readonly format: 'png' | 'jpeg';
  readonly expectedTokens?: number;
}

/**
 * One piece of a {@link ModelInput}.
 *
 * @example
 * const chunks: ModelInputChunk[] = [{ type: 'encoded_text', tokens: [1, 2] }];
 */
export type ModelInputChunk = EncodedTextChunk | ImageChunk;

/**
 * The input of a model: a sequence of chunks (usually one run of token ids). Immutable:
 * `append` returns a new `ModelInput`.
 *
 * @example
 * const prompt = ModelInput.fromInts([9707, 1879, 11]);
 * prompt.length;                  // 3
 * prompt.appendInt(30).toInts();  // [9707, 1879, 11, 30]
 */
export class ModelInput {
  /** The chunks, in order. */
  readonly chunks: readonly ModelInputChunk[];

  /**
   * @example
   * new ModelInput([{ type: 'encoded_text', tokens: [1, 2] }]);
   */
  constructor(chunks: readonly ModelInputChunk[]) {
    this.chunks = Object.freeze([...chunks]);
  }

  /**
   * One text chunk holding `tokens`.
   *
   * @throws {InvalidArgumentError} on a token that is not a non-negative integer.
   * @example
   * ModelInput.fromInts([1, 2, 3]);
   */
  static fromInts(tokens: ArrayLike<number>): ModelInput {
    const list = Array.from(tokens);
    list.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0) throw new InvalidArgumentError(`ModelInput.fromInts: token ${i} (${t}) is not a non-negative integer`);
    });
    return new ModelInput([{ type: 'encoded_text', tokens: list }]);
  }

  /**
   * An input with no chunks.
   *
   * @example
   * ModelInput.empty().length; // 0
   */
  static empty(): ModelInput {
    return new ModelInput([]);
  }

  /**
   * All token ids, in order.
   *
   * @throws {InvalidArgumentError} if the input holds a non-text chunk.
   * @example
   * ModelInput.fromInts([1, 2]).append({ type: 'encoded_text', tokens: [3] }).toInts(); // [1, 2, 3]
   */
  toInts(): number[] {
    const out: number[] = [];
    for (const chunk of this.chunks) {
      if (chunk.type !== 'encoded_text') throw new InvalidArgumentError(`toInts only supports text chunks, got a ${chunk.type} chunk`);
      out.push(...chunk.tokens);
    }
    return out;
  }

  /**
   * The number of positions (tokens, plus each image's `expectedTokens`).
   *
   * @example
   * ModelInput.fromInts([1, 2, 3]).length; // 3
   */
  get length(): number {
    let n = 0;
    for (const chunk of this.chunks) {
      if (chunk.type === 'encoded_text') n += chunk.tokens.length;
      else if (chunk.expectedTokens !== undefined) n += chunk.expectedTokens;
      else throw new InvalidArgumentError('the length of an image chunk without expectedTokens is unknown');
    }
    return n;
  }

  /**
   * A new input with `chunk` added at the end.
   *
   * @example
   * ModelInput.empty().append({ type: 'encoded_text', tokens: [1] });
   */
  append(chunk: ModelInputChunk): ModelInput {
    return new ModelInput([...this.chunks, chunk]);
  }

  /**
   * A new input with one more token.
   *
   * @example
   * ModelInput.fromInts([1]).appendInt(2).toInts(); // [1, 2]
   */
  appendInt(token: number): ModelInput {
    return this.append({ type: 'encoded_text', tokens: [token] });
  }
}
