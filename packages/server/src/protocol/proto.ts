/**
 * @module Tinker's protobuf wire format (`application/x-protobuf`) and the JSON tensor forms.
 *
 * Decodes `ForwardBackwardRequest` bodies into Lathe's logical types and encodes the
 * `ForwardBackwardOutput` / `SampleResponse` results that SDK 0.25+ accept only as protobuf.
 * The rules follow the official SDK's encoder and decoder (`proto/response_conv.py`): packed
 * little-endian byte arrays, per-record dtype and trailing shape, NaN and top-k padding sentinels.
 * Every malformed input raises {@link ProtoDecodeError} with a message that says what is wrong and where.
 */
import { existsSync, readFileSync } from 'node:fs';
import protobuf from 'protobufjs';

// ---------------------------------------------------------------------------------------------
// Public types

/** A tensor in Lathe's logical form (Tinker's `TensorData`): dense, row-major. */
export interface TensorData {
  dtype: 'int64' | 'float32';
  shape: number[];
  data: Float32Array | BigInt64Array;
}

/** The CSR structure of a 2-D tensor: `crow` (rows + 1 offsets into `col`) and one column per stored value. */
export interface CsrIndex {
  crow: number[];
  col: number[];
}

/**
 * A 2-D tensor in the layout it travels in: dense (`csr` absent), or sparse CSR, where `data`
 * holds one value per stored cell and `shape` is the dense shape. Sampling answers
 * `target_prompt_logprobs` in the layout the request used.
 */
export type LaidOutTensor = TensorData & { csr?: CsrIndex };

/** One training example: `modelInput` is the concatenation of its `encoded_text` chunks. */
export interface WireDatum {
  modelInput: number[];
  lossFnInputs: Record<string, TensorData>;
}

/** A decoded `POST /api/v1/forward_backward` (or `forward`) body. */
export interface ForwardBackwardRequestMsg {
  modelId: string;
  seqId: number;
  data: WireDatum[];
  lossFn: string;
  lossFnConfig: Record<string, number>;
  forwardOnly: boolean;
}

/** The result of a forward / forward_backward future: per-datum outputs in input order, plus metrics. */
export interface ForwardBackwardOutputMsg {
  lossFnOutputs: Record<string, TensorData>[];
  metrics: Record<string, number>;
}

/** Per position, `[tokenId, logprob]` pairs (`null` for a row with none). */
export type TopkRows = ([number, number][] | null)[];

/** One sampled completion. */
export interface SampledSequenceMsg {
  stopReason: 'stop' | 'length';
  tokens: number[];
  logprobs: number[] | null;
  /** Per sampled token, the top-k of its step's distribution (`topk_sample_logprobs`); absent when not requested. */
  topkLogprobs?: TopkRows;
}

/** The result of an asample future. */
export interface SampleResponseMsg {
  sequences: SampledSequenceMsg[];
  /** Per prompt position; `null` where not computed (position 0). `null` overall when not requested. */
  promptLogprobs: (number | null)[] | null;
  /** Per prompt position, `[tokenId, logprob]` pairs (or `null`). `null` overall when not requested. */
  topkPromptLogprobs: TopkRows | null;
  promptCacheHitTokens: number;
  /** float32 [len(prompt) - 1, K] in the request's layout (NaN for unrequested dense cells); absent when not requested. */
  targetPromptLogprobs?: LaidOutTensor;
  /** `prompt_alt_tokens_k` draws per prompt position after the first; absent when not requested. */
  promptAltTokens?: { tokens: TensorData; logprobs: TensorData };
}

/**
 * A request body (protobuf or JSON tensor / model input) that cannot be accepted. Routes answer it
 * with a 400 user error carrying `message`.
 *
 * @example
 * try { decodeForwardBackwardRequest(body); }
 * catch (e) { if (e instanceof ProtoDecodeError) return userError(reply, e.message); throw e; }
 */
export class ProtoDecodeError extends Error {
  override readonly name = 'ProtoDecodeError';
}

/** Sparse tensors are refused when densifying them would need more elements than this. */
export const MAX_DENSE_ELEMENTS = 1 << 26;

// ---------------------------------------------------------------------------------------------
// Schema

/**
 * Tinker's public protobuf schema, read from `tinker_public.proto` (the one copy of it; protoc
 * compiles the same file in the Python conformance tests). The package ships `src/`, so from
 * `dist/protocol/` the file is found under `../../src/protocol/`.
 */
export const TINKER_PUBLIC_PROTO = readFileSync(
  [new URL('./tinker_public.proto', import.meta.url), new URL('../../src/protocol/tinker_public.proto', import.meta.url)].find((u) => existsSync(u)) ??
    new URL('./tinker_public.proto', import.meta.url),
  'utf8',
);

const root = protobuf.parse(TINKER_PUBLIC_PROTO, { keepCase: true }).root;
const ForwardBackwardRequestType = root.lookupType('tinker_public.ForwardBackwardRequest');
const ForwardBackwardOutputType = root.lookupType('tinker_public.ForwardBackwardOutput');
const SampleResponseType = root.lookupType('tinker_public.SampleResponse');

// Shapes of decoded protobufjs messages (snake_case via keepCase). int64 fields come back as Long.
type Int64 = number | { toNumber(): number };
type Bytes = Uint8Array | null | undefined;
interface PbTensor {
  encoding?: 'dense' | 'sparse_csr';
  dense?: Bytes;
  sparse_csr?: { values?: Bytes; crow_indices?: Bytes; col_indices?: Bytes } | null;
  dtype?: number;
  shape?: Int64[];
}
interface PbChunk {
  chunk?: 'encoded_text' | 'image' | 'dmel';
  encoded_text?: { tokens?: Bytes } | null;
}
interface PbDatum {
  model_input?: PbChunk[];
  loss_fn_inputs?: Record<string, PbTensor | null>;
}
interface PbForwardBackwardRequest {
  model_id?: string;
  seq_id?: number;
  data?: PbDatum[];
  loss_fn?: string;
  loss_fn_config?: Record<string, number>;
  forward_only?: boolean;
  loss_fn_config_v2?: Record<string, { value?: 'number' | 'text'; number?: number | null; text?: string | null } | null>;
}
interface PbBatchedTensor {
  data?: Bytes;
  offsets?: Bytes;
  dtype?: number;
  trailing_shape?: Int64[];
}
interface PbForwardBackwardOutput {
  loss_fn_output_type?: string;
  loss_fn_outputs?: { type_tag?: string; fields?: Record<string, PbBatchedTensor | null>; num_datums?: Int64 }[];
  metrics?: Record<string, number>;
}
interface PbTopk {
  token_ids?: Bytes;
  logprobs?: Bytes;
  k?: number;
  length?: number;
}
interface PbSampleResponse {
  sequences?: { stop_reason?: number; tokens?: Bytes; logprobs?: Bytes; topk_sampled_logprobs?: PbTopk | null }[];
  prompt_logprobs?: Bytes;
  topk_prompt_logprobs?: PbTopk | null;
  prompt_cache_hit_tokens?: number;
  target_prompt_logprobs?: PbTensor | null;
  prompt_alt_tokens?: { tokens?: PbTensor | null; logprobs?: PbTensor | null } | null;
}

// ---------------------------------------------------------------------------------------------
// Byte arrays (little-endian; typed arrays are used directly, which assumes a little-endian host)

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const DTYPE = { UNSPECIFIED: 0, FLOAT32: 1, INT64: 2, INT32: 3, BFLOAT16: 4 } as const;
const DTYPE_INFO: Record<number, { name: string; bytes: number; logical: TensorData['dtype'] }> = {
  [DTYPE.FLOAT32]: { name: 'float32', bytes: 4, logical: 'float32' },
  [DTYPE.INT64]: { name: 'int64', bytes: 8, logical: 'int64' },
  [DTYPE.INT32]: { name: 'int32', bytes: 4, logical: 'int64' },
  [DTYPE.BFLOAT16]: { name: 'bfloat16', bytes: 2, logical: 'float32' },
};
const EMPTY = new Uint8Array(0);
/** The top-k padding cell: token id 0 with this logprob. */
const TOPK_PAD_LOGPROB = -99999.0;

/** An aligned copy of `bytes` (protobufjs hands out views at arbitrary offsets). */
function alignedCopy(bytes: Uint8Array): ArrayBuffer {
  if (!LITTLE_ENDIAN_HOST) throw new Error('Lathe assumes a little-endian host for tensor bytes');
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return copy.buffer;
}

function bytesOf(values: Float32Array | BigInt64Array | Int32Array): Uint8Array {
  if (!LITTLE_ENDIAN_HOST) throw new Error('Lathe assumes a little-endian host for tensor bytes');
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

/** Reads packed values of a wire dtype, widening int32 → int64 and bfloat16 → float32 as the SDK does. */
function readValues(bytes: Bytes, dtype: number | undefined, what: string): Float32Array | BigInt64Array {
  const b = bytes ?? EMPTY;
  const info = DTYPE_INFO[dtype ?? 0];
  if (info === undefined) {
    throw new ProtoDecodeError(`${what}: ${dtype ? `unknown dtype ${dtype}` : 'dtype is unspecified'} (expected FLOAT32, INT64, INT32 or BFLOAT16)`);
  }
  if (b.length % info.bytes !== 0) {
    throw new ProtoDecodeError(`${what}: ${b.length} bytes is not a whole number of ${info.name} values`);
  }
  const buffer = alignedCopy(b);
  switch (dtype) {
    case DTYPE.FLOAT32:
      return new Float32Array(buffer);
    case DTYPE.INT64:
      return new BigInt64Array(buffer);
    case DTYPE.INT32:
      return BigInt64Array.from(new Int32Array(buffer), (v) => BigInt(v));
    default: {
      // bfloat16 is the top half of a float32.
      const halves = new Uint16Array(buffer);
      const out = new Float32Array(halves.length);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < halves.length; i++) bits[i] = halves[i]! << 16;
      return out;
    }
  }
}

function readInt32(bytes: Bytes, what: string): Int32Array {
  const b = bytes ?? EMPTY;
  if (b.length % 4 !== 0) throw new ProtoDecodeError(`${what}: ${b.length} bytes is not a whole number of int32 values`);
  return new Int32Array(alignedCopy(b));
}

function readFloat32(bytes: Bytes, what: string): Float32Array {
  const b = bytes ?? EMPTY;
  if (b.length % 4 !== 0) throw new ProtoDecodeError(`${what}: ${b.length} bytes is not a whole number of float32 values`);
  return new Float32Array(alignedCopy(b));
}

/** int64 byte array as numbers (indices/offsets: must be safe integers). */
function readIndices(bytes: Bytes, what: string): number[] {
  const b = bytes ?? EMPTY;
  if (b.length % 8 !== 0) throw new ProtoDecodeError(`${what}: ${b.length} bytes is not a whole number of int64 values`);
  return Array.from(new BigInt64Array(alignedCopy(b)), (v) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n)) throw new ProtoDecodeError(`${what}: value ${v} is out of range`);
    return n;
  });
}

function int64(value: Int64 | undefined, what: string): number {
  const n = value === undefined ? 0 : typeof value === 'number' ? value : value.toNumber();
  if (!Number.isSafeInteger(n)) throw new ProtoDecodeError(`${what}: ${n} is out of range`);
  return n;
}

function int32Tokens(tokens: readonly number[], what: string): Int32Array {
  const out = Int32Array.from(tokens);
  // Int32Array.from wraps silently, so compare back.
  for (let i = 0; i < out.length; i++) {
    if (out[i] !== tokens[i]) throw new RangeError(`${what}[${i}] = ${tokens[i]} is not an int32`);
  }
  return out;
}

function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

// ---------------------------------------------------------------------------------------------
// Tensor validation shared by the protobuf and JSON paths

function checkShape(shape: readonly number[], what: string): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new ProtoDecodeError(`${what}: shape ${formatShape(shape)} has an invalid dimension ${d}`);
  }
}

/** A dense tensor from flat values; no shape means 1-D. */
function denseTensor(values: Float32Array | BigInt64Array, shape: number[] | undefined, what: string): TensorData {
  const dtype = values instanceof BigInt64Array ? 'int64' : 'float32';
  if (shape === undefined || shape.length === 0) return { dtype, shape: [values.length], data: values };
  checkShape(shape, what);
  if (product(shape) !== values.length) {
    throw new ProtoDecodeError(`${what}: data has ${values.length} ${dtype} values but shape ${formatShape(shape)} needs ${product(shape)}`);
  }
  return { dtype, shape, data: values };
}

/** Checks a 2-D CSR structure against its dense shape and its number of stored values. */
function checkCsr(nnz: number, crow: readonly number[], col: readonly number[], shape: number[] | undefined, what: string): [number, number] {
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

/** Densifies a 2-D CSR tensor. Duplicate (row, col) entries are summed, as torch's `to_dense()` does. */
function densifyCsr(
  values: Float32Array | BigInt64Array,
  crow: readonly number[],
  col: readonly number[],
  shape: number[] | undefined,
  what: string,
): TensorData {
  const [rows, cols] = checkCsr(values.length, crow, col, shape, what);
  const size = rows * cols;
  const out = values instanceof BigInt64Array ? new BigInt64Array(size) : new Float32Array(size);
  for (let r = 0; r < rows; r++) {
    for (let j = crow[r]!; j < crow[r + 1]!; j++) {
      const c = col[j]!;
      if (out instanceof BigInt64Array) out[r * cols + c]! += (values as BigInt64Array)[j]!;
      else out[r * cols + c]! += (values as Float32Array)[j]!;
    }
  }
  return { dtype: out instanceof BigInt64Array ? 'int64' : 'float32', shape: shape!, data: out };
}

/**
 * The dense form of an int64 tensor in either layout, with `fill` in the cells a CSR tensor does
 * not store (the sum rule of {@link densifyCsr} would make 0, a real token id, out of nothing).
 *
 * @throws {ProtoDecodeError} when a CSR tensor stores one cell twice.
 * @example
 * denseIds({ dtype: 'int64', shape: [2, 2], data: BigInt64Array.of(7n), csr: { crow: [0, 1, 1], col: [1] } }, -1n, 't');
 * // int64 [2, 2]: [-1, 7, -1, -1]
 */
export function denseIds(t: LaidOutTensor, fill: bigint, what: string): TensorData {
  if (!t.csr || !(t.data instanceof BigInt64Array)) return t;
  const { crow, col }: CsrIndex = t.csr;
  const values: BigInt64Array = t.data;
  const [rows, cols] = t.shape as [number, number];
  const out = new BigInt64Array(rows * cols).fill(fill);
  const seen = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let j: number = crow[r]!; j < crow[r + 1]!; j++) {
      const cell = r * cols + col[j]!;
      if (seen[cell]) throw new ProtoDecodeError(`${what}: cell [${r}, ${col[j]}] is stored twice`);
      seen[cell] = 1;
      out[cell] = values[j]!;
    }
  }
  return { dtype: 'int64', shape: t.shape, data: out };
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

/** A protobuf `Tensor` in the layout it came in (CSR values stay sparse). */
function laidOutTensorFromProto(t: PbTensor | null, what: string): LaidOutTensor {
  const tensor = t ?? {};
  const shape = (tensor.shape ?? []).map((d, i) => int64(d, `${what}: shape[${i}]`));
  if (tensor.encoding === 'sparse_csr') {
    const sparse = tensor.sparse_csr ?? {};
    const values = readValues(sparse.values, tensor.dtype, `${what} (sparse values)`);
    const csr = { crow: readIndices(sparse.crow_indices, `${what}: crow_indices`), col: readIndices(sparse.col_indices, `${what}: col_indices`) };
    checkCsr(values.length, csr.crow, csr.col, shape, what);
    return { dtype: values instanceof BigInt64Array ? 'int64' : 'float32', shape, data: values, csr };
  }
  // No encoding at all is an empty dense tensor (proto3 cannot tell the two apart otherwise).
  return denseTensor(readValues(tensor.dense, tensor.dtype, what), shape, what);
}

function tensorFromProto(t: PbTensor | null, what: string): TensorData {
  const tensor = laidOutTensorFromProto(t, what);
  return tensor.csr ? densifyCsr(tensor.data, tensor.csr.crow, tensor.csr.col, tensor.shape, what) : tensor;
}

function tensorToProto(t: LaidOutTensor, what: string): PbTensor {
  checkTensor(t, what);
  const dtype = t.dtype === 'int64' ? DTYPE.INT64 : DTYPE.FLOAT32;
  if (t.csr) {
    const indices = (values: number[]): Uint8Array => bytesOf(BigInt64Array.from(values, (v) => BigInt(v)));
    return { sparse_csr: { values: bytesOf(t.data), crow_indices: indices(t.csr.crow), col_indices: indices(t.csr.col) }, dtype, shape: t.shape };
  }
  return { dense: bytesOf(t.data), dtype, shape: t.shape };
}

/** Encoder-side sanity check (a programming error, so a plain TypeError). */
function checkTensor(t: LaidOutTensor, what: string): void {
  const ok = t.dtype === 'int64' ? t.data instanceof BigInt64Array : t.dtype === 'float32' && t.data instanceof Float32Array;
  if (!ok) throw new TypeError(`${what}: dtype ${String(t.dtype)} does not match its ${t.data.constructor.name} data`);
  if (t.csr ? t.csr.col.length !== t.data.length : product(t.shape) !== t.data.length) {
    throw new TypeError(`${what}: shape ${formatShape(t.shape)} does not match ${t.data.length} values`);
  }
}

// ---------------------------------------------------------------------------------------------
// ForwardBackwardRequest

function decodeMessage<T>(type: protobuf.Type, body: Uint8Array): T {
  try {
    return type.decode(body) as unknown as T;
  } catch (e) {
    throw new ProtoDecodeError(`malformed protobuf ${type.name}: ${(e as Error).message}`);
  }
}

/** A decoded `ForwardBackwardRequest`'s address, with its content read (and checked) on demand. */
export interface ForwardBackwardEnvelope {
  modelId: string;
  seqId: number;
  forwardOnly: boolean;
  /** The datums, loss and config; throws {@link ProtoDecodeError} on bad content. */
  read(): Pick<ForwardBackwardRequestMsg, 'data' | 'lossFn' | 'lossFnConfig'>;
}

/**
 * Decodes a protobuf `ForwardBackwardRequest` body up to its address (model id, seq id): its
 * content is checked only by `read()`, so a route can refuse bad content in that seq id's place.
 * Provenance spans (`Datum` fields 3 and 4) are metadata: parsed and ignored.
 *
 * @throws {ProtoDecodeError} when the body is not a ForwardBackwardRequest, or seq_id is unset.
 * @example
 * const envelope = decodeForwardBackwardEnvelope(body);
 * const run = lookUp(envelope.modelId); // then, in the run's order:
 * const { data, lossFn, lossFnConfig } = envelope.read();
 */
export function decodeForwardBackwardEnvelope(body: Uint8Array): ForwardBackwardEnvelope {
  const msg = decodeMessage<PbForwardBackwardRequest>(ForwardBackwardRequestType, body);
  const seqId = msg.seq_id ?? 0;
  if (seqId < 1) throw new ProtoDecodeError(`seq_id must be >= 1, got ${seqId}`);
  return {
    modelId: msg.model_id ?? '',
    seqId,
    forwardOnly: msg.forward_only ?? false,
    read: () => ({ data: (msg.data ?? []).map((d, i) => datumFromProto(d, i)), lossFn: msg.loss_fn ?? '', lossFnConfig: lossFnConfigFromProto(msg) }),
  };
}

/**
 * Decodes a protobuf `ForwardBackwardRequest` body (after any zstd decompression).
 *
 * Text chunks are concatenated; image and dmel chunks are refused. Sparse tensors are densified,
 * INT32 widens to int64 and BFLOAT16 to float32. `loss_fn_config_v2` wins over the legacy map when
 * non-empty; a text value in it is refused (no loss of this server takes text).
 *
 * @throws {ProtoDecodeError} on any malformed or unsupported content.
 * @example
 * const msg = decodeForwardBackwardRequest(new Uint8Array(request.body as Buffer));
 * msg.data[0]?.lossFnInputs['target_tokens']?.shape; // [N]
 */
export function decodeForwardBackwardRequest(body: Uint8Array): ForwardBackwardRequestMsg {
  const { read, ...address } = decodeForwardBackwardEnvelope(body);
  return { ...address, ...read() };
}

function datumFromProto(d: PbDatum, i: number): WireDatum {
  const modelInput: number[] = [];
  (d.model_input ?? []).forEach((chunk, j) => {
    const where = `data[${i}].model_input[${j}]`;
    switch (chunk.chunk) {
      case 'encoded_text': {
        for (const t of readInt32(chunk.encoded_text?.tokens, where)) {
          if (t < 0) throw new ProtoDecodeError(`${where}: token id ${t} is negative`);
          modelInput.push(t);
        }
        break;
      }
      case 'image':
        throw new ProtoDecodeError(`${where}: image chunks are not supported by this server`);
      case 'dmel':
        throw new ProtoDecodeError(`${where}: dmel (audio) chunks are not supported by this server`);
      default:
        throw new ProtoDecodeError(`${where}: unknown chunk kind (empty, or newer than this server)`);
    }
  });
  const lossFnInputs = Object.fromEntries(
    Object.entries(d.loss_fn_inputs ?? {}).map(([key, t]) => [key, tensorFromProto(t, `data[${i}].loss_fn_inputs['${key}']`)]),
  );
  return { modelInput, lossFnInputs };
}

function lossFnConfigFromProto(msg: PbForwardBackwardRequest): Record<string, number> {
  const v2 = Object.entries(msg.loss_fn_config_v2 ?? {});
  if (v2.length === 0) return { ...(msg.loss_fn_config ?? {}) };
  const config: Record<string, number> = {};
  for (const [key, v] of v2) {
    if (v?.value === 'number') config[key] = v.number ?? 0;
    else if (v?.value === 'text') {
      throw new ProtoDecodeError(`loss_fn_config_v2['${key}'] is text (${JSON.stringify(v.text)}); this server's losses take numbers only`);
    } else throw new ProtoDecodeError(`loss_fn_config_v2['${key}'] has no value`);
  }
  return config;
}

/**
 * Encodes a `ForwardBackwardRequest` the way the Python SDK does: one `EncodedTextChunk` of int32 LE
 * tokens per datum, dense tensors with dtype and shape. The config goes in both `loss_fn_config_v2`
 * and the legacy map, as SDK ≥ 0.26.2 sends it (older servers read the legacy map).
 *
 * @example
 * const body = encodeForwardBackwardRequest({
 *   modelId: 'S:train:0', seqId: 1, lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: false,
 *   data: [{ modelInput: [1, 2, 3], lossFnInputs: {
 *     target_tokens: { dtype: 'int64', shape: [3], data: BigInt64Array.of(2n, 3n, 4n) },
 *     weights: { dtype: 'float32', shape: [3], data: Float32Array.of(1, 1, 1) } } }],
 * });
 */
export function encodeForwardBackwardRequest(msg: ForwardBackwardRequestMsg): Uint8Array {
  const config = Object.entries(msg.lossFnConfig);
  // Defaults are left unset so the bytes match Python's (proto3 omits them).
  return ForwardBackwardRequestType.encode({
    model_id: msg.modelId || undefined,
    seq_id: msg.seqId || undefined,
    data: msg.data.map((d, i) => ({
      model_input: [{ encoded_text: { tokens: d.modelInput.length ? bytesOf(int32Tokens(d.modelInput, `data[${i}].modelInput`)) : undefined } }],
      loss_fn_inputs: Object.fromEntries(
        Object.entries(d.lossFnInputs).map(([key, t]) => [key, tensorToProto(t, `data[${i}].lossFnInputs['${key}']`)]),
      ),
    })),
    loss_fn: msg.lossFn || undefined,
    loss_fn_config: Object.fromEntries(config),
    forward_only: msg.forwardOnly || undefined,
    loss_fn_config_v2: Object.fromEntries(config.map(([k, v]) => [k, { number: v }])),
  }).finish();
}

// ---------------------------------------------------------------------------------------------
// ForwardBackwardOutput

/**
 * Encodes a forward / forward_backward result (`loss_fn_output_type` "ArrayRecord").
 *
 * Consecutive datums whose fields agree in name, dtype and trailing shape share one `ArrayRecord`;
 * a change (e.g. ragged (N, K) outputs with different K) starts a new record, in order, because the
 * SDK applies one dtype and trailing shape per record field. Offsets are int64 LE byte offsets.
 *
 * @example
 * reply.type('application/x-protobuf').send(encodeForwardBackwardOutput({
 *   lossFnOutputs: [{ logprobs: { dtype: 'float32', shape: [3], data: Float32Array.of(-1, -2, -3) } }],
 *   metrics: { 'loss:sum': 6 },
 * }));
 */
export function encodeForwardBackwardOutput(out: ForwardBackwardOutputMsg): Uint8Array {
  const groups: { signature: string; datums: Record<string, TensorData>[] }[] = [];
  out.lossFnOutputs.forEach((datum, i) => {
    for (const [key, t] of Object.entries(datum)) {
      checkTensor(t, `lossFnOutputs[${i}]['${key}']`);
      if (t.shape.length === 0) throw new TypeError(`lossFnOutputs[${i}]['${key}']: 0-d tensors cannot be sent (the wire needs a first dimension)`);
      if (t.shape.slice(1).includes(0)) throw new TypeError(`lossFnOutputs[${i}]['${key}']: trailing dimensions must be non-zero`);
    }
    const signature = JSON.stringify(
      Object.keys(datum)
        .sort()
        .map((k) => [k, datum[k]!.dtype, datum[k]!.shape.slice(1)]),
    );
    const last = groups[groups.length - 1];
    if (last && last.signature === signature) last.datums.push(datum);
    else groups.push({ signature, datums: [datum] });
  });
  return ForwardBackwardOutputType.encode({
    loss_fn_output_type: 'ArrayRecord',
    loss_fn_outputs: groups.map(({ datums }) => ({
      type_tag: 'ArrayRecord',
      fields: Object.fromEntries(Object.keys(datums[0]!).map((key) => [key, batchField(datums.map((d) => d[key]!))])),
      num_datums: datums.length,
    })),
    metrics: out.metrics,
  }).finish();
}

function batchField(tensors: TensorData[]): PbBatchedTensor {
  const first = tensors[0]!;
  const offsets = new BigInt64Array(tensors.length + 1);
  let total = 0;
  tensors.forEach((t, i) => {
    total += t.data.byteLength;
    offsets[i + 1] = BigInt(total);
  });
  const data = new Uint8Array(total);
  tensors.forEach((t, i) => data.set(bytesOf(t.data), Number(offsets[i])));
  const trailing = first.shape.slice(1);
  return {
    data,
    offsets: bytesOf(offsets),
    dtype: first.dtype === 'int64' ? DTYPE.INT64 : DTYPE.FLOAT32,
    trailing_shape: trailing.length ? trailing : undefined,
  } as PbBatchedTensor;
}

/**
 * Decodes a `ForwardBackwardOutput` with the SDK's rules: records concatenate in order, `num_datums`
 * is authoritative, each datum's first dimension is its element count over the trailing shape.
 *
 * @throws {ProtoDecodeError} on malformed records.
 * @example
 * const { lossFnOutputs, metrics } = decodeForwardBackwardOutput(bytes);
 * lossFnOutputs[0]?.['logprobs']?.shape; // [N]
 */
export function decodeForwardBackwardOutput(body: Uint8Array): ForwardBackwardOutputMsg {
  const msg = decodeMessage<PbForwardBackwardOutput>(ForwardBackwardOutputType, body);
  const lossFnOutputs: Record<string, TensorData>[] = [];
  (msg.loss_fn_outputs ?? []).forEach((record, r) => {
    const n = int64(record.num_datums, `loss_fn_outputs[${r}].num_datums`);
    if (n < 0 || n > MAX_DENSE_ELEMENTS) throw new ProtoDecodeError(`loss_fn_outputs[${r}].num_datums ${n} is out of range`);
    const datums: Record<string, TensorData>[] = Array.from({ length: n }, () => ({}));
    for (const [key, field] of Object.entries(record.fields ?? {})) {
      const what = `loss_fn_outputs[${r}].fields['${key}']`;
      const bt = field ?? {};
      const data = bt.data ?? EMPTY;
      const offsets = readIndices(bt.offsets, `${what}.offsets`);
      if (offsets.length !== n + 1) throw new ProtoDecodeError(`${what}: ${offsets.length} offsets for ${n} datums (expected ${n + 1})`);
      const trailing = (bt.trailing_shape ?? []).map((d, i) => int64(d, `${what}.trailing_shape[${i}]`));
      checkShape(trailing, what);
      const per = product(trailing);
      if (per === 0) throw new ProtoDecodeError(`${what}: trailing_shape ${formatShape(trailing)} has a zero dimension`);
      for (let i = 0; i < n; i++) {
        const [start, end] = [offsets[i]!, offsets[i + 1]!];
        if (start < 0 || end < start || end > data.length) {
          throw new ProtoDecodeError(`${what}: offsets ${start}..${end} for datum ${i} are outside the ${data.length}-byte data`);
        }
        const values = readValues(data.subarray(start, end), bt.dtype, `${what} datum ${i}`);
        if (values.length % per !== 0) {
          throw new ProtoDecodeError(`${what}: datum ${i} has ${values.length} values, not a multiple of trailing shape ${formatShape(trailing)}`);
        }
        datums[i]![key] = { dtype: values instanceof BigInt64Array ? 'int64' : 'float32', shape: [values.length / per, ...trailing], data: values };
      }
    }
    lossFnOutputs.push(...datums);
  });
  return { lossFnOutputs, metrics: { ...(msg.metrics ?? {}) } };
}

// ---------------------------------------------------------------------------------------------
// SampleResponse

const STOP_REASONS = ['stop', 'length'] as const;

/** Top-k rows as a `TopkLogprobs` message, padded to the widest row with `(0, -99999.0)` (K >= 1). */
function encodeTopk(rows: TopkRows, what: string): PbTopk {
  const k = Math.max(1, ...rows.map((row) => row?.length ?? 0));
  const ids = new Int32Array(rows.length * k);
  const lps = new Float32Array(rows.length * k).fill(TOPK_PAD_LOGPROB);
  rows.forEach((row, i) =>
    row?.forEach(([id, lp], j) => {
      ids.set(int32Tokens([id], `${what}[${i}][${j}]`), i * k + j);
      lps[i * k + j] = lp;
    }),
  );
  return { token_ids: bytesOf(ids), logprobs: bytesOf(lps), k, length: rows.length };
}

/** A `TopkLogprobs` message as rows: a row starting with the padding cell is `null`, trailing padding is trimmed. */
function decodeTopk(topk: PbTopk, what: string): TopkRows {
  const [n, k] = [topk.length ?? 0, topk.k ?? 0];
  const ids = readInt32(topk.token_ids, `${what}.token_ids`);
  const lps = readFloat32(topk.logprobs, `${what}.logprobs`);
  if (ids.length !== n * k || lps.length !== n * k) {
    throw new ProtoDecodeError(`${what}: ${ids.length} token ids and ${lps.length} logprobs for ${n} x ${k}`);
  }
  const isPad = (c: number): boolean => ids[c] === 0 && lps[c] === TOPK_PAD_LOGPROB;
  return Array.from({ length: n }, (_, i) => {
    if (k === 0 || isPad(i * k)) return null;
    let len = k;
    while (len > 0 && isPad(i * k + len - 1)) len--;
    return Array.from({ length: len }, (_, j): [number, number] => [ids[i * k + j]!, lps[i * k + j]!]);
  });
}

/**
 * Encodes an asample result. Null prompt logprobs become NaN; top-k rows (prompt and sampled) are
 * padded to the longest row with `(0, -99999.0)` and a null row is all padding (K is at least 1 so
 * such rows exist). `targetPromptLogprobs` keeps its layout (dense or CSR).
 *
 * @example
 * encodeSampleResponse({
 *   sequences: [{ stopReason: 'stop', tokens: [5, 151645], logprobs: [-0.1, -0.2] }],
 *   promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0,
 * });
 */
export function encodeSampleResponse(r: SampleResponseMsg): Uint8Array {
  return SampleResponseType.encode({
    sequences: r.sequences.map((s, i) => {
      if (s.logprobs !== null && s.logprobs.length !== s.tokens.length) {
        throw new RangeError(`sequences[${i}]: ${s.logprobs.length} logprobs for ${s.tokens.length} tokens`);
      }
      return {
        stop_reason: s.stopReason === 'length' ? 1 : undefined,
        tokens: s.tokens.length ? bytesOf(int32Tokens(s.tokens, `sequences[${i}].tokens`)) : undefined,
        logprobs: s.logprobs === null ? undefined : bytesOf(Float32Array.from(s.logprobs)),
        topk_sampled_logprobs: s.topkLogprobs ? encodeTopk(s.topkLogprobs, `sequences[${i}].topkLogprobs`) : undefined,
      };
    }),
    prompt_logprobs: r.promptLogprobs === null ? undefined : bytesOf(Float32Array.from(r.promptLogprobs, (v) => v ?? NaN)),
    topk_prompt_logprobs: r.topkPromptLogprobs === null ? undefined : encodeTopk(r.topkPromptLogprobs, 'topkPromptLogprobs'),
    prompt_cache_hit_tokens: r.promptCacheHitTokens || undefined,
    target_prompt_logprobs: r.targetPromptLogprobs ? tensorToProto(r.targetPromptLogprobs, 'targetPromptLogprobs') : undefined,
    prompt_alt_tokens: r.promptAltTokens
      ? { tokens: tensorToProto(r.promptAltTokens.tokens, 'promptAltTokens.tokens'), logprobs: tensorToProto(r.promptAltTokens.logprobs, 'promptAltTokens.logprobs') }
      : undefined,
  }).finish();
}

/**
 * Decodes an asample result with the SDK's rules: empty sequence logprobs are `null`, NaN prompt
 * logprobs are `null`, a top-k row starting with the padding cell is `null` and trailing padding is
 * trimmed. Fields added after SDK 0.25 are set only when present; a CSR tensor stays CSR.
 *
 * @throws {ProtoDecodeError} on an unknown stop reason or inconsistent array sizes.
 * @example
 * const { sequences } = decodeSampleResponse(bytes);
 * sequences[0]?.tokens;
 */
export function decodeSampleResponse(body: Uint8Array): SampleResponseMsg {
  const msg = decodeMessage<PbSampleResponse>(SampleResponseType, body);
  const sequences = (msg.sequences ?? []).map((s, i): SampledSequenceMsg => {
    const stopReason = STOP_REASONS[s.stop_reason ?? 0];
    if (stopReason === undefined) throw new ProtoDecodeError(`sequences[${i}]: unknown stop_reason ${s.stop_reason}`);
    const tokens = Array.from(readInt32(s.tokens, `sequences[${i}].tokens`));
    const lps = readFloat32(s.logprobs, `sequences[${i}].logprobs`);
    if (lps.length > 0 && lps.length !== tokens.length) {
      throw new ProtoDecodeError(`sequences[${i}]: ${lps.length} logprobs for ${tokens.length} tokens`);
    }
    const seq: SampledSequenceMsg = { stopReason, tokens, logprobs: lps.length > 0 ? Array.from(lps) : null };
    if (s.topk_sampled_logprobs != null) seq.topkLogprobs = decodeTopk(s.topk_sampled_logprobs, `sequences[${i}].topk_sampled_logprobs`);
    return seq;
  });
  const promptLogprobs =
    msg.prompt_logprobs == null ? null : Array.from(readFloat32(msg.prompt_logprobs, 'prompt_logprobs'), (v) => (Number.isNaN(v) ? null : v));
  const topkPromptLogprobs = msg.topk_prompt_logprobs == null ? null : decodeTopk(msg.topk_prompt_logprobs, 'topk_prompt_logprobs');
  const out: SampleResponseMsg = { sequences, promptLogprobs, topkPromptLogprobs, promptCacheHitTokens: msg.prompt_cache_hit_tokens ?? 0 };
  if (msg.target_prompt_logprobs != null) out.targetPromptLogprobs = laidOutTensorFromProto(msg.target_prompt_logprobs, 'target_prompt_logprobs');
  const alt = msg.prompt_alt_tokens;
  if (alt != null) {
    out.promptAltTokens = { tokens: tensorFromProto(alt.tokens ?? null, 'prompt_alt_tokens.tokens'), logprobs: tensorFromProto(alt.logprobs ?? null, 'prompt_alt_tokens.logprobs') };
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// JSON forms (§6.1–6.2)

/** Dtype of a plain number list by key, as the SDK's `_KEY_TO_TYPE`. */
function dtypeForKey(key: string): TensorData['dtype'] {
  return key === 'target_tokens' ? 'int64' : 'float32';
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function numbersToValues(values: unknown[], dtype: TensorData['dtype'], what: string): Float32Array | BigInt64Array {
  if (dtype === 'int64') {
    return BigInt64Array.from(values, (v, i) => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new ProtoDecodeError(`${what}: element ${i} (${JSON.stringify(v)}) is not an integer`);
      return BigInt(v);
    });
  }
  return Float32Array.from(values, (v, i) => {
    if (typeof v !== 'number') throw new ProtoDecodeError(`${what}: element ${i} (${JSON.stringify(v)}) is not a number`);
    return v;
  });
}

function indexList(value: unknown, what: string): number[] {
  if (!Array.isArray(value)) throw new ProtoDecodeError(`${what} must be a list of integers`);
  return value.map((v, i) => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new ProtoDecodeError(`${what}[${i}] (${JSON.stringify(v)}) is not an integer`);
    return v;
  });
}

/** Flattens a (possibly nested) rectangular list, returning its values and shape. */
function flattenNested(value: unknown[], what: string): { flat: unknown[]; shape: number[] } {
  const shape: number[] = [];
  for (let level: unknown = value; Array.isArray(level); level = level[0]) shape.push(level.length);
  const flat: unknown[] = [];
  const walk = (v: unknown, depth: number): void => {
    if (depth === shape.length) {
      if (Array.isArray(v)) throw new ProtoDecodeError(`${what}: nested list is ragged`);
      flat.push(v);
      return;
    }
    if (!Array.isArray(v) || v.length !== shape[depth]) throw new ProtoDecodeError(`${what}: nested list is ragged`);
    for (const x of v) walk(x, depth + 1);
  };
  walk(value, 0);
  return { flat, shape };
}

/** A JSON tensor (TensorData or a nested number list) in the layout it came in. */
function laidOutTensorFromJson(value: unknown, what: string, listDtype: TensorData['dtype']): LaidOutTensor {
  if (Array.isArray(value)) {
    const { flat, shape } = flattenNested(value, what);
    return denseTensor(numbersToValues(flat, listDtype, what), shape, what);
  }
  if (!isRecord(value)) throw new ProtoDecodeError(`${what} must be a TensorData object or a list of numbers`);
  const { data, dtype, shape, sparse_crow_indices: crow, sparse_col_indices: col } = value;
  if (dtype !== 'int64' && dtype !== 'float32') throw new ProtoDecodeError(`${what}: unknown dtype ${JSON.stringify(dtype)} (expected "int64" or "float32")`);
  if (!Array.isArray(data)) throw new ProtoDecodeError(`${what}.data must be a flat list of numbers`);
  const values = numbersToValues(data, dtype, what);
  const dims = shape == null ? undefined : indexList(shape, `${what}.shape`);
  if (crow == null && col == null) return denseTensor(values, dims, what);
  if (crow == null || col == null) throw new ProtoDecodeError(`${what}: sparse_crow_indices and sparse_col_indices must be given together`);
  const csr = { crow: indexList(crow, `${what}.sparse_crow_indices`), col: indexList(col, `${what}.sparse_col_indices`) };
  checkCsr(values.length, csr.crow, csr.col, dims, what);
  return { dtype, shape: dims!, data: values, csr };
}

/**
 * Reads one `loss_fn_inputs` value from a JSON body: Tinker's `TensorData`
 * (`{data, dtype, shape?, sparse_crow_indices?, sparse_col_indices?}`) or a plain (nested) number
 * list, whose dtype comes from the key (`target_tokens` → int64, anything else float32).
 *
 * @throws {ProtoDecodeError} with the same checks as the protobuf path.
 * @example
 * tensorFromJson({ data: [1, 2], dtype: 'int64', shape: [2] }, 'target_tokens'); // int64 [2]
 * tensorFromJson([0.5, 1], 'weights'); // float32 [2]
 */
export function tensorFromJson(value: unknown, key: string): TensorData {
  const what = `loss_fn_inputs['${key}']`;
  const t = laidOutTensorFromJson(value, what, dtypeForKey(key));
  return t.csr ? densifyCsr(t.data, t.csr.crow, t.csr.col, t.shape, what) : t;
}

/**
 * Reads a JSON int64 token-id tensor (`TensorData`, dense or CSR, or a nested list) keeping its
 * layout, e.g. `asample`'s `target_prompt_logprobs`. `what` names the field in errors.
 *
 * @throws {ProtoDecodeError} on a malformed tensor or a dtype other than int64.
 * @example
 * idsFromJson({ data: [5], dtype: 'int64', shape: [2, 1], sparse_crow_indices: [0, 0, 1], sparse_col_indices: [0] }, 'target_prompt_logprobs');
 */
export function idsFromJson(value: unknown, what: string): LaidOutTensor {
  const t = laidOutTensorFromJson(value, what, 'int64');
  if (t.dtype !== 'int64') throw new ProtoDecodeError(`${what}: dtype must be "int64" (token ids), got "${t.dtype}"`);
  return t;
}

/**
 * Reads a JSON `ModelInput` (`{chunks: [{type: "encoded_text", tokens: [...]}, ...]}`) into its
 * concatenated tokens. Image, image_asset_pointer and dmel chunks are refused.
 *
 * @throws {ProtoDecodeError} on any other shape or chunk type.
 * @example
 * modelInputFromJson({ chunks: [{ type: 'encoded_text', tokens: [1, 2] }, { type: 'encoded_text', tokens: [3] }] }); // [1, 2, 3]
 */
export function modelInputFromJson(value: unknown): number[] {
  if (!isRecord(value) || !Array.isArray(value['chunks'])) throw new ProtoDecodeError('model_input must be an object with a "chunks" list');
  const tokens: number[] = [];
  value['chunks'].forEach((chunk: unknown, j) => {
    const where = `model_input.chunks[${j}]`;
    if (!isRecord(chunk)) throw new ProtoDecodeError(`${where} must be an object`);
    // Older SDKs may leave out `type` on text chunks (its pydantic default).
    const type = chunk['type'] ?? ('tokens' in chunk ? 'encoded_text' : undefined);
    if (type === 'image' || type === 'image_asset_pointer') throw new ProtoDecodeError(`${where}: image chunks are not supported by this server`);
    if (type === 'dmel') throw new ProtoDecodeError(`${where}: dmel (audio) chunks are not supported by this server`);
    if (type !== 'encoded_text') throw new ProtoDecodeError(`${where}: unknown chunk type ${JSON.stringify(type)}`);
    for (const t of indexList(chunk['tokens'], `${where}.tokens`)) {
      if (t < 0 || t > 0x7fffffff) throw new ProtoDecodeError(`${where}: token id ${t} is out of range`);
      tokens.push(t);
    }
  });
  return tokens;
}
