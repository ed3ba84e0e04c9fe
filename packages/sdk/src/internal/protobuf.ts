/**
 * @module A small hand-written protobuf codec for the three messages the SDK puts on or takes off
 * the wire (tinker-protocol.md §7): it encodes `ForwardBackwardRequest` and decodes
 * `ForwardBackwardOutput` and `SampleResponse`. Only varint, fixed64 and length-delimited fields
 * are written; the reader skips any field it does not know (including fixed32), as protobuf
 * readers must. Packed arrays are little-endian regardless of the host.
 */
import { InvalidArgumentError } from '../core/errors.js';

// ---------------------------------------------------------------------------------------------
// Logical shapes (wire-level, before conversion to the public types)

/** Protobuf `DType` values. */
export const DType = { UNSPECIFIED: 0, FLOAT32: 1, INT64: 2, INT32: 3, BFLOAT16: 4 } as const;

/** A dense tensor to encode: raw little-endian values plus dtype and shape. */
export interface PbTensorIn {
  dtype: 'int64' | 'float32';
  shape: readonly number[];
  data: Float32Array | BigInt64Array;
}

/** A model-input chunk to encode. */
export type PbChunkIn =
  | { kind: 'encoded_text'; tokens: readonly number[] }
  | { kind: 'image'; data: Uint8Array; format: string; expectedTokens?: number | undefined };

/** A datum to encode. */
export interface PbDatumIn {
  chunks: readonly PbChunkIn[];
  lossFnInputs: Readonly<Record<string, PbTensorIn>>;
}

/** `ForwardBackwardRequest` fields. */
export interface PbForwardBackwardRequestIn {
  modelId: string;
  seqId: number;
  data: readonly PbDatumIn[];
  lossFn: string;
  lossFnConfig: Readonly<Record<string, number>>;
  forwardOnly: boolean;
}

/** A decoded output tensor. */
export interface PbTensorOut {
  dtype: 'int64' | 'float32';
  shape: number[];
  data: Float32Array | BigInt64Array;
}

/** A decoded `ForwardBackwardOutput`: records flattened into per-datum field maps. */
export interface PbForwardBackwardOutput {
  lossFnOutputType: string;
  lossFnOutputs: Record<string, PbTensorOut>[];
  metrics: Record<string, number>;
}

/** Top-k rows: per position, `[tokenId, logprob]` pairs (`null` for a row with none). */
export type PbTopkRows = ([number, number][] | null)[];

/** A decoded `SampleResponse`; the fields added in SDK 0.32 are set only when present. */
export interface PbSampleResponse {
  sequences: { stopReason: 'stop' | 'length'; tokens: number[]; logprobs: number[] | null; topkLogprobs?: PbTopkRows }[];
  promptLogprobs: (number | null)[] | null;
  topkPromptLogprobs: PbTopkRows | null;
  promptCacheHitTokens: number;
  /** Dense (a CSR answer is densified with NaN). */
  targetPromptLogprobs?: PbTensorOut;
  promptAltTokens?: { tokens: PbTensorOut; logprobs: PbTensorOut };
}

/** A protobuf body that could not be decoded. */
export class ProtobufDecodeError extends Error {
  override readonly name = 'ProtobufDecodeError';
}

// ---------------------------------------------------------------------------------------------
// Byte-order helpers

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The little-endian bytes of a typed array (a view when the host is little-endian). */
export function leBytes(values: Float32Array | BigInt64Array | Int32Array): Uint8Array {
  const view = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return LITTLE_ENDIAN ? view : swapped(view, values.BYTES_PER_ELEMENT);
}

function swapped(bytes: Uint8Array, width: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += width) {
    for (let j = 0; j < width; j++) out[i + j] = bytes[i + width - 1 - j]!;
  }
  return out;
}

/** An aligned, host-order copy of little-endian bytes. */
function alignedHostCopy(bytes: Uint8Array, width: number): ArrayBuffer {
  // `new Uint8Array(view)` copies into a fresh buffer (Buffer#slice would share the pool).
  const copy = LITTLE_ENDIAN ? new Uint8Array(bytes) : swapped(bytes, width);
  return copy.buffer as ArrayBuffer;
}

function readArray(bytes: Uint8Array, width: number, what: string): ArrayBuffer {
  if (bytes.length % width !== 0) throw new ProtobufDecodeError(`${what}: ${bytes.length} bytes is not a whole number of ${width}-byte values`);
  return alignedHostCopy(bytes, width);
}

const readInt32s = (b: Uint8Array, what: string): Int32Array => new Int32Array(readArray(b, 4, what));
const readFloat32s = (b: Uint8Array, what: string): Float32Array => new Float32Array(readArray(b, 4, what));
const readInt64s = (b: Uint8Array, what: string): BigInt64Array => new BigInt64Array(readArray(b, 8, what));

// ---------------------------------------------------------------------------------------------
// Writer

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/** Accumulates protobuf fields; nested messages are written into their own writer first. */
class Writer {
  private chunks: Uint8Array[] = [];
  private scratch = new Uint8Array(64);
  private pos = 0;
  length = 0;

  private flush(): void {
    if (this.pos > 0) {
      this.chunks.push(this.scratch.slice(0, this.pos));
      this.pos = 0;
    }
  }

  private byte(b: number): void {
    if (this.pos === this.scratch.length) this.flush();
    this.scratch[this.pos++] = b;
    this.length++;
  }

  /** An unsigned varint up to 2^53, or a negative int64 (two's complement, 10 bytes). */
  varint(value: number | bigint): void {
    let v = typeof value === 'bigint' ? BigInt.asUintN(64, value) : value;
    if (typeof v === 'number') {
      if (v < 0) {
        v = BigInt.asUintN(64, BigInt(v));
      } else {
        while (v >= 0x80) {
          this.byte((v % 0x80) | 0x80);
          v = Math.floor(v / 0x80);
        }
        this.byte(v);
        return;
      }
    }
    let b = v as bigint;
    while (b >= 0x80n) {
      this.byte(Number(b & 0x7fn) | 0x80);
      b >>= 7n;
    }
    this.byte(Number(b));
  }

  tag(field: number, wireType: 0 | 1 | 2 | 5): void {
    this.varint(field * 8 + wireType);
  }

  bytes(field: number, data: Uint8Array): void {
    this.tag(field, 2);
    this.varint(data.length);
    this.flush();
    this.chunks.push(data);
    this.length += data.length;
  }

  string(field: number, value: string): void {
    this.bytes(field, textEncoder.encode(value));
  }

  double(field: number, value: number): void {
    this.tag(field, 1);
    const buf = new DataView(new ArrayBuffer(8));
    buf.setFloat64(0, value, true);
    for (let i = 0; i < 8; i++) this.byte(buf.getUint8(i));
  }

  message(field: number, inner: Writer): void {
    this.bytes(field, inner.finish());
  }

  /** A packed repeated varint field (proto3's default for repeated scalars). */
  packedVarints(field: number, values: readonly number[]): void {
    if (values.length === 0) return;
    const inner = new Writer();
    for (const v of values) inner.varint(v);
    this.message(field, inner);
  }

  finish(): Uint8Array {
    this.flush();
    if (this.chunks.length === 1) return this.chunks[0]!;
    const out = new Uint8Array(this.length);
    let offset = 0;
    for (const c of this.chunks) {
      out.set(c, offset);
      offset += c.length;
    }
    return out;
  }
}

function int32Array(tokens: readonly number[], what: string): Int32Array {
  const out = new Int32Array(tokens.length);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!Number.isInteger(t) || t < -0x80000000 || t > 0x7fffffff) throw new InvalidArgumentError(`${what}[${i}] = ${t} is not an int32 token id`);
    out[i] = t;
  }
  return out;
}

function writeTensor(t: PbTensorIn): Writer {
  const w = new Writer();
  // proto3 `oneof` fields are written even when empty, so an empty tensor stays "dense".
  w.bytes(1, leBytes(t.data));
  w.tag(3, 0);
  w.varint(t.dtype === 'int64' ? DType.INT64 : DType.FLOAT32);
  w.packedVarints(4, t.shape);
  return w;
}

function writeChunk(c: PbChunkIn, what: string): Writer {
  const w = new Writer();
  const inner = new Writer();
  if (c.kind === 'encoded_text') {
    if (c.tokens.length > 0) inner.bytes(1, leBytes(int32Array(c.tokens, what)));
    w.message(1, inner);
  } else {
    if (c.data.length > 0) inner.bytes(1, c.data);
    if (c.format) inner.string(2, c.format);
    if (c.expectedTokens !== undefined) {
      inner.tag(3, 0);
      inner.varint(c.expectedTokens);
    }
    w.message(2, inner);
  }
  return w;
}

/** A map entry: string key (field 1) and a value written by `value` as field 2. */
function mapEntry(key: string, value: (w: Writer) => void): Writer {
  const w = new Writer();
  if (key) w.string(1, key);
  value(w);
  return w;
}

/**
 * Encodes a `ForwardBackwardRequest`. The loss config goes into both `loss_fn_config` (read by
 * servers for SDK ≤ 0.26) and `loss_fn_config_v2` (preferred by newer ones), as SDK ≥ 0.26.2 does.
 *
 * @example
 * const body = encodeForwardBackwardRequest({ modelId: 'S:train:0', seqId: 1, lossFn: 'cross_entropy',
 *   lossFnConfig: {}, forwardOnly: false, data: [] });
 */
export function encodeForwardBackwardRequest(msg: PbForwardBackwardRequestIn): Uint8Array {
  const w = new Writer();
  if (msg.modelId) w.string(1, msg.modelId);
  if (msg.seqId) {
    w.tag(2, 0);
    w.varint(msg.seqId);
  }
  msg.data.forEach((d, i) => {
    const dw = new Writer();
    d.chunks.forEach((c, j) => dw.message(1, writeChunk(c, `data[${i}].modelInput.chunks[${j}].tokens`)));
    for (const [key, tensor] of Object.entries(d.lossFnInputs)) {
      dw.message(2, mapEntry(key, (e) => e.message(2, writeTensor(tensor))));
    }
    w.message(3, dw);
  });
  if (msg.lossFn) w.string(4, msg.lossFn);
  const config = Object.entries(msg.lossFnConfig);
  for (const [key, value] of config) w.message(5, mapEntry(key, (e) => e.double(2, value)));
  if (msg.forwardOnly) {
    w.tag(6, 0);
    w.varint(1);
  }
  for (const [key, value] of config) {
    w.message(
      7,
      mapEntry(key, (e) => {
        const v = new Writer();
        v.double(1, value);
        e.message(2, v);
      }),
    );
  }
  return w.finish();
}

// ---------------------------------------------------------------------------------------------
// Reader

/** Iterates the fields of one message. */
class Reader {
  pos = 0;
  constructor(
    private readonly buf: Uint8Array,
    private readonly what: string,
  ) {}

  get done(): boolean {
    return this.pos >= this.buf.length;
  }

  private fail(message: string): never {
    throw new ProtobufDecodeError(`malformed protobuf ${this.what}: ${message}`);
  }

  /** A varint as a number (exact up to 2^53; int64 negatives come back as their two's complement as bigint-converted number). */
  varint(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.buf.length) this.fail('truncated varint');
      const b = this.buf[this.pos++]!;
      result += (b & 0x7f) * scale;
      if (b < 0x80) {
        // Ten-byte varints are negative int64s (two's complement).
        if (i === 9 || result >= 2 ** 63) return result - 2 ** 64;
        return result;
      }
      scale *= 128;
    }
    return this.fail('varint longer than 10 bytes');
  }

  /** Reads a tag: field number and wire type. */
  tag(): [number, number] {
    const t = this.varint();
    return [Math.floor(t / 8), t % 8];
  }

  bytes(): Uint8Array {
    const n = this.varint();
    if (n < 0 || this.pos + n > this.buf.length) this.fail('length-delimited field runs past the end');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  string(): string {
    return textDecoder.decode(this.bytes());
  }

  double(): number {
    if (this.pos + 8 > this.buf.length) this.fail('truncated fixed64');
    const value = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 8).getFloat64(0, true);
    this.pos += 8;
    return value;
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.bytes();
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        this.fail(`unsupported wire type ${wireType}`);
    }
    if (this.pos > this.buf.length) this.fail('truncated fixed-width field');
  }

  /** Repeated varints, packed (wire type 2) or one per tag (wire type 0). */
  repeatedVarint(wireType: number, into: number[]): void {
    if (wireType === 0) {
      into.push(this.varint());
      return;
    }
    if (wireType !== 2) this.fail(`unexpected wire type ${wireType} for a repeated varint`);
    const inner = new Reader(this.bytes(), this.what);
    while (!inner.done) into.push(inner.varint());
  }

  expect(wireType: number, want: number, field: string): void {
    if (wireType !== want) this.fail(`field ${field} has wire type ${wireType}, expected ${want}`);
  }
}

/** Reads a `map<string, V>` entry. */
function readMapEntry<V>(bytes: Uint8Array, what: string, readValue: (r: Reader, wireType: number) => V, empty: V): [string, V] {
  const r = new Reader(bytes, what);
  let key = '';
  let value = empty;
  while (!r.done) {
    const [field, wt] = r.tag();
    if (field === 1 && wt === 2) key = r.string();
    else if (field === 2) value = readValue(r, wt);
    else r.skip(wt);
  }
  return [key, value];
}

interface RawBatchedTensor {
  data: Uint8Array;
  offsets: Uint8Array;
  dtype: number;
  trailing: number[];
}

const EMPTY = new Uint8Array(0);

function readBatchedTensor(bytes: Uint8Array): RawBatchedTensor {
  const r = new Reader(bytes, 'BatchedTensor');
  const t: RawBatchedTensor = { data: EMPTY, offsets: EMPTY, dtype: 0, trailing: [] };
  while (!r.done) {
    const [field, wt] = r.tag();
    if (field === 1 && wt === 2) t.data = r.bytes();
    else if (field === 2 && wt === 2) t.offsets = r.bytes();
    else if (field === 3 && wt === 0) t.dtype = r.varint();
    else if (field === 4) r.repeatedVarint(wt, t.trailing);
    else r.skip(wt);
  }
  return t;
}

/** Values of one datum in a batched field, widened as the Python SDK does (int32 → int64, bf16 → f32). */
function batchedValues(bytes: Uint8Array, dtype: number, what: string): Float32Array | BigInt64Array {
  switch (dtype) {
    case DType.FLOAT32:
      return readFloat32s(bytes, what);
    case DType.INT64:
      return readInt64s(bytes, what);
    case DType.INT32:
      return BigInt64Array.from(readInt32s(bytes, what), (v) => BigInt(v));
    case DType.BFLOAT16: {
      if (bytes.length % 2 !== 0) throw new ProtobufDecodeError(`${what}: odd number of bfloat16 bytes`);
      const out = new Float32Array(bytes.length / 2);
      const view = new DataView(out.buffer);
      for (let i = 0; i < out.length; i++) view.setUint32(i * 4, (bytes[2 * i]! | (bytes[2 * i + 1]! << 8)) << 16, true);
      if (!LITTLE_ENDIAN) return new Float32Array(alignedHostCopy(new Uint8Array(out.buffer), 4));
      return out;
    }
    default:
      throw new ProtobufDecodeError(`${what}: unknown dtype ${dtype}`);
  }
}

function readArrayRecord(bytes: Uint8Array, index: number): Record<string, PbTensorOut>[] {
  const r = new Reader(bytes, 'ArrayRecord');
  let numDatums = 0;
  const fields: [string, RawBatchedTensor][] = [];
  const emptyField: RawBatchedTensor = { data: EMPTY, offsets: EMPTY, dtype: 0, trailing: [] };
  while (!r.done) {
    const [field, wt] = r.tag();
    if (field === 2 && wt === 2) fields.push(readMapEntry(r.bytes(), 'ArrayRecord.fields', (inner, w) => (w === 2 ? readBatchedTensor(inner.bytes()) : (inner.skip(w), emptyField)), emptyField));
    else if (field === 3 && wt === 0) numDatums = r.varint();
    else r.skip(wt);
  }
  if (numDatums < 0 || numDatums > 1 << 26) throw new ProtobufDecodeError(`loss_fn_outputs[${index}].num_datums ${numDatums} is out of range`);
  const datums: Record<string, PbTensorOut>[] = Array.from({ length: numDatums }, () => ({}));
  for (const [key, bt] of fields) {
    const what = `loss_fn_outputs[${index}].fields['${key}']`;
    const offsets = Array.from(readInt64s(bt.offsets, `${what}.offsets`), Number);
    if (offsets.length !== numDatums + 1) throw new ProtobufDecodeError(`${what}: ${offsets.length} offsets for ${numDatums} datums`);
    const per = bt.trailing.reduce((a, b) => a * b, 1);
    if (per <= 0) throw new ProtobufDecodeError(`${what}: trailing shape [${bt.trailing.join(', ')}] has a zero dimension`);
    for (let i = 0; i < numDatums; i++) {
      const [start, end] = [offsets[i]!, offsets[i + 1]!];
      if (start < 0 || end < start || end > bt.data.length) throw new ProtobufDecodeError(`${what}: datum ${i} offsets ${start}..${end} fall outside the data`);
      const values = batchedValues(bt.data.subarray(start, end), bt.dtype, `${what} datum ${i}`);
      if (values.length % per !== 0) throw new ProtobufDecodeError(`${what}: datum ${i} has ${values.length} values, not a multiple of the trailing shape`);
      datums[i]![key] = { dtype: values instanceof BigInt64Array ? 'int64' : 'float32', shape: [values.length / per, ...bt.trailing], data: values };
    }
  }
  return datums;
}

/**
 * Decodes a `ForwardBackwardOutput` by the Python SDK's rules: records concatenate in order,
 * `num_datums` is authoritative, a datum's first dimension is its element count over the trailing shape.
 *
 * @example
 * const out = decodeForwardBackwardOutput(bytes);
 * out.lossFnOutputs[0]?.['logprobs']?.shape; // [N]
 */
export function decodeForwardBackwardOutput(body: Uint8Array): PbForwardBackwardOutput {
  const r = new Reader(body, 'ForwardBackwardOutput');
  const out: PbForwardBackwardOutput = { lossFnOutputType: '', lossFnOutputs: [], metrics: {} };
  let records = 0;
  while (!r.done) {
    const [field, wt] = r.tag();
    if (field === 1 && wt === 2) out.lossFnOutputType = r.string();
    else if (field === 2 && wt === 2) out.lossFnOutputs.push(...readArrayRecord(r.bytes(), records++));
    else if (field === 3 && wt === 2) {
      const [key, value] = readMapEntry(r.bytes(), 'metrics', (inner, w) => (w === 1 ? inner.double() : (inner.skip(w), 0)), 0);
      out.metrics[key] = value;
    } else r.skip(wt);
  }
  // The SDK keeps the class name after the last ':' and calls an empty type "ArrayRecord".
  out.lossFnOutputType = out.lossFnOutputType.split(':').pop() || 'ArrayRecord';
  return out;
}

/** The top-k padding cell: token id 0 with this logprob. */
const TOPK_PAD = -99999.0;

/** A `TopkLogprobs` message as rows: a row starting with the padding cell is `null`, trailing padding is trimmed. */
function readTopk(bytes: Uint8Array, what: string): PbTopkRows {
  const t = new Reader(bytes, 'TopkLogprobs');
  let ids: Uint8Array = EMPTY;
  let lpBytes: Uint8Array = EMPTY;
  let k = 0;
  let n = 0;
  while (!t.done) {
    const [f, w] = t.tag();
    if (f === 1 && w === 2) ids = t.bytes();
    else if (f === 2 && w === 2) lpBytes = t.bytes();
    else if (f === 3 && w === 0) k = t.varint();
    else if (f === 4 && w === 0) n = t.varint();
    else t.skip(w);
  }
  const idArr = readInt32s(ids, `${what}.token_ids`);
  const lpArr = readFloat32s(lpBytes, `${what}.logprobs`);
  if (idArr.length !== n * k || lpArr.length !== n * k) throw new ProtobufDecodeError(`${what}: ${idArr.length} ids and ${lpArr.length} logprobs for ${n} x ${k}`);
  const isPad = (c: number): boolean => idArr[c] === 0 && lpArr[c] === TOPK_PAD;
  return Array.from({ length: n }, (_, i) => {
    if (k === 0 || isPad(i * k)) return null;
    let len = k;
    while (len > 0 && isPad(i * k + len - 1)) len--;
    return Array.from({ length: len }, (_, j): [number, number] => [idArr[i * k + j]!, lpArr[i * k + j]!]);
  });
}

/**
 * A `Tensor` message, dense. A sparse CSR one is densified with NaN (float32: "not requested") or
 * -1 (int64: "no token") in the cells it does not store.
 */
function readTensor(bytes: Uint8Array, what: string): PbTensorOut {
  const r = new Reader(bytes, 'Tensor');
  let dense: Uint8Array | undefined;
  let csr: { values: Uint8Array; crow: Uint8Array; col: Uint8Array } | undefined;
  let dtype = 0;
  const shape: number[] = [];
  while (!r.done) {
    const [f, w] = r.tag();
    if (f === 1 && w === 2) dense = r.bytes();
    else if (f === 2 && w === 2) {
      const c = new Reader(r.bytes(), 'SparseCsr');
      csr = { values: EMPTY, crow: EMPTY, col: EMPTY };
      while (!c.done) {
        const [cf, cw] = c.tag();
        if (cf === 1 && cw === 2) csr.values = c.bytes();
        else if (cf === 2 && cw === 2) csr.crow = c.bytes();
        else if (cf === 3 && cw === 2) csr.col = c.bytes();
        else c.skip(cw);
      }
    } else if (f === 3 && w === 0) dtype = r.varint();
    else if (f === 4) r.repeatedVarint(w, shape);
    else r.skip(w);
  }
  const size = shape.reduce((a, b) => a * b, 1);
  if (!csr) {
    const data = batchedValues(dense ?? EMPTY, dtype, what);
    if (data.length !== size) throw new ProtobufDecodeError(`${what}: ${data.length} values for shape [${shape.join(', ')}]`);
    return { dtype: data instanceof BigInt64Array ? 'int64' : 'float32', shape, data };
  }
  const values = batchedValues(csr.values, dtype, `${what} (sparse values)`);
  const crow = Array.from(readInt64s(csr.crow, `${what}.crow_indices`), Number);
  const col = Array.from(readInt64s(csr.col, `${what}.col_indices`), Number);
  const [rows, cols] = shape as [number, number];
  if (shape.length !== 2 || crow.length !== rows + 1 || col.length !== values.length || crow[rows] !== values.length) {
    throw new ProtobufDecodeError(`${what}: a sparse CSR tensor of shape [${shape.join(', ')}] with ${crow.length} row offsets, ${col.length} columns and ${values.length} values`);
  }
  // The flat dense cell of each stored value.
  const cells = new Array<number>(values.length);
  for (let i = 0; i < rows; i++) {
    for (let j = crow[i]!; j < crow[i + 1]!; j++) {
      if (!(j >= 0 && j < values.length && col[j]! >= 0 && col[j]! < cols)) throw new ProtobufDecodeError(`${what}: sparse cell ${j} is outside the shape`);
      cells[j] = i * cols + col[j]!;
    }
  }
  if (values instanceof BigInt64Array) {
    const out = new BigInt64Array(size).fill(-1n);
    cells.forEach((cell, j) => (out[cell] = values[j]!));
    return { dtype: 'int64', shape, data: out };
  }
  const out = new Float32Array(size).fill(NaN);
  cells.forEach((cell, j) => (out[cell] = values[j]!));
  return { dtype: 'float32', shape, data: out };
}

/**
 * Decodes a `SampleResponse`: empty sequence logprobs are `null`, NaN prompt logprobs are `null`,
 * a top-k row that starts with the padding cell is `null` and trailing padding is trimmed. The
 * SDK 0.32 fields (sampled top-k, target prompt logprobs, alternative prompt tokens) are set only
 * when the server sent them.
 *
 * @example
 * decodeSampleResponse(bytes).sequences[0]?.tokens;
 */
export function decodeSampleResponse(body: Uint8Array): PbSampleResponse {
  const r = new Reader(body, 'SampleResponse');
  const out: PbSampleResponse = { sequences: [], promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0 };
  while (!r.done) {
    const [field, wt] = r.tag();
    if (field === 1 && wt === 2) {
      const i = out.sequences.length;
      const s = new Reader(r.bytes(), 'SampledSequence');
      let stop = 0;
      let tokens: Uint8Array = EMPTY;
      let logprobs: Uint8Array = EMPTY;
      let topk: PbTopkRows | undefined;
      while (!s.done) {
        const [f, w] = s.tag();
        if (f === 1 && w === 0) stop = s.varint();
        else if (f === 2 && w === 2) tokens = s.bytes();
        else if (f === 3 && w === 2) logprobs = s.bytes();
        else if (f === 4 && w === 2) topk = readTopk(s.bytes(), `sequences[${i}].topk_sampled_logprobs`);
        else s.skip(w);
      }
      const stopReason = stop === 0 ? 'stop' : stop === 1 ? 'length' : undefined;
      if (stopReason === undefined) throw new ProtobufDecodeError(`sequences[${i}]: unknown stop_reason ${stop}`);
      const tokenList = Array.from(readInt32s(tokens, `sequences[${i}].tokens`));
      const lps = readFloat32s(logprobs, `sequences[${i}].logprobs`);
      if (lps.length > 0 && lps.length !== tokenList.length) throw new ProtobufDecodeError(`sequences[${i}]: ${lps.length} logprobs for ${tokenList.length} tokens`);
      out.sequences.push({ stopReason, tokens: tokenList, logprobs: lps.length > 0 ? Array.from(lps) : null, ...(topk ? { topkLogprobs: topk } : {}) });
    } else if (field === 2 && wt === 2) {
      out.promptLogprobs = Array.from(readFloat32s(r.bytes(), 'prompt_logprobs'), (v) => (Number.isNaN(v) ? null : v));
    } else if (field === 3 && wt === 2) {
      out.topkPromptLogprobs = readTopk(r.bytes(), 'topk_prompt_logprobs');
    } else if (field === 4 && wt === 0) {
      out.promptCacheHitTokens = r.varint();
    } else if (field === 5 && wt === 2) {
      out.targetPromptLogprobs = readTensor(r.bytes(), 'target_prompt_logprobs');
    } else if (field === 6 && wt === 2) {
      const a = new Reader(r.bytes(), 'PromptAltTokens');
      const alt: { tokens?: PbTensorOut; logprobs?: PbTensorOut } = {};
      while (!a.done) {
        const [f, w] = a.tag();
        if (f === 1 && w === 2) alt.tokens = readTensor(a.bytes(), 'prompt_alt_tokens.tokens');
        else if (f === 2 && w === 2) alt.logprobs = readTensor(a.bytes(), 'prompt_alt_tokens.logprobs');
        else a.skip(w);
      }
      if (!alt.tokens || !alt.logprobs) throw new ProtobufDecodeError('prompt_alt_tokens: needs both tokens and logprobs');
      out.promptAltTokens = { tokens: alt.tokens, logprobs: alt.logprobs };
    } else r.skip(wt);
  }
  return out;
}
