/**
 * @module Tensors on the worker wire: `{dtype, shape, data}` with little-endian bytes.
 */

/** The dtypes the worker understands. */
export type WireDType = 'int64' | 'int32' | 'float32' | 'float64';

/** A tensor as it travels to and from the worker. */
export interface WireTensor {
  dtype: WireDType;
  shape: number[];
  data: Uint8Array;
}

type TypedArray = BigInt64Array | Int32Array | Float32Array | Float64Array;

const ARRAY_FOR: Record<WireDType, { new (buffer: ArrayBufferLike, offset: number, length: number): TypedArray; BYTES_PER_ELEMENT: number }> = {
  int64: BigInt64Array,
  int32: Int32Array,
  float32: Float32Array,
  float64: Float64Array,
};

/** Wraps a typed array as a wire tensor without copying (this platform is little-endian). */
export function toWire(values: TypedArray, shape: number[] = [values.length]): WireTensor {
  const dtype: WireDType =
    values instanceof BigInt64Array ? 'int64' : values instanceof Int32Array ? 'int32' : values instanceof Float32Array ? 'float32' : 'float64';
  return { dtype, shape, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
}

/** Token ids (plain numbers) as an int64 wire tensor. */
export function tokensToWire(tokens: readonly number[]): WireTensor {
  return toWire(BigInt64Array.from(tokens, (t) => BigInt(t)));
}

/** Floats as a float32 wire tensor. */
export function floatsToWire(values: readonly number[], shape?: number[]): WireTensor {
  return toWire(Float32Array.from(values), shape ?? [values.length]);
}

/** Reads a wire tensor back into a typed array (copying, so the result is aligned). */
export function fromWire(tensor: WireTensor): TypedArray {
  const Ctor = ARRAY_FOR[tensor.dtype];
  if (Ctor === undefined) throw new Error(`unsupported wire dtype ${String(tensor.dtype)}`);
  // `new Uint8Array(view)` copies; Buffer#slice would not (it shares the pooled ArrayBuffer).
  const copy = new Uint8Array(tensor.data);
  return new Ctor(copy.buffer, 0, copy.byteLength / Ctor.BYTES_PER_ELEMENT);
}

/** Reads a wire tensor as plain numbers (int64 values must fit in a double). */
export function wireToNumbers(tensor: WireTensor): number[] {
  const values = fromWire(tensor);
  return Array.from(values as ArrayLike<number | bigint>, (v) => Number(v));
}
