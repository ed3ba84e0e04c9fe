/**
 * @module `TensorData`: a dense, row-major tensor of `float32` or `int64` values, backed by a typed
 * array, with its shape. This is what loss-function inputs and outputs are made of.
 */
import { lossInputDtype, type Dtype } from '@lathe/protocol';
import { InvalidArgumentError } from './errors.js';

/**
 * The two tensor dtypes of the wire.
 *
 * @example
 * const dtype: TensorDtype = 'float32';
 */
export type TensorDtype = Dtype;

/**
 * The typed array behind a dtype: `Float32Array` for `float32`, `BigInt64Array` for `int64`.
 *
 * @example
 * const ids: TypedArrayFor<'int64'> = BigInt64Array.of(1n, 2n);
 */
export type TypedArrayFor<D extends TensorDtype> = D extends 'int64' ? BigInt64Array : Float32Array;

/**
 * Numbers a tensor can be built from: number lists and numeric typed arrays.
 *
 * @example
 * const values: NumericArray = Float64Array.of(0.5, 1);
 */
export type NumericArray = ArrayLike<number> | Float32Array | Float64Array | Int32Array | Uint32Array | Int16Array | Uint16Array | Int8Array | Uint8Array;

function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function toInt64(values: NumericArray | BigInt64Array | readonly bigint[]): BigInt64Array {
  if (values instanceof BigInt64Array) return values;
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = (values as ArrayLike<number | bigint>)[i]!;
    if (typeof v === 'bigint') out[i] = v;
    else {
      if (!Number.isInteger(v)) throw new InvalidArgumentError(`int64 tensor: element ${i} (${v}) is not an integer`);
      out[i] = BigInt(v);
    }
  }
  return out;
}

function toFloat32(values: NumericArray | BigInt64Array | readonly bigint[]): Float32Array {
  if (values instanceof Float32Array) return values;
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = Number((values as ArrayLike<number | bigint>)[i]);
  return out;
}

/**
 * A tensor: `dtype`, `shape` and flat row-major `data` in a typed array (`Float32Array` for
 * `float32`, `BigInt64Array` for `int64`). Immutable by convention.
 *
 * @example
 * const targets = TensorData.int64([5, 6, 7]);         // shape [3], data BigInt64Array
 * const weights = TensorData.float32([1, 1, 0]);       // shape [3], data Float32Array
 * const soft = TensorData.float32(new Float32Array(6), [3, 2]); // a (3, 2) tensor
 * weights.toArray(); // [1, 1, 0]
 */
export class TensorData<D extends TensorDtype = TensorDtype> {
  /** `'float32'` or `'int64'`. */
  readonly dtype: D;
  /** The dimensions; `[n]` for a vector. */
  readonly shape: readonly number[];
  /** The values, flat and row-major. */
  readonly data: TypedArrayFor<D>;

  /**
   * Wraps `data` (not copied) with its dtype and shape; `shape` defaults to `[data.length]`.
   *
   * @throws {InvalidArgumentError} when the typed array does not match the dtype or the shape does not match the length.
   * @example
   * new TensorData('float32', Float32Array.of(1, 2, 3, 4), [2, 2]);
   */
  constructor(dtype: D, data: TypedArrayFor<D>, shape?: readonly number[]) {
    if (dtype === 'int64' ? !(data instanceof BigInt64Array) : !(data instanceof Float32Array)) {
      throw new InvalidArgumentError(`TensorData: dtype ${dtype} needs a ${dtype === 'int64' ? 'BigInt64Array' : 'Float32Array'}`);
    }
    const dims = shape ? [...shape] : [data.length];
    for (const d of dims) if (!Number.isSafeInteger(d) || d < 0) throw new InvalidArgumentError(`TensorData: invalid dimension ${d} in shape [${dims.join(', ')}]`);
    if (product(dims) !== data.length) throw new InvalidArgumentError(`TensorData: shape [${dims.join(', ')}] needs ${product(dims)} values, got ${data.length}`);
    this.dtype = dtype;
    this.data = data;
    this.shape = Object.freeze(dims);
  }

  /**
   * A `float32` tensor from any numbers (converted unless already a `Float32Array`).
   *
   * @example
   * TensorData.float32([0.5, 1]).data; // Float32Array [0.5, 1]
   */
  static float32(values: NumericArray | BigInt64Array | readonly bigint[], shape?: readonly number[]): TensorData<'float32'> {
    return new TensorData('float32', toFloat32(values), shape);
  }

  /**
   * An `int64` tensor from integers or bigints (converted unless already a `BigInt64Array`).
   *
   * @throws {InvalidArgumentError} on a non-integer value.
   * @example
   * TensorData.int64(Int32Array.of(1, 2)).data; // BigInt64Array [1n, 2n]
   */
  static int64(values: NumericArray | BigInt64Array | readonly bigint[], shape?: readonly number[]): TensorData<'int64'> {
    return new TensorData('int64', toInt64(values), shape);
  }

  /**
   * A tensor of the given dtype.
   *
   * @example
   * TensorData.from([1, 2, 3], 'int64');
   */
  static from<T extends TensorDtype>(values: NumericArray | BigInt64Array | readonly bigint[], dtype: T, shape?: readonly number[]): TensorData<T> {
    return (dtype === 'int64' ? TensorData.int64(values, shape) : TensorData.float32(values, shape)) as TensorData<T>;
  }

  /**
   * The number of elements.
   *
   * @example
   * TensorData.float32([1, 2, 3, 4], [2, 2]).size; // 4
   */
  get size(): number {
    return this.data.length;
  }

  /**
   * The flat values as plain numbers (int64 values beyond 2^53 lose precision).
   *
   * @example
   * TensorData.int64([1, 2]).toArray(); // [1, 2]
   */
  toArray(): number[] {
    return Array.from(this.data as ArrayLike<number | bigint>, Number);
  }

  /**
   * The values as nested arrays following `shape` (Python's `tolist()`).
   *
   * @example
   * TensorData.float32([1, 2, 3, 4], [2, 2]).toNested(); // [[1, 2], [3, 4]]
   */
  toNested(): unknown[] {
    const flat = this.toArray();
    const build = (dim: number, offset: number): unknown[] => {
      const size = this.shape[dim]!;
      const stride = product(this.shape.slice(dim + 1));
      return Array.from({ length: size }, (_, i) => (dim === this.shape.length - 1 ? flat[offset + i] : build(dim + 1, offset + i * stride)));
    };
    return this.shape.length === 0 ? flat : build(0, 0);
  }

  /**
   * The same values with another shape of equal size.
   *
   * @example
   * TensorData.float32([1, 2, 3, 4]).reshape([2, 2]).shape; // [2, 2]
   */
  reshape(shape: readonly number[]): TensorData<D> {
    return new TensorData(this.dtype, this.data, shape);
  }
}

/**
 * A loss-function input as users may give it: a `TensorData`, a typed array or a number list
 * (the last two are 1-D; their dtype is inferred from the key, see {@link toTensorData}).
 *
 * @example
 * const inputs: Record<string, LossFnInput> = { target_tokens: [5, 6], weights: Float32Array.of(1, 1) };
 */
export type LossFnInput = TensorData | Float32Array | Float64Array | Int32Array | Uint32Array | BigInt64Array | readonly number[];

/**
 * Converts a loss-function input to a `TensorData`. A `TensorData` is kept as is. A typed array
 * or number list becomes a 1-D tensor whose dtype comes from its key (`target_tokens` → int64;
 * `weights`, `advantages`, `logprobs`, `clip_*_threshold` → float32), and for other keys from the
 * array (integer typed arrays → int64, anything else float32).
 *
 * @example
 * toTensorData('target_tokens', [1, 2, 3]).dtype; // 'int64'
 * toTensorData('weights', [1, 0, 1]).dtype;       // 'float32'
 */
export function toTensorData(key: string, value: LossFnInput): TensorData {
  if (value instanceof TensorData) return value;
  return TensorData.from(value, plainInputDtype(key, value));
}

/**
 * The dtype a plain (non-`TensorData`) loss input is sent as: by key, else by the array's kind.
 *
 * @example
 * plainInputDtype('mask', Int32Array.of(1)); // 'int64'
 */
export function plainInputDtype(key: string, value: Exclude<LossFnInput, TensorData>): TensorDtype {
  return lossInputDtype(key, value instanceof BigInt64Array || value instanceof Int32Array || value instanceof Uint32Array);
}
