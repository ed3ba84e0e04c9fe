/**
 * @module Splitting a large forward/backward batch into requests and merging their results, by the
 * Python SDK's rules (`_chunked_requests_generator`, `chunked_fwdbwd_helpers.py`).
 */
import type { Datum, ForwardBackwardOutput } from '../core/types.js';
import { estimateDatumBytes } from './wire.js';

/**
 * Groups `data` into consecutive chunks of at most `maxLen` datums and (unless a single datum is
 * bigger) at most `maxBytes` estimated bytes.
 */
export function chunkData(data: readonly Datum[], maxLen: number, maxBytes: number): Datum[][] {
  const chunks: Datum[][] = [];
  let current: Datum[] = [];
  let bytes = 0;
  for (const datum of data) {
    const size = estimateDatumBytes(datum);
    if ((current.length > 0 && bytes + size > maxBytes) || current.length >= maxLen) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(datum);
    bytes += size;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

/** An order-insensitive combination of integer hashes (deterministic, unlike Python's `hash`). */
function combineHashes(values: number[]): number {
  let h = 0x811c9dc5;
  for (const v of [...values].map((x) => Math.trunc(x)).sort((a, b) => a - b)) {
    h ^= v & 0xffffffff;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/**
 * Merges per-chunk metrics by the reduction named after the key's `:` — `sum`, `mean` and `slack`
 * (weighted by each chunk's datum count), `min`, `max`, `hash_unordered`, `unique` (first value,
 * then `key_1`, `key_2`, …). Keys with an unknown reduction, without exactly one `:`, or missing
 * from some chunk are dropped.
 */
export function mergeMetrics(results: readonly ForwardBackwardOutput[]): Record<string, number> {
  const first = results[0];
  if (!first) return {};
  if (results.length === 1) return { ...first.metrics };
  const weights = results.map((r) => r.lossFnOutputs.length);
  const totalWeight = weights.reduce((a, b) => a + b, 0);
  const weightedMean = (xs: number[]): number => (totalWeight > 0 ? xs.reduce((s, x, i) => s + x * weights[i]!, 0) / totalWeight : xs.reduce((a, b) => a + b, 0) / xs.length);
  const out: Record<string, number> = {};
  for (const key of Object.keys(first.metrics)) {
    const parts = key.split(':');
    if (parts.length !== 2) continue;
    if (!results.every((r) => key in r.metrics)) continue;
    const values = results.map((r) => r.metrics[key]!);
    switch (parts[1]) {
      case 'sum':
        out[key] = values.reduce((a, b) => a + b, 0);
        break;
      case 'mean':
        out[key] = weightedMean(values);
        break;
      case 'min':
        out[key] = Math.min(...values);
        break;
      case 'max':
        out[key] = Math.max(...values);
        break;
      case 'slack':
        out[key] = Math.max(...values) - weightedMean(values);
        break;
      case 'hash_unordered':
        out[key] = combineHashes(values);
        break;
      case 'unique':
        out[key] = values[0]!;
        values.slice(1).forEach((v, i) => (out[`${key}_${i + 1}`] = v));
        break;
      default:
        break;
    }
  }
  return out;
}

/** Concatenates chunk outputs in order and merges their metrics. */
export function combineOutputs(results: readonly ForwardBackwardOutput[]): ForwardBackwardOutput {
  return {
    lossFnOutputType: results[0]?.lossFnOutputType ?? '',
    lossFnOutputs: results.flatMap((r) => r.lossFnOutputs),
    metrics: mergeMetrics(results),
  };
}
