/**
 * @module `SampleResponse` (an asample future's result), both ways: NaN prompt logprobs for
 * "not computed", top-k rows padded with `(0, -99999.0)` cells, and the SDK 0.32 fields (sampled
 * top-k, target prompt logprobs dense or CSR, alternative prompt tokens).
 */
import { readTensorMessage, writeTensorMessage } from './tensor-message.js';
import { densifyCsr, type LaidOutTensor, type TensorData } from './tensor.js';
import { int32Tokens, leBytes, ProtoDecodeError, readFloat32s, readInt32s, Reader, Writer } from './wire.js';

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

const STOP_REASONS = ['stop', 'length'] as const;
/** The top-k padding cell: token id 0 with this logprob. */
const TOPK_PAD_LOGPROB = -99999.0;

/** Top-k rows as a `TopkLogprobs` message, padded to the widest row (K >= 1, so a null row is all padding). */
function writeTopk(rows: TopkRows, what: string): Writer {
  const k = Math.max(1, ...rows.map((row) => row?.length ?? 0));
  const ids = new Int32Array(rows.length * k);
  const lps = new Float32Array(rows.length * k).fill(TOPK_PAD_LOGPROB);
  rows.forEach((row, i) =>
    row?.forEach(([id, lp], j) => {
      ids.set(int32Tokens([id], `${what}[${i}][${j}]`), i * k + j);
      lps[i * k + j] = lp;
    }),
  );
  const w = new Writer();
  if (ids.length) {
    w.bytes(1, leBytes(ids));
    w.bytes(2, leBytes(lps));
  }
  w.uint(3, k);
  if (rows.length) w.uint(4, rows.length);
  return w;
}

/** A `TopkLogprobs` message as rows: a row starting with the padding cell is `null`, trailing padding is trimmed. */
function readTopk(r: Reader, what: string): TopkRows {
  let [ids, lpBytes]: [Uint8Array, Uint8Array] = [new Uint8Array(0), new Uint8Array(0)];
  let [k, n] = [0, 0];
  for (const [f, w] of r.fields()) {
    if (f === 1 && w === 2) ids = r.bytes();
    else if (f === 2 && w === 2) lpBytes = r.bytes();
    else if (f === 3 && w === 0) k = r.varint();
    else if (f === 4 && w === 0) n = r.varint();
    else r.skip(w);
  }
  const idArr = readInt32s(ids, `${what}.token_ids`);
  const lpArr = readFloat32s(lpBytes, `${what}.logprobs`);
  if (idArr.length !== n * k || lpArr.length !== n * k) throw new ProtoDecodeError(`${what}: ${idArr.length} token ids and ${lpArr.length} logprobs for ${n} x ${k}`);
  const isPad = (c: number): boolean => idArr[c] === 0 && lpArr[c] === TOPK_PAD_LOGPROB;
  return Array.from({ length: n }, (_, i) => {
    if (k === 0 || isPad(i * k)) return null;
    let len = k;
    while (len > 0 && isPad(i * k + len - 1)) len--;
    return Array.from({ length: len }, (_, j): [number, number] => [idArr[i * k + j]!, lpArr[i * k + j]!]);
  });
}

/**
 * Encodes an asample result. Null prompt logprobs become NaN; top-k rows (prompt and sampled) are
 * padded to the longest row with `(0, -99999.0)`. `targetPromptLogprobs` keeps its layout.
 *
 * @throws {RangeError} when a sequence's logprobs and tokens differ in length, or a token id is not an int32.
 * @example
 * encodeSampleResponse({
 *   sequences: [{ stopReason: 'stop', tokens: [5, 151645], logprobs: [-0.1, -0.2] }],
 *   promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0,
 * });
 */
export function encodeSampleResponse(r: SampleResponseMsg): Uint8Array {
  const w = new Writer();
  r.sequences.forEach((s, i) => {
    if (s.logprobs !== null && s.logprobs.length !== s.tokens.length) throw new RangeError(`sequences[${i}]: ${s.logprobs.length} logprobs for ${s.tokens.length} tokens`);
    const sw = new Writer();
    if (s.stopReason === 'length') sw.uint(1, 1);
    if (s.tokens.length) sw.bytes(2, leBytes(int32Tokens(s.tokens, `sequences[${i}].tokens`)));
    // `optional`: present (even empty) unless null.
    if (s.logprobs !== null) sw.bytes(3, leBytes(Float32Array.from(s.logprobs)));
    if (s.topkLogprobs) sw.message(4, writeTopk(s.topkLogprobs, `sequences[${i}].topkLogprobs`));
    w.message(1, sw);
  });
  if (r.promptLogprobs !== null) w.bytes(2, leBytes(Float32Array.from(r.promptLogprobs, (v) => v ?? NaN)));
  if (r.topkPromptLogprobs !== null) w.message(3, writeTopk(r.topkPromptLogprobs, 'topkPromptLogprobs'));
  if (r.promptCacheHitTokens) w.uint(4, r.promptCacheHitTokens);
  if (r.targetPromptLogprobs) w.message(5, writeTensorMessage(r.targetPromptLogprobs, 'targetPromptLogprobs'));
  if (r.promptAltTokens) {
    const alt = new Writer();
    alt.message(1, writeTensorMessage(r.promptAltTokens.tokens, 'promptAltTokens.tokens'));
    alt.message(2, writeTensorMessage(r.promptAltTokens.logprobs, 'promptAltTokens.logprobs'));
    w.message(6, alt);
  }
  return w.finish();
}

function readSequence(s: Reader, i: number): SampledSequenceMsg {
  let stop = 0;
  let [tokens, logprobs]: [Uint8Array, Uint8Array] = [new Uint8Array(0), new Uint8Array(0)];
  let topk: TopkRows | undefined;
  for (const [f, w] of s.fields()) {
    if (f === 1 && w === 0) stop = s.varint();
    else if (f === 2 && w === 2) tokens = s.bytes();
    else if (f === 3 && w === 2) logprobs = s.bytes();
    else if (f === 4 && w === 2) topk = readTopk(s.message(), `sequences[${i}].topk_sampled_logprobs`);
    else s.skip(w);
  }
  const stopReason = STOP_REASONS[stop];
  if (stopReason === undefined) throw new ProtoDecodeError(`sequences[${i}]: unknown stop_reason ${stop}`);
  const tokenList = Array.from(readInt32s(tokens, `sequences[${i}].tokens`));
  const lps = readFloat32s(logprobs, `sequences[${i}].logprobs`);
  if (lps.length > 0 && lps.length !== tokenList.length) throw new ProtoDecodeError(`sequences[${i}]: ${lps.length} logprobs for ${tokenList.length} tokens`);
  return { stopReason, tokens: tokenList, logprobs: lps.length > 0 ? Array.from(lps) : null, ...(topk ? { topkLogprobs: topk } : {}) };
}

/**
 * Decodes an asample result with the SDK's rules: empty sequence logprobs are `null`, NaN prompt
 * logprobs are `null`, a top-k row starting with the padding cell is `null` and trailing padding
 * is trimmed. Fields added after SDK 0.25 are set only when present; a CSR `targetPromptLogprobs`
 * stays CSR (see `denseWithFill`), alternative prompt tokens are dense.
 *
 * @throws {ProtoDecodeError} on an unknown stop reason or inconsistent array sizes.
 * @example
 * decodeSampleResponse(bytes).sequences[0]?.tokens;
 */
export function decodeSampleResponse(body: Uint8Array): SampleResponseMsg {
  const r = new Reader(body, 'SampleResponse');
  const out: SampleResponseMsg = { sequences: [], promptLogprobs: null, topkPromptLogprobs: null, promptCacheHitTokens: 0 };
  for (const [field, wt] of r.fields()) {
    if (field === 1 && wt === 2) out.sequences.push(readSequence(r.message(), out.sequences.length));
    else if (field === 2 && wt === 2) out.promptLogprobs = Array.from(readFloat32s(r.bytes(), 'prompt_logprobs'), (v) => (Number.isNaN(v) ? null : v));
    else if (field === 3 && wt === 2) out.topkPromptLogprobs = readTopk(r.message(), 'topk_prompt_logprobs');
    else if (field === 4 && wt === 0) out.promptCacheHitTokens = r.varint();
    else if (field === 5 && wt === 2) out.targetPromptLogprobs = readTensorMessage(r.message(), 'target_prompt_logprobs');
    else if (field === 6 && wt === 2) {
      const a = r.message();
      const alt: { tokens?: LaidOutTensor; logprobs?: LaidOutTensor } = {};
      for (const [f, w] of a.fields()) {
        if (f === 1 && w === 2) alt.tokens = readTensorMessage(a.message(), 'prompt_alt_tokens.tokens');
        else if (f === 2 && w === 2) alt.logprobs = readTensorMessage(a.message(), 'prompt_alt_tokens.logprobs');
        else a.skip(w);
      }
      if (!alt.tokens || !alt.logprobs) throw new ProtoDecodeError('prompt_alt_tokens: needs both tokens and logprobs');
      out.promptAltTokens = { tokens: densifyCsr(alt.tokens), logprobs: densifyCsr(alt.logprobs) };
    } else r.skip(wt);
  }
  return out;
}
