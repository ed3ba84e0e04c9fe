/**
 * @module Tensors as they travel: the logical tensor type, the wire dtype table, the key → dtype
 * table for plain number lists, and the checks shared by the protobuf and JSON paths (shapes,
 * sparse CSR structure, densifying).
 */
import { ProtoDecodeError, readBfloat16Bits, readFloat32s, readInt32s, readInt64s } from './wire.js';

/** The dtypes a logical tensor has (the wire's INT32 and BFLOAT16 widen to these). */
export type Dtype = 'int64' | 'float32';

/** A tensor in its logical form (Tinker's `TensorData`): dense, row-major. */
export interface TensorData {
  dtype: Dtype;
  shape: number[];
  data: Float32Array | BigInt64Array;
}

/** A tensor to encode (a {@link TensorData} whose shape may be read-only). */
export interface TensorIn {
  dtype: Dtype;
  shape: readonly number[];
  data: Float32Array | BigInt64Array;
}

/** The CSR structure of a 2-D tensor: `crow` (rows + 1 offsets into `col`) and one column per stored value. */
export interface CsrIndex {
  crow: number[];
  col: number[];
}

/**
 * A 2-D tensor in the layout it travels in: dense (`csr` absent), or sparse CSR, where `data`
 * holds one value per stored cell and `shape` is the dense shape.
 */
export type LaidOutTensor = TensorData & { csr?: CsrIndex };

/** Protobuf `DType` values. */
export const DType = { UNSPECIFIED: 0, FLOAT32: 1, INT64: 2, INT32: 3, BFLOAT16: 4 } as const;

/** The wire dtype a logical dtype is sent as. */
export const wireDtype = (dtype: Dtype): number => (dtype === 'int64' ? DType.INT64 : DType.FLOAT32);

/**
 * Keys whose plain number lists have a fixed dtype (the Python SDK's `_KEY_TO_TYPE`); other keys
 * take theirs from the array (see {@link lossInputDtype}).
 */
export const KEY_DTYPES: Readonly<Record<string, Dtype>> = {
  target_tokens: 'int64',
  weights: 'float32',
  advantages: 'float32',
  logprobs: 'float32',
  clip_low_threshold: 'float32',
  clip_high_threshold: 'float32',
};

/**
 * The dtype of a loss input given as a plain array: by key when the key has one, else int64 for
 * an integral array and float32 for anything else.
 *
 * @example
 * lossInputDtype('target_tokens', false); // 'int64'
 * lossInputDtype('mask', true);           // 'int64'
 */
export function lossInputDtype(key: string, integral: boolean): Dtype {
  return KEY_DTYPES[key] ?? (integral ? 'int64' : 'float32');
}

/** Sparse tensors are refused when densifying them would need more elements than this. */
export const MAX_DENSE_ELEMENTS = 1 << 26;

/**
 * Reads packed values of a wire dtype, widening INT32 → int64 and BFLOAT16 → float32 as the
 * Python SDK does.
 *
 * @throws {ProtoDecodeError} on an unknown or unspecified dtype, or a partial value.
 * @example
 * readValues(new Uint8Array(8), DType.INT64, 'x'); // BigInt64Array [0n]
 */
export function readValues(bytes: Uint8Array, dtype: number, what: string): Float32Array | BigInt64Array {
  switch (dtype) {
    case DType.FLOAT32:
      return readFloat32s(bytes, what);
    case DType.INT64:
      return readInt64s(bytes, what);
    case DType.INT32:
      return BigInt64Array.from(readInt32s(bytes, what), (v) => BigInt(v));
    case DType.BFLOAT16: {
      // bfloat16 is the top half of a float32.
      const halves = readBfloat16Bits(bytes, what);
      const out = new Float32Array(halves.length);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < halves.length; i++) bits[i] = halves[i]! << 16;
      return out;
    }
    default:
      throw new ProtoDecodeError(`${what}: ${dtype ? `unknown dtype ${dtype}` : 'dtype is unspecified'} (expected FLOAT32, INT64, INT32 or BFLOAT16)`);
  }
}

export function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/** Refuses negative or non-integer dimensions. */
export function checkShape(shape: readonly number[], what: string): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new ProtoDecodeError(`${what}: shape ${formatShape(shape)} has an invalid dimension ${d}`);
  }
}

/** A dense tensor from flat values; no shape means 1-D. */
export function denseTensor(values: Float32Array | BigInt64Array, shape: number[] | undefined, what: string): TensorData {
  const dtype = values instanceof BigInt64Array ? 'int64' : 'float32';
  if (shape === undefined || shape.length === 0) return { dtype, shape: [values.length], data: values };
  checkShape(shape, what);
  if (product(shape) !== values.length) {
    throw new ProtoDecodeError(`${what}: data has ${values.length} ${dtype} values but shape ${formatShape(shape)} needs ${product(shape)}`);
  }
  return { dtype, shape, data: values };
}

/**
 * Checks a 2-D CSR structure against its dense shape and its number of stored values.
 *
 * @returns the dense shape's rows and columns.
 * @throws {ProtoDecodeError} naming the first inconsistency.
 */
export function checkCsr(nnz: number, crow: readonly number[], col: readonly number[], shape: number[] | undefined, what: string): [number, number] {
  if (shape === undefined || shape.length !== 2) {
    throw new ProtoDecodeError(`${what}: a sparse CSR tensor needs its 2-D dense shape, got ${shape?.length ? formatShape(shape) : 'none'}`);
  }
  checkShape(shape, what);
  const [rows, cols] = shape as [number, number];
  if (rows * cols > MAX_DENSE_ELEMENTS) {
    throw new ProtoDecodeError(`${what}: sparse shape ${formatShape(shape)} densifies to ${rows * cols} elements, above the limit of ${MAX_DENSE_ELEMENTS}`);
  }
  if (crow.length !== rows + 1) {
    throw new ProtoDecodeError(`${what}: crow_indices has ${crow.length} entries but shape ${formatShape(shape)} needs rows + 1 = ${rows + 1}`);
  }
  if (col.length !== nnz) throw new ProtoDecodeError(`${what}: col_indices has ${col.length} entries but there are ${nnz} values`);
  if (crow[0] !== 0) throw new ProtoDecodeError(`${what}: crow_indices must start at 0, got ${crow[0]}`);
  for (let r = 0; r < rows; r++) {
    if (crow[r + 1]! < crow[r]!) throw new ProtoDecodeError(`${what}: crow_indices must be non-decreasing (row ${r})`);
  }
  if (crow[rows] !== nnz) throw new ProtoDecodeError(`${what}: crow_indices ends at ${crow[rows]} but there are ${nnz} values`);
  col.forEach((c, j) => {
    if (c < 0 || c >= cols) throw new ProtoDecodeError(`${what}: col_indices[${j}] = ${c} is outside [0, ${cols})`);
  });
  return [rows, cols];
}

/**
 * The dense form of a (checked) tensor in either layout. Duplicate (row, col) entries of a CSR
 * tensor are summed, as torch's `to_dense()` does, and missing cells are 0.
 *
 * @example
 * densifyCsr({ dtype: 'float32', shape: [1, 2], data: Float32Array.of(3), csr: { crow: [0, 1], col: [1] } }).data; // [0, 3]
 */
export function densifyCsr(t: LaidOutTensor): TensorData {
  if (!t.csr) return t;
  const { crow, col } = t.csr;
  const [rows, cols] = t.shape as [number, number];
  const values = t.data;
  const out = values instanceof BigInt64Array ? new BigInt64Array(rows * cols) : new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let j = crow[r]!; j < crow[r + 1]!; j++) {
      const cell = r * cols + col[j]!;
      if (out instanceof BigInt64Array) out[cell]! += (values as BigInt64Array)[j]!;
      else out[cell]! += (values as Float32Array)[j]!;
    }
  }
  return { dtype: t.dtype, shape: t.shape, data: out };
}

/**
 * The dense form of a tensor in either layout, with `fill` in the cells a CSR tensor does not
 * store (where 0 would mean something: a real token id, a real logprob). A bigint fill is for
 * int64 tensors, a number for float32.
 *
 * @throws {ProtoDecodeError} when a CSR tensor stores one cell twice.
 * @example
 * denseWithFill({ dtype: 'int64', shape: [2, 2], data: BigInt64Array.of(7n), csr: { crow: [0, 1, 1], col: [1] } }, -1n, 't');
 * // int64 [2, 2]: [-1, 7, -1, -1]
 */
export function denseWithFill(t: LaidOutTensor, fill: bigint | number, what: string): TensorData {
  if (!t.csr) return t;
  const { crow, col } = t.csr;
  const [rows, cols] = t.shape as [number, number];
  const out: BigInt64Array | Float32Array = t.data instanceof BigInt64Array ? new BigInt64Array(rows * cols).fill(BigInt(fill)) : new Float32Array(rows * cols).fill(Number(fill));
  const seen = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let j = crow[r]!; j < crow[r + 1]!; j++) {
      const cell = r * cols + col[j]!;
      if (seen[cell]) throw new ProtoDecodeError(`${what}: cell [${r}, ${col[j]}] is stored twice`);
      seen[cell] = 1;
      out[cell] = t.data[j]! as never;
    }
  }
  return { dtype: t.dtype, shape: t.shape, data: out };
}

/**
 * Picks the cells of a dense float32 [rows, cols] tensor that a CSR index stores, in its order;
 * without an index, the dense tensor itself.
 *
 * @example
 * inLayout({ dtype: 'float32', shape: [1, 2], data: Float32Array.of(NaN, -1.5) }, { crow: [0, 1], col: [1] }).data; // [-1.5]
 */
export function inLayout(dense: TensorData, csr: CsrIndex | undefined): LaidOutTensor {
  if (!csr) return dense;
  const cols = dense.shape[1] ?? 0;
  const values = new Float32Array(csr.col.length);
  for (let r = 0; r + 1 < csr.crow.length; r++) {
    for (let j = csr.crow[r]!; j < csr.crow[r + 1]!; j++) values[j] = Number(dense.data[r * cols + csr.col[j]!]);
  }
  return { dtype: 'float32', shape: dense.shape, data: values, csr };
}

/** Encoder-side sanity check: dtype matches the data, shape (or CSR index) matches its length. A programming error, so a `TypeError`. */
export function checkTensor(t: TensorIn & { csr?: CsrIndex | undefined }, what: string): void {
  const ok = t.dtype === 'int64' ? t.data instanceof BigInt64Array : t.dtype === 'float32' && t.data instanceof Float32Array;
  if (!ok) throw new TypeError(`${what}: dtype ${String(t.dtype)} does not match its ${t.data.constructor.name} data`);
  if (t.csr ? t.csr.col.length !== t.data.length : product(t.shape) !== t.data.length) {
    throw new TypeError(`${what}: shape ${formatShape(t.shape)} does not match ${t.data.length} values`);
  }
}
