/**
 * @module Bounded zstd decompression for request bodies sent with `Content-Encoding: zstd`.
 *
 * fzstd decodes; this module keeps a hostile body from costing more memory than the caller allows.
 * Before decoding, it walks every frame's header and block headers (cheap: no entropy decoding), so a
 * truncated or non-zstd body fails fast, a declared content size above the limit is refused up front,
 * and so is a window the decoder would have to allocate that is larger than it could ever need.
 * While decoding, it stops as soon as the output passes the limit.
 */
import diagnostics from 'node:diagnostics_channel';
import { Decompress } from 'fzstd';

/** Why a body could not be decompressed: over the size limit (HTTP 413) or not valid zstd (HTTP 400). */
export type ZstdErrorCode = 'limit_exceeded' | 'invalid_data';

/**
 * A zstd body that is too large once decompressed, or is not valid zstd.
 *
 * @example
 * try { decompressZstd(body, 64 << 20); }
 * catch (e) { if (e instanceof ZstdDecodeError) reply.code(e.code === 'limit_exceeded' ? 413 : 400); }
 */
export class ZstdDecodeError extends Error {
  override readonly name = 'ZstdDecodeError';
  constructor(
    readonly code: ZstdErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Frames may reserve a window up to this size even when `maxBytes` is smaller (streaming compressors use 1–8 MiB). */
const MIN_WINDOW_ALLOWANCE = 8 << 20;
const ZSTD_MAGIC = 0xfd2fb528;
const MAX_BLOCK = 128 << 10;
/** Blocks decoded per step (each outputs at most 128 KiB). */
const BLOCKS_PER_STEP = 8;

/** Decoding yields to the event loop after about this much output, so other requests keep being served. */
const YIELD_EVERY_BYTES = 1 << 20;

/**
 * Publishes `{ decoded }` (bytes so far) each time decoding yields to the event loop; for
 * monitoring, and for tests that check a big body does not hold up other requests.
 */
export const zstdProgress = diagnostics.channel('lathe:zstd:progress');

/**
 * Decompresses a zstd body (one or more frames), refusing output above `maxBytes`. Decoding runs
 * a few blocks at a time (at most 128 KiB of output each) and yields to the event loop after about
 * every MiB of output, so a large or hostile body cannot stall other requests for long.
 *
 * @throws {ZstdDecodeError} `limit_exceeded` when the declared or actual size passes `maxBytes` (or a
 * frame's window exceeds `max(maxBytes, 8 MiB)`); `invalid_data` when the body is not valid zstd.
 * @example
 * const raw = request.headers['content-encoding'] === 'zstd' ? await decompressZstd(body, 64 << 20) : body;
 */
export async function decompressZstd(body: Uint8Array, maxBytes: number): Promise<Uint8Array> {
  const boundaries = scanFrames(body, maxBytes);
  const parts: Uint8Array[] = [];
  let total = 0;
  const stream = new Decompress((chunk) => {
    total += chunk.length;
    if (total > maxBytes) throw new ZstdDecodeError('limit_exceeded', `zstd body decompresses to more than ${maxBytes} bytes`);
    // fzstd may reuse its block buffer after the callback returns, so keep a copy.
    if (chunk.length > 0) parts.push(chunk.slice());
  });
  let pushed = 0;
  let sinceYield = 0;
  try {
    for (let i = 0; i < boundaries.length; i++) {
      const before = total;
      const end = boundaries[i]!;
      stream.push(body.subarray(pushed, end), i === boundaries.length - 1);
      // Work done: output written plus input parsed (a body of empty blocks outputs nothing).
      sinceYield += total - before + (end - pushed);
      pushed = end;
      if (sinceYield >= YIELD_EVERY_BYTES && i < boundaries.length - 1) {
        sinceYield = 0;
        if (zstdProgress.hasSubscribers) zstdProgress.publish({ decoded: total });
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
  } catch (e) {
    if (e instanceof ZstdDecodeError) throw e;
    throw new ZstdDecodeError('invalid_data', `invalid zstd body: ${(e as Error).message}`);
  }
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * Walks frame and block headers (RFC 8878 §3.1), checking structure, declared sizes and windows.
 * Returns where each block (with its frame's header or checksum) ends: the points decoding may pause at.
 */
function scanFrames(body: Uint8Array, maxBytes: number): number[] {
  const ends: number[] = [];
  let blocks = 0;
  const invalid = (why: string): ZstdDecodeError => new ZstdDecodeError('invalid_data', `invalid zstd body: ${why}`);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  if (body.length === 0) throw invalid('empty body');
  let pos = 0;
  let declaredTotal = 0;
  let frames = 0;
  while (pos < body.length) {
    if (pos + 8 > body.length) throw invalid('truncated frame header');
    const magic = view.getUint32(pos, true);
    if (magic >>> 4 === 0x184d2a5) {
      // Skippable frame: magic, 4-byte length, payload.
      pos += 8 + view.getUint32(pos + 4, true);
      if (pos > body.length) throw invalid('truncated skippable frame');
      ends.push(pos);
      continue;
    }
    if (magic !== ZSTD_MAGIC) throw invalid(frames === 0 ? 'not a zstd frame (bad magic number)' : 'trailing bytes after the last frame');
    frames++;
    const fhd = body[pos + 4]!;
    const fcsFlag = fhd >> 6;
    const singleSegment = (fhd >> 5) & 1;
    const hasChecksum = (fhd >> 2) & 1;
    if (fhd & 0x08) throw invalid('reserved frame header bit set');
    let at = pos + 5;
    let windowSize = 0;
    if (!singleSegment) {
      const wd = body[at++]!;
      const base = 2 ** (10 + (wd >> 3));
      windowSize = base + (base / 8) * (wd & 7);
    }
    at += [0, 1, 2, 4][fhd & 3]!;
    const fcsBytes = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
    if (at + fcsBytes > body.length) throw invalid('truncated frame header');
    let contentSize: number | undefined;
    if (fcsBytes > 0) {
      contentSize = 0;
      for (let i = fcsBytes - 1; i >= 0; i--) contentSize = contentSize * 256 + body[at + i]!;
      if (fcsBytes === 2) contentSize += 256;
      at += fcsBytes;
      declaredTotal += contentSize;
      if (declaredTotal > maxBytes) {
        throw new ZstdDecodeError('limit_exceeded', `zstd body declares ${declaredTotal} decompressed bytes, above the limit of ${maxBytes}`);
      }
    }
    // fzstd allocates the window up front: the content size for single-segment frames, else the window size.
    if (singleSegment) windowSize = contentSize ?? 0;
    const windowLimit = Math.max(maxBytes, MIN_WINDOW_ALLOWANCE);
    if (windowSize > windowLimit) {
      throw new ZstdDecodeError('limit_exceeded', `zstd frame window of ${windowSize} bytes exceeds the limit of ${windowLimit}`);
    }
    // Blocks: 3-byte header (last flag, type, size); RLE blocks carry one byte of payload.
    for (;;) {
      if (at + 3 > body.length) throw invalid('truncated block header');
      const header = body[at]! | (body[at + 1]! << 8) | (body[at + 2]! << 16);
      const last = header & 1;
      const type = (header >> 1) & 3;
      const size = header >>> 3;
      at += 3;
      if (type === 3) throw invalid('reserved block type');
      if (size > MAX_BLOCK) throw invalid(`block of ${size} bytes exceeds the 128 KiB maximum`);
      at += type === 1 ? 1 : size;
      if (at > body.length) throw invalid('truncated block');
      if (last) break;
      if (++blocks % BLOCKS_PER_STEP === 0) ends.push(at);
    }
    at += hasChecksum * 4;
    if (at > body.length) throw invalid('truncated checksum');
    ends.push(at);
    pos = at;
  }
  if (frames === 0) throw invalid('no zstd frame');
  return ends;
}
