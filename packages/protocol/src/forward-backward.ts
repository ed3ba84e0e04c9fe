/**
 * @module `ForwardBackwardRequest` (the body of `POST /api/v1/forward_backward` and `forward`) and
 * `ForwardBackwardOutput` (its future's result), both ways. The rules follow the official SDK's
 * encoder and decoder (`proto/response_conv.py`): int32 token chunks, dense tensors with dtype and
 * shape, per-record dtype and trailing shape, int64 byte offsets.
 */
import { readRawTensor, tensorFromRaw, writeTensorMessage, type RawTensor } from './tensor-message.js';
import { checkShape, checkTensor, densifyCsr, formatShape, MAX_DENSE_ELEMENTS, product, readValues, wireDtype, type TensorData, type TensorIn } from './tensor.js';
import { int32Tokens, leBytes, ProtoDecodeError, readIndices, readInt32s, Reader, Writer } from './wire.js';

// ---------------------------------------------------------------------------------------------
// Types

/** A model-input chunk to encode (decoders accept text chunks only). */
export type ChunkIn =
  | { kind: 'encoded_text'; tokens: readonly number[] | Int32Array }
  | { kind: 'image'; data: Uint8Array; format: string; expectedTokens?: number | undefined };

/** A datum to encode: its chunks, or `modelInput` tokens as one text chunk. */
export type DatumIn = { lossFnInputs: Readonly<Record<string, TensorIn>> } & ({ chunks: readonly ChunkIn[] } | { modelInput: readonly number[] });

/** One decoded training example: `modelInput` is the concatenation of its `encoded_text` chunks. */
export interface WireDatum {
  modelInput: number[];
  lossFnInputs: Record<string, TensorData>;
}

/** A `ForwardBackwardRequest` (decoded, its datums are {@link WireDatum}s). */
export interface ForwardBackwardRequestMsg<D = WireDatum> {
  modelId: string;
  seqId: number;
  data: D[];
  lossFn: string;
  lossFnConfig: Record<string, number>;
  forwardOnly: boolean;
}

/** A `ForwardBackwardRequest` to encode. */
export type ForwardBackwardRequestIn = Omit<ForwardBackwardRequestMsg, 'data' | 'lossFnConfig'> & {
  data: readonly DatumIn[];
  lossFnConfig: Readonly<Record<string, number>>;
};

/** The result of a forward / forward_backward future: per-datum outputs in input order, plus metrics. */
export interface ForwardBackwardOutputMsg {
  lossFnOutputs: Record<string, TensorData>[];
  metrics: Record<string, number>;
}

/** A decoded `ForwardBackwardOutput`: also its output type (the class name after the last ':'). */
export interface DecodedForwardBackwardOutput extends ForwardBackwardOutputMsg {
  lossFnOutputType: string;
}

// ---------------------------------------------------------------------------------------------
// ForwardBackwardRequest

function writeChunk(c: ChunkIn, what: string): Writer {
  const w = new Writer();
  const inner = new Writer();
  if (c.kind === 'encoded_text') {
    if (c.tokens.length > 0) inner.bytes(1, leBytes(int32Tokens(c.tokens, what)));
    w.message(1, inner);
  } else {
    if (c.data.length > 0) inner.bytes(1, c.data);
    if (c.format) inner.string(2, c.format);
    if (c.expectedTokens !== undefined) inner.uint(3, c.expectedTokens);
    w.message(2, inner);
  }
  return w;
}

/**
 * Encodes a `ForwardBackwardRequest` the way the Python SDK does (byte for byte, given sorted map
 * keys): int32 LE token chunks, dense tensors with dtype and shape, proto3 defaults left out. The
 * config goes in both the legacy map and `loss_fn_config_v2`, as SDK ≥ 0.26.2 sends it (older
 * servers read the legacy map).
 *
 * @throws {RangeError} on a token id that is not an int32; {@link TypeError} on an inconsistent tensor.
 * @example
 * const body = encodeForwardBackwardRequest({
 *   modelId: 'S:train:0', seqId: 1, lossFn: 'cross_entropy', lossFnConfig: {}, forwardOnly: false,
 *   data: [{ modelInput: [1, 2, 3], lossFnInputs: {
 *     target_tokens: { dtype: 'int64', shape: [3], data: BigInt64Array.of(2n, 3n, 4n) } } }],
 * });
 */
export function encodeForwardBackwardRequest(msg: ForwardBackwardRequestIn): Uint8Array {
  const w = new Writer();
  if (msg.modelId) w.string(1, msg.modelId);
  if (msg.seqId) w.uint(2, msg.seqId);
  msg.data.forEach((d, i) => {
    const dw = new Writer();
    if ('chunks' in d) d.chunks.forEach((c, j) => dw.message(1, writeChunk(c, `data[${i}].modelInput.chunks[${j}].tokens`)));
    else dw.message(1, writeChunk({ kind: 'encoded_text', tokens: d.modelInput }, `data[${i}].modelInput`));
    for (const [key, t] of Object.entries(d.lossFnInputs)) {
      dw.mapEntry(2, key, (e) => e.message(2, writeTensorMessage(t, `data[${i}].lossFnInputs['${key}']`)));
    }
    w.message(3, dw);
  });
  if (msg.lossFn) w.string(4, msg.lossFn);
  const config = Object.entries(msg.lossFnConfig);
  for (const [key, value] of config) w.mapEntry(5, key, (e) => e.double(2, value));
  if (msg.forwardOnly) w.uint(6, 1);
  for (const [key, value] of config) {
    w.mapEntry(7, key, (e) => {
      const v = new Writer();
      v.double(1, value);
      e.message(2, v);
    });
  }
  return w.finish();
}

/** A decoded `ForwardBackwardRequest`'s address, with its content read (and checked) on demand. */
export interface ForwardBackwardEnvelope {
  modelId: string;
  seqId: number;
  forwardOnly: boolean;
  /** The datums, loss and config; throws {@link ProtoDecodeError} on bad content. */
  read(): Pick<ForwardBackwardRequestMsg, 'data' | 'lossFn' | 'lossFnConfig'>;
}

type RawChunk = { kind: 'encoded_text'; tokens: Uint8Array } | { kind: 'image' | 'dmel' | undefined };
type RawConfigValue = { number: number } | { text: string } | undefined;

function readChunk(r: Reader): RawChunk {
  let chunk: RawChunk = { kind: undefined };
  for (const [field, wt] of r.fields()) {
    if (field === 1 && wt === 2) {
      const t = r.message();
      let tokens: Uint8Array = new Uint8Array(0);
      for (const [f, w] of t.fields()) {
        if (f === 1 && w === 2) tokens = t.bytes();
        else t.skip(w);
      }
      chunk = { kind: 'encoded_text', tokens };
    } else if ((field === 2 || field === 3) && wt === 2) {
      r.skip(wt);
      chunk = { kind: field === 2 ? 'image' : 'dmel' };
    } else r.skip(wt);
  }
  return chunk;
}

function readConfigValue(r: Reader, wt: number): RawConfigValue {
  if (wt !== 2) return (r.skip(wt), undefined);
  const v = r.message();
  let value: RawConfigValue;
  for (const [field, w] of v.fields()) {
    if (field === 1 && w === 1) value = { number: v.double() };
    else if (field === 2 && w === 2) value = { text: v.string() };
    else v.skip(w);
  }
  return value;
}

function datumFromChunks(chunks: RawChunk[], i: number): number[] {
  const modelInput: number[] = [];
  chunks.forEach((chunk, j) => {
    const where = `data[${i}].model_input[${j}]`;
    switch (chunk.kind) {
      case 'encoded_text':
        for (const t of readInt32s(chunk.tokens, where)) {
          if (t < 0) throw new ProtoDecodeError(`${where}: token id ${t} is negative`);
          modelInput.push(t);
        }
        break;
      case 'image':
        throw new ProtoDecodeError(`${where}: image chunks are not supported by this server`);
      case 'dmel':
        throw new ProtoDecodeError(`${where}: dmel (audio) chunks are not supported by this server`);
      default:
        throw new ProtoDecodeError(`${where}: unknown chunk kind (empty, or newer than this server)`);
    }
  });
  return modelInput;
}

function lossFnConfig(legacy: Record<string, number>, v2: [string, RawConfigValue][]): Record<string, number> {
  if (v2.length === 0) return legacy;
  const config: Record<string, number> = {};
  for (const [key, v] of v2) {
    if (v && 'number' in v) config[key] = v.number;
    else if (v) throw new ProtoDecodeError(`loss_fn_config_v2['${key}'] is text (${JSON.stringify(v.text)}); this server's losses take numbers only`);
    else throw new ProtoDecodeError(`loss_fn_config_v2['${key}'] has no value`);
  }
  return config;
}

/**
 * Decodes a protobuf `ForwardBackwardRequest` body up to its address (model id, seq id). The whole
 * message is parsed here (a malformed one is refused at once), but its content is converted and
 * checked only by `read()`, so a route can refuse bad content in that seq id's place. Provenance
 * spans (`Datum` fields 3 and 4) are metadata: skipped.
 *
 * @throws {ProtoDecodeError} when the body is not a ForwardBackwardRequest, or seq_id is unset.
 * @example
 * const envelope = decodeForwardBackwardEnvelope(body);
 * const run = lookUp(envelope.modelId); // then, in the run's order:
 * const { data, lossFn, lossFnConfig } = envelope.read();
 */
export function decodeForwardBackwardEnvelope(body: Uint8Array): ForwardBackwardEnvelope {
  const r = new Reader(body, 'ForwardBackwardRequest');
  let [modelId, seqId, lossFn, forwardOnly] = ['', 0, '', false];
  const datums: { chunks: RawChunk[]; inputs: [string, RawTensor | undefined][] }[] = [];
  const legacy: Record<string, number> = {};
  const v2: [string, RawConfigValue][] = [];
  for (const [field, wt] of r.fields()) {
    if (field === 1 && wt === 2) modelId = r.string();
    else if (field === 2 && wt === 0) seqId = r.varint();
    else if (field === 3 && wt === 2) {
      const d = r.message();
      const datum: (typeof datums)[number] = { chunks: [], inputs: [] };
      for (const [f, w] of d.fields()) {
        if (f === 1 && w === 2) datum.chunks.push(readChunk(d.message()));
        else if (f === 2 && w === 2) datum.inputs.push(d.mapEntry((e, ew) => (ew === 2 ? readRawTensor(e.message(), 'loss_fn_inputs') : (e.skip(ew), undefined)), undefined));
        else d.skip(w);
      }
      datums.push(datum);
    } else if (field === 4 && wt === 2) lossFn = r.string();
    else if (field === 5 && wt === 2) {
      const [key, value] = r.mapEntry((e, w) => (w === 1 ? e.double() : (e.skip(w), 0)), 0);
      legacy[key] = value;
    } else if (field === 6 && wt === 0) forwardOnly = r.varint() !== 0;
    else if (field === 7 && wt === 2) v2.push(r.mapEntry(readConfigValue, undefined));
    else r.skip(wt);
  }
  if (seqId < 1) throw new ProtoDecodeError(`seq_id must be >= 1, got ${seqId}`);
  return {
    modelId,
    seqId,
    forwardOnly,
    read: () => ({
      data: datums.map((d, i) => ({
        modelInput: datumFromChunks(d.chunks, i),
        lossFnInputs: Object.fromEntries(d.inputs.map(([key, t]) => [key, densifyCsr(tensorFromRaw(t, `data[${i}].loss_fn_inputs['${key}']`))])),
      })),
      lossFn,
      lossFnConfig: lossFnConfig(legacy, v2),
    }),
  };
}

/**
 * Decodes a protobuf `ForwardBackwardRequest` body (after any zstd decompression). Text chunks
 * are concatenated; image and dmel chunks are refused. Sparse tensors are densified, INT32 widens
 * to int64 and BFLOAT16 to float32. `loss_fn_config_v2` wins over the legacy map when non-empty; a
 * text value in it is refused (no loss of this server takes text).
 *
 * @throws {ProtoDecodeError} on any malformed or unsupported content.
 * @example
 * const msg = decodeForwardBackwardRequest(body);
 * msg.data[0]?.lossFnInputs['target_tokens']?.shape; // [N]
 */
export function decodeForwardBackwardRequest(body: Uint8Array): ForwardBackwardRequestMsg {
  const { read, ...address } = decodeForwardBackwardEnvelope(body);
  return { ...address, ...read() };
}

// ---------------------------------------------------------------------------------------------
// ForwardBackwardOutput

/**
 * Encodes a forward / forward_backward result (`loss_fn_output_type` "ArrayRecord"). Consecutive
 * datums whose fields agree in name, dtype and trailing shape share one `ArrayRecord`; a change
 * (e.g. ragged (N, K) outputs with different K) starts a new record, in order, because the SDK
 * applies one dtype and trailing shape per record field.
 *
 * @throws {TypeError} on an inconsistent, 0-d, or zero-trailing-dimension tensor.
 * @example
 * encodeForwardBackwardOutput({
 *   lossFnOutputs: [{ logprobs: { dtype: 'float32', shape: [3], data: Float32Array.of(-1, -2, -3) } }],
 *   metrics: { 'loss:sum': 6 },
 * });
 */
export function encodeForwardBackwardOutput(out: ForwardBackwardOutputMsg): Uint8Array {
  const groups: { signature: string; datums: Record<string, TensorData>[] }[] = [];
  out.lossFnOutputs.forEach((datum, i) => {
    for (const [key, t] of Object.entries(datum)) {
      checkTensor(t, `lossFnOutputs[${i}]['${key}']`);
      if (t.shape.length === 0) throw new TypeError(`lossFnOutputs[${i}]['${key}']: 0-d tensors cannot be sent (the wire needs a first dimension)`);
      if (t.shape.slice(1).includes(0)) throw new TypeError(`lossFnOutputs[${i}]['${key}']: trailing dimensions must be non-zero`);
    }
    const keys = Object.keys(datum).sort();
    const signature = JSON.stringify(keys.map((k) => [k, datum[k]!.dtype, datum[k]!.shape.slice(1)]));
    const last = groups[groups.length - 1];
    if (last && last.signature === signature) last.datums.push(datum);
    else groups.push({ signature, datums: [datum] });
  });
  const w = new Writer();
  w.string(1, 'ArrayRecord');
  for (const { datums } of groups) {
    const record = new Writer();
    record.string(1, 'ArrayRecord');
    for (const key of Object.keys(datums[0]!)) record.mapEntry(2, key, (e) => e.message(2, batchField(datums.map((d) => d[key]!))));
    record.uint(3, datums.length);
    w.message(2, record);
  }
  for (const [key, value] of Object.entries(out.metrics)) w.mapEntry(3, key, (e) => e.double(2, value));
  return w.finish();
}

/** A `BatchedTensor`: the datums' bytes back to back, int64 byte offsets, one dtype and trailing shape. */
function batchField(tensors: TensorData[]): Writer {
  const offsets = new BigInt64Array(tensors.length + 1);
  let total = 0;
  tensors.forEach((t, i) => {
    total += t.data.byteLength;
    offsets[i + 1] = BigInt(total);
  });
  const data = new Uint8Array(total);
  tensors.forEach((t, i) => data.set(leBytes(t.data), Number(offsets[i])));
  const w = new Writer();
  if (data.length) w.bytes(1, data);
  w.bytes(2, leBytes(offsets));
  w.uint(3, wireDtype(tensors[0]!.dtype));
  w.packedUints(4, tensors[0]!.shape.slice(1));
  return w;
}

interface RawBatchedTensor {
  data: Uint8Array;
  offsets: Uint8Array;
  dtype: number;
  trailing: number[];
}

function readBatchedTensor(r: Reader, what: string): RawBatchedTensor {
  const t: RawBatchedTensor = { data: new Uint8Array(0), offsets: new Uint8Array(0), dtype: 0, trailing: [] };
  for (const [field, wt] of r.fields()) {
    if (field === 1 && wt === 2) t.data = r.bytes();
    else if (field === 2 && wt === 2) t.offsets = r.bytes();
    else if (field === 3 && wt === 0) t.dtype = r.varint();
    else if (field === 4) r.repeatedInts(wt, t.trailing, `${what}.trailing_shape`);
    else r.skip(wt);
  }
  return t;
}

function readArrayRecord(r: Reader, index: number): Record<string, TensorData>[] {
  let n = 0;
  const fields: [string, RawBatchedTensor | undefined][] = [];
  for (const [field, wt] of r.fields()) {
    if (field === 2 && wt === 2) fields.push(r.mapEntry((e, w) => (w === 2 ? readBatchedTensor(e.message(), `loss_fn_outputs[${index}]`) : (e.skip(w), undefined)), undefined));
    else if (field === 3 && wt === 0) n = r.int(`loss_fn_outputs[${index}].num_datums`);
    else r.skip(wt);
  }
  if (n < 0 || n > MAX_DENSE_ELEMENTS) throw new ProtoDecodeError(`loss_fn_outputs[${index}].num_datums ${n} is out of range`);
  const datums: Record<string, TensorData>[] = Array.from({ length: n }, () => ({}));
  for (const [key, field] of fields) {
    const what = `loss_fn_outputs[${index}].fields['${key}']`;
    const bt = field ?? { data: new Uint8Array(0), offsets: new Uint8Array(0), dtype: 0, trailing: [] };
    const offsets = readIndices(bt.offsets, `${what}.offsets`);
    if (offsets.length !== n + 1) throw new ProtoDecodeError(`${what}: ${offsets.length} offsets for ${n} datums (expected ${n + 1})`);
    checkShape(bt.trailing, what);
    const per = product(bt.trailing);
    if (per === 0) throw new ProtoDecodeError(`${what}: trailing_shape ${formatShape(bt.trailing)} has a zero dimension`);
    for (let i = 0; i < n; i++) {
      const [start, end] = [offsets[i]!, offsets[i + 1]!];
      if (start < 0 || end < start || end > bt.data.length) {
        throw new ProtoDecodeError(`${what}: offsets ${start}..${end} for datum ${i} are outside the ${bt.data.length}-byte data`);
      }
      const values = readValues(bt.data.subarray(start, end), bt.dtype, `${what} datum ${i}`);
      if (values.length % per !== 0) {
        throw new ProtoDecodeError(`${what}: datum ${i} has ${values.length} values, not a multiple of trailing shape ${formatShape(bt.trailing)}`);
      }
      datums[i]![key] = { dtype: values instanceof BigInt64Array ? 'int64' : 'float32', shape: [values.length / per, ...bt.trailing], data: values };
    }
  }
  return datums;
}

/**
 * Decodes a `ForwardBackwardOutput` by the Python SDK's rules: records concatenate in order,
 * `num_datums` is authoritative, a datum's first dimension is its element count over the trailing
 * shape; the output type keeps the class name after the last ':' (empty: "ArrayRecord").
 *
 * @throws {ProtoDecodeError} on malformed records.
 * @example
 * const out = decodeForwardBackwardOutput(bytes);
 * out.lossFnOutputs[0]?.['logprobs']?.shape; // [N]
 */
export function decodeForwardBackwardOutput(body: Uint8Array): DecodedForwardBackwardOutput {
  const r = new Reader(body, 'ForwardBackwardOutput');
  const out: DecodedForwardBackwardOutput = { lossFnOutputType: '', lossFnOutputs: [], metrics: {} };
  let records = 0;
  for (const [field, wt] of r.fields()) {
    if (field === 1 && wt === 2) out.lossFnOutputType = r.string();
    else if (field === 2 && wt === 2) out.lossFnOutputs.push(...readArrayRecord(r.message(), records++));
    else if (field === 3 && wt === 2) {
      const [key, value] = r.mapEntry((e, w) => (w === 1 ? e.double() : (e.skip(w), 0)), 0);
      out.metrics[key] = value;
    } else r.skip(wt);
  }
  out.lossFnOutputType = out.lossFnOutputType.split(':').pop() || 'ArrayRecord';
  return out;
}
