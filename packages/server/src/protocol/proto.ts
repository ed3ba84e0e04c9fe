/**
 * @module The JSON forms of tensors and model inputs (tinker-protocol.md §6.1–6.2), read with the
 * same checks as the protobuf path. The protobuf codec itself, the tensor types and the layout
 * helpers live in `@lathe/protocol`.
 */
import {
  checkCsr,
  denseTensor,
  densifyCsr,
  lossInputDtype,
  ProtoDecodeError,
  type LaidOutTensor,
  type TensorData,
} from '@lathe/protocol';

// ---------------------------------------------------------------------------------------------
// JSON forms (§6.1–6.2)

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
  // A plain JSON list carries no integer type, so its dtype comes from the key alone.
  return densifyCsr(laidOutTensorFromJson(value, what, lossInputDtype(key, false)));
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
