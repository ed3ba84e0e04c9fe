/**
 * @module The server's own metric points, derived from the request log: one per completed
 * forward_backward (its loss metrics and how many tokens it trained on) and per optim_step (its
 * learning rate and gradient norm). Points are recorded when the dashboard asks (the log keeps every
 * result), so training itself never waits on them.
 */
import { unpackResult } from '../protocol/results.js';
import type { ServerPoint, Store } from '../store/index.js';

/** Requests turned into points per query; a long run catches up over several polls. */
const RECORD_BATCH = 2000;

/** The finite numbers of a metrics object (workers report `name:reduction` keys). */
function finiteNumbers(metrics: unknown): Record<string, number> {
  if (metrics === null || typeof metrics !== 'object') return {};
  return Object.fromEntries(Object.entries(metrics).filter((entry): entry is [string, number] => typeof entry[1] === 'number' && Number.isFinite(entry[1])));
}

/** Positions a forward_backward trained on: the length of each datum's first output. */
function trainedTokens(outputs: readonly Record<string, { shape: number[] }>[]): number {
  return outputs.reduce((sum, fields) => {
    const first = Object.values(fields)[0];
    return sum + (first ? first.shape.reduce((a, b) => a * b, 1) : 0);
  }, 0);
}

/**
 * Records the points of `modelId`'s requests completed since the last call; returns how many.
 * Concurrent calls are harmless (a point is stored once).
 *
 * @example
 * await recordRunMetrics(store, run.modelId);
 * const points = await store.metrics.points(run.modelId, 0, 1000);
 */
export async function recordRunMetrics(store: Store, modelId: string): Promise<number> {
  const pending = await store.metrics.unrecorded(modelId, RECORD_BATCH);
  if (pending.length === 0) return 0;
  // A run's outcomes reach the log in seq order, so every earlier step is recorded already.
  let step = await store.metrics.stepsBefore(modelId, pending[0]!.seq);
  const points: ServerPoint[] = [];
  for (const request of pending) {
    const result = unpackResult(request.result);
    if (request.kind === 'forward_backward' && result.kind === 'fwdbwd') {
      points.push({ seq: request.seq, kind: 'forward_backward', step, tokens: trainedTokens(result.loss_fn_outputs), time: request.completedAt, values: finiteNumbers(result.metrics) });
    } else if (request.kind === 'optim_step' && result.kind === 'json') {
      points.push({ seq: request.seq, kind: 'optim_step', step, tokens: 0, time: request.completedAt, values: finiteNumbers((result.value as { metrics?: unknown }).metrics) });
      step += 1;
    }
  }
  await store.metrics.addServerPoints(modelId, points);
  return points.length;
}
