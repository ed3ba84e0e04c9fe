/**
 * @module The protobuf `Tensor` message (dense or sparse CSR), read and written in either layout.
 */
import { checkCsr, checkTensor, denseTensor, readValues, wireDtype, type CsrIndex, type LaidOutTensor, type TensorIn } from './tensor.js';
import { leBytes, readIndices, Writer, type Reader } from './wire.js';

const EMPTY = new Uint8Array(0);

/** A `Tensor` message's fields, parsed but not yet checked. */
export interface RawTensor {
  dense: Uint8Array;
  sparse: { values: Uint8Array; crow: Uint8Array; col: Uint8Array } | undefined;
  dtype: number;
  shape: number[];
}

/** Parses a `Tensor` message's fields (structure only; {@link tensorFromRaw} checks the content). */
export function readRawTensor(r: Reader, what: string): RawTensor {
  const t: RawTensor = { dense: EMPTY, sparse: undefined, dtype: 0, shape: [] };
  for (const [field, wt] of r.fields()) {
    if (field === 1 && wt === 2) {
      // Members of a oneof: the last one on the wire wins.
      t.dense = r.bytes();
      t.sparse = undefined;
    } else if (field === 2 && wt === 2) {
      const s = r.message();
      t.sparse = { values: EMPTY, crow: EMPTY, col: EMPTY };
      for (const [f, w] of s.fields()) {
        if (f === 1 && w === 2) t.sparse.values = s.bytes();
        else if (f === 2 && w === 2) t.sparse.crow = s.bytes();
        else if (f === 3 && w === 2) t.sparse.col = s.bytes();
        else s.skip(w);
      }
    } else if (field === 3 && wt === 0) t.dtype = r.varint();
    else if (field === 4) r.repeatedInts(wt, t.shape, `${what}: shape`);
    else r.skip(wt);
  }
  return t;
}

/**
 * A parsed `Tensor` in the layout it came in (CSR values stay sparse, checked against the dense
 * shape). No encoding at all is an empty dense tensor: proto3 cannot tell the two apart.
 *
 * @throws {ProtoDecodeError} on a malformed tensor.
 */
export function tensorFromRaw(t: RawTensor | undefined, what: string): LaidOutTensor {
  const { dense, sparse, dtype, shape } = t ?? { dense: EMPTY, sparse: undefined, dtype: 0, shape: [] };
  if (!sparse) return denseTensor(readValues(dense, dtype, what), shape, what);
  const values = readValues(sparse.values, dtype, `${what} (sparse values)`);
  const csr: CsrIndex = { crow: readIndices(sparse.crow, `${what}: crow_indices`), col: readIndices(sparse.col, `${what}: col_indices`) };
  checkCsr(values.length, csr.crow, csr.col, shape, what);
  return { dtype: values instanceof BigInt64Array ? 'int64' : 'float32', shape, data: values, csr };
}

/** Reads and checks a `Tensor` message, in its layout. */
export const readTensorMessage = (r: Reader, what: string): LaidOutTensor => tensorFromRaw(readRawTensor(r, what), what);

/** Writes a `Tensor` message: dense (the `dense` field even when empty, so it stays "dense"), or CSR. */
export function writeTensorMessage(t: TensorIn & { csr?: CsrIndex | undefined }, what: string): Writer {
  checkTensor(t, what);
  const w = new Writer();
  if (t.csr) {
    const s = new Writer();
    const indices = (values: number[]): Uint8Array => leBytes(BigInt64Array.from(values, (v) => BigInt(v)));
    if (t.data.length) s.bytes(1, leBytes(t.data));
    if (t.csr.crow.length) s.bytes(2, indices(t.csr.crow));
    if (t.csr.col.length) s.bytes(3, indices(t.csr.col));
    w.message(2, s);
  } else w.bytes(1, leBytes(t.data));
  w.uint(3, wireDtype(t.dtype));
  w.packedUints(4, t.shape);
  return w;
}
