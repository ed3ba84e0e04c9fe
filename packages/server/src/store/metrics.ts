/**
 * @module store/metrics
 * The dashboard's read model: metric points per run (`run_metrics`), what the request log holds that
 * is not recorded as a point yet, and per-run totals. Server points are derived from the request
 * log by `dashboard/recorder.ts`; client points are the rows a client reports.
 */
import type { Kysely } from 'kysely';
import { parseJson, toBytes } from './db.js';
import type { Database } from './schema.js';

/** Where a point came from: the server's request log, or the client's own metrics. */
export type MetricSource = 'server' | 'client';

/** One point of a run's curves. */
export interface MetricPoint {
  /** Increasing over all points: pass the last one seen as `after` to get only newer points. */
  id: number;
  source: MetricSource;
  /** 'forward_backward' | 'optim_step' for server points, 'client' for reported rows. */
  kind: string;
  /** Optimizer steps applied before the point (server), or the reported step (client). */
  step: number;
  tokens: number;
  /** Epoch ms the request completed (server) or the row arrived (client). */
  time: number;
  values: Record<string, number>;
}

/** A new server point (from one completed request). */
export interface ServerPoint {
  seq: number;
  kind: 'forward_backward' | 'optim_step';
  step: number;
  tokens: number;
  time: number;
  values: Record<string, number>;
}

/** A completed training request of the log that has no point yet. */
export interface UnrecordedRequest {
  seq: number;
  kind: 'forward_backward' | 'optim_step';
  result: Uint8Array;
  completedAt: number;
}

/** Per-run totals of the server points. */
export interface RunTotals {
  steps: number;
  tokens: number;
}

/** Metric point storage. */
export interface MetricsRepo {
  /** Completed forward_backward / optim_step requests of `modelId` without a point, in seq order (at most `limit`). */
  unrecorded(modelId: string, limit: number): Promise<UnrecordedRequest[]>;
  /** Optimizer-step points of `modelId` with `seq` below `beforeSeq`. */
  stepsBefore(modelId: string, beforeSeq: number): Promise<number>;
  /** Stores server points; one already recorded (same run and seq) is left as it is. */
  addServerPoints(modelId: string, points: readonly ServerPoint[]): Promise<void>;
  /** Stores client rows; a step reported before is replaced (and gets a new id). */
  putClientRows(modelId: string, rows: readonly { step: number; values: Record<string, number> }[], now: number): Promise<void>;
  /** Points of `modelId` with `id > after`, oldest first, at most `limit`. */
  points(modelId: string, after: number, limit: number): Promise<MetricPoint[]>;
  /** Optimizer steps and trained tokens of each run that has server points. */
  totals(modelIds: readonly string[]): Promise<Map<string, RunTotals>>;
  /** Runs with requests still pending or running. */
  busy(modelIds: readonly string[]): Promise<Set<string>>;
  /** Model ids of runs with activity since `since` (any owner). */
  activeSince(since: number): Promise<string[]>;
  /** Loaded training adapters (runs in state 'ready') per base model of the server `serverId`, any key's. */
  adaptersByModel(serverId: string): Promise<Map<string, number>>;
  /** `(time, tokens)` of every forward_backward point recorded since `since`. */
  trainedSince(since: number): Promise<{ time: number; tokens: number }[]>;
  /** Sampling requests (any owner) completed since `since`: their ids and completion times, not their results. */
  samplesCompletedSince(since: number): Promise<{ requestId: string; time: number }[]>;
  /** The stored results of the sampling requests `requestIds` (those that have one). */
  sampleResults(requestIds: readonly string[]): Promise<Map<string, Uint8Array>>;
}

const TRAINING_KINDS = ['forward_backward', 'optim_step'] as const;

export function createMetricsRepo(db: Kysely<Database>): MetricsRepo {
  return {
    async unrecorded(modelId, limit) {
      const rows = await db
        .selectFrom('requests as r')
        .select(['r.seq_id', 'r.kind', 'r.result', 'r.completed_at'])
        .where('r.target', '=', modelId)
        .where('r.status', '=', 'complete')
        .where('r.kind', 'in', TRAINING_KINDS)
        .where('r.seq_id', 'is not', null)
        .where(({ not, exists, selectFrom }) =>
          not(exists(selectFrom('run_metrics as m').select('m.id').where('m.model_id', '=', modelId).where('m.source', '=', 'server').whereRef('m.seq', '=', 'r.seq_id'))),
        )
        .orderBy('r.seq_id')
        .limit(limit)
        .execute();
      return rows.flatMap((r) => {
        const result = toBytes(r.result);
        return result === null ? [] : [{ seq: Number(r.seq_id), kind: r.kind as UnrecordedRequest['kind'], result, completedAt: Number(r.completed_at) }];
      });
    },

    async stepsBefore(modelId, beforeSeq) {
      const row = await db
        .selectFrom('run_metrics')
        .select((eb) => eb.fn.countAll().as('n'))
        .where('model_id', '=', modelId)
        .where('source', '=', 'server')
        .where('kind', '=', 'optim_step')
        .where('seq', '<', beforeSeq)
        .executeTakeFirst();
      return Number(row?.n ?? 0);
    },

    async addServerPoints(modelId, points) {
      if (points.length === 0) return;
      await db
        .insertInto('run_metrics')
        .values(points.map((p) => ({ model_id: modelId, source: 'server', seq: p.seq, kind: p.kind, step: p.step, tokens: p.tokens, metric_values: JSON.stringify(p.values), recorded_at: p.time })))
        .onConflict((oc) => oc.columns(['model_id', 'source', 'seq']).doNothing())
        .execute();
    },

    async putClientRows(modelId, rows, now) {
      if (rows.length === 0) return;
      await db.transaction().execute(async (tx) => {
        await tx.deleteFrom('run_metrics').where('model_id', '=', modelId).where('source', '=', 'client').where('seq', 'in', rows.map((r) => r.step)).execute();
        // The last of several rows for one step wins, as it would one request later.
        const byStep = new Map(rows.map((r) => [r.step, r]));
        await tx
          .insertInto('run_metrics')
          .values([...byStep.values()].map((r) => ({ model_id: modelId, source: 'client', seq: r.step, kind: 'client', step: r.step, tokens: 0, metric_values: JSON.stringify(r.values), recorded_at: now })))
          .execute();
      });
    },

    async points(modelId, after, limit) {
      const rows = await db.selectFrom('run_metrics').selectAll().where('model_id', '=', modelId).where('id', '>', after).orderBy('id').limit(limit).execute();
      return rows.map((r) => ({
        id: Number(r.id),
        source: r.source as MetricSource,
        kind: r.kind,
        step: Number(r.step),
        tokens: Number(r.tokens),
        time: Number(r.recorded_at),
        values: parseJson<Record<string, number>>(r.metric_values),
      }));
    },

    async totals(modelIds) {
      const totals = new Map<string, RunTotals>();
      if (modelIds.length === 0) return totals;
      const rows = await db
        .selectFrom('run_metrics')
        .select((eb) => ['model_id', 'kind', eb.fn.countAll().as('n'), eb.fn.sum<number>('tokens').as('tokens')])
        .where('model_id', 'in', modelIds)
        .where('source', '=', 'server')
        .groupBy(['model_id', 'kind'])
        .execute();
      for (const row of rows) {
        const total = totals.get(row.model_id) ?? { steps: 0, tokens: 0 };
        if (row.kind === 'optim_step') total.steps += Number(row.n);
        total.tokens += Number(row.tokens ?? 0);
        totals.set(row.model_id, total);
      }
      return totals;
    },

    async busy(modelIds) {
      if (modelIds.length === 0) return new Set();
      const rows = await db.selectFrom('requests').select('target').distinct().where('target', 'in', modelIds).where('status', 'in', ['pending', 'running']).execute();
      return new Set(rows.map((r) => r.target));
    },

    async activeSince(since) {
      const rows = await db.selectFrom('training_runs').select('model_id').where('last_request_at', '>=', since).execute();
      return rows.map((r) => r.model_id);
    },

    async adaptersByModel(serverId) {
      const rows = await db
        .selectFrom('training_runs')
        .select((eb) => ['base_model', eb.fn.countAll().as('n')])
        .where('state', '=', 'ready')
        .where('server_id', '=', serverId)
        .groupBy('base_model')
        .execute();
      return new Map(rows.map((r) => [r.base_model, Number(r.n)]));
    },

    async trainedSince(since) {
      const rows = await db.selectFrom('run_metrics').select(['recorded_at', 'tokens']).where('kind', '=', 'forward_backward').where('recorded_at', '>=', since).execute();
      return rows.map((r) => ({ time: Number(r.recorded_at), tokens: Number(r.tokens) }));
    },

    async samplesCompletedSince(since) {
      const rows = await db
        .selectFrom('requests')
        .select(['request_id', 'completed_at'])
        .where('completed_at', '>=', since)
        .where('kind', '=', 'sample')
        .where('status', '=', 'complete')
        .execute();
      return rows.map((r) => ({ requestId: r.request_id, time: Number(r.completed_at) }));
    },

    async sampleResults(requestIds) {
      const results = new Map<string, Uint8Array>();
      if (requestIds.length === 0) return results;
      const rows = await db.selectFrom('requests').select(['request_id', 'result']).where('request_id', 'in', requestIds).where('kind', '=', 'sample').execute();
      for (const row of rows) {
        const result = toBytes(row.result);
        if (result !== null) results.set(row.request_id, result);
      }
      return results;
    },
  };
}
