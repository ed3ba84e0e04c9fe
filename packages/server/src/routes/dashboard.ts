/**
 * @module The dashboard's extension endpoints under `/api/v1/lathe/` (everything is the caller's
 * key's own, except the service view, which shows the shared hardware), and the dashboard itself
 * (`web/dist`) at `/`.
 *
 * - `GET  /api/v1/lathe/runs`: the caller's runs with steps, tokens trained, last activity, status.
 * - `GET  /api/v1/lathe/runs/:modelId/metrics?after=ID&limit=N`: metric points newer than `after`.
 * - `POST /api/v1/lathe/runs/:modelId/metrics`: `{rows: [{step, metrics: {name: number}}]}`.
 * - `GET  /api/v1/lathe/service`: workers, models with queue depths and adapters, tokens/s (trained
 *   and sampled).
 */
import { Type, type Static } from 'typebox';
import { recordRunMetrics } from '../dashboard/recorder.js';
import { SampledTokens } from '../dashboard/sampled.js';
import { serveDashboard } from '../dashboard/static.js';
import { notFound } from '../http/errors.js';
import { paging, PagingQuery } from '../protocol/schemas.js';
import type { Services } from '../services.js';
import type { RunRow } from '../store/index.js';
import { owner, type TypedApp } from './context.js';

/** Rows per POST and metrics per row a client may report. */
export const MAX_METRIC_ROWS = 1000;
export const MAX_METRICS_PER_ROW = 200;
/** A run counts as active this long after its last request. */
const ACTIVE_MS = 60_000;
/** The service view's throughput window, in one-minute buckets. */
const THROUGHPUT_MINUTES = 5;

const MetricsQuery = Type.Object(
  { after: Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$' })), limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,5}$' })) },
  { additionalProperties: false },
);

const MetricsBody = Type.Object(
  {
    rows: Type.Array(
      Type.Object(
        {
          step: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
          // JSON has no NaN or Infinity, so "a number" here is a finite one.
          metrics: Type.Record(Type.String({ minLength: 1, maxLength: 200 }), Type.Number(), { maxProperties: MAX_METRICS_PER_ROW }),
        },
        { additionalProperties: false },
      ),
      { maxItems: MAX_METRIC_ROWS },
    ),
  },
  { additionalProperties: false },
);

type RunStatus = 'creating' | 'failed' | 'corrupted' | 'training' | 'active' | 'idle' | 'unloaded';

function runStatus(run: RunRow, busy: boolean, now: number): RunStatus {
  if (run.corrupted) return 'corrupted';
  if (run.state !== 'ready') return run.state;
  if (busy) return 'training';
  return now - run.lastRequestAt < ACTIVE_MS ? 'active' : 'idle';
}

export function dashboardRoutes(app: TypedApp, services: Services): void {
  const { store } = services;
  const hide = { hide: true };
  const sampled = new SampledTokens(store);

  async function ownRun(modelId: string, who: string): Promise<RunRow> {
    // Someone else's run answers exactly as an unknown one.
    const run = await store.runs.get(modelId, who);
    if (!run) throw notFound('training run', modelId);
    return run;
  }

  app.get('/api/v1/lathe/runs', { schema: { ...hide, querystring: PagingQuery } }, async (request) => {
    const { limit, offset } = paging(request.query, 100);
    const { runs, total } = await store.runs.list(owner(request), limit, offset);
    const ids = runs.map((r) => r.modelId);
    for (const id of ids) await recordRunMetrics(store, id);
    const [totals, busy] = await Promise.all([store.metrics.totals(ids), store.metrics.busy(ids)]);
    const now = Date.now();
    return {
      runs: runs.map((run) => ({
        model_id: run.modelId,
        base_model: run.baseModel,
        lora_rank: run.loraRank,
        steps: totals.get(run.modelId)?.steps ?? 0,
        tokens_trained: totals.get(run.modelId)?.tokens ?? 0,
        created_at: run.createdAt,
        last_activity: run.lastRequestAt,
        status: runStatus(run, busy.has(run.modelId), now),
      })),
      total,
    };
  });

  app.get<{ Params: { modelId: string }; Querystring: Static<typeof MetricsQuery> }>('/api/v1/lathe/runs/:modelId/metrics', { schema: { ...hide, querystring: MetricsQuery } }, async (request) => {
    const run = await ownRun(request.params.modelId, owner(request));
    await recordRunMetrics(store, run.modelId);
    const after = Number(request.query.after ?? 0);
    const limit = Math.min(10_000, Math.max(1, Number(request.query.limit ?? 5000)));
    const points = await store.metrics.points(run.modelId, after, limit);
    return { model_id: run.modelId, points, cursor: points.at(-1)?.id ?? after };
  });

  app.post<{ Params: { modelId: string }; Body: Static<typeof MetricsBody> }>('/api/v1/lathe/runs/:modelId/metrics', { schema: { ...hide, body: MetricsBody } }, async (request) => {
    const run = await ownRun(request.params.modelId, owner(request));
    await store.metrics.putClientRows(run.modelId, request.body.rows.map((row) => ({ step: row.step, values: row.metrics })), Date.now());
    return { accepted: request.body.rows.length };
  });

  app.get('/api/v1/lathe/service', { schema: hide }, async (request) => {
    const who = owner(request);
    const now = Date.now();
    const since = now - THROUGHPUT_MINUTES * 60_000;
    for (const id of await store.metrics.activeSince(since)) await recordRunMetrics(store, id);
    const [workers, trained, generated, mine] = await Promise.all([
      services.pool.workersInfo(),
      store.metrics.trainedSince(since),
      sampled.since(since),
      store.runs.list(who, 1000, 0),
    ]);
    const queues = services.queues();
    const adapters = await store.metrics.adaptersByModel(services.serverId);
    const models = services.models.map((m) => ({
      model_name: m.model_name,
      queue: queues[m.model_name] ?? { training: 0, sampling: 0 },
      adapters: adapters.get(m.model_name) ?? 0,
      your_adapters: mine.runs.filter((r) => r.baseModel === m.model_name && r.state === 'ready').map((r) => r.modelId),
    }));
    return { workers, models, throughput: throughput([...trained, ...generated], now) };
  });

  serveDashboard(app);
}

/** Tokens (trained and sampled) per minute over the window, oldest minute first, and the window's average rate. */
function throughput(processed: readonly { time: number; tokens: number }[], now: number): { window_s: number; tokens_per_s: number; per_minute: { start: number; tokens: number; tokens_per_s: number }[] } {
  const start = now - THROUGHPUT_MINUTES * 60_000;
  const per = Array.from({ length: THROUGHPUT_MINUTES }, (_, i) => ({ start: start + i * 60_000, tokens: 0, tokens_per_s: 0 }));
  for (const point of processed) {
    const bucket = per[Math.min(THROUGHPUT_MINUTES - 1, Math.floor((point.time - start) / 60_000))];
    if (bucket) bucket.tokens += point.tokens;
  }
  for (const bucket of per) bucket.tokens_per_s = bucket.tokens / 60;
  const total = per.reduce((sum, b) => sum + b.tokens, 0);
  return { window_s: THROUGHPUT_MINUTES * 60, tokens_per_s: total / (THROUGHPUT_MINUTES * 60), per_minute: per };
}
