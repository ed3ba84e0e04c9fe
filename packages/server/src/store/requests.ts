/**
 * @module store/requests
 * The request log behind the futures protocol. Every submitted request gets a row with an
 * opaque `request_id` (the future id); the SDK's `(target, seq_id)` makes resubmission
 * idempotent: a duplicate returns the original row instead of creating a second job.
 */
import { randomBytes } from 'node:crypto';
import type { Kysely, Selectable } from 'kysely';
import { parseJson, StoreConflictError, toBytes } from './db.js';
import type { Database, RequestsTable } from './schema.js';

export type RequestStatus = 'pending' | 'running' | 'complete' | 'failed';

/** Who is to blame for a failed request (wire `category`). */
export interface RequestError {
  message: string;
  category: 'user' | 'server' | 'unknown';
  /**
   * Set when the request was refused at submit (it still took its `seq_id`'s place in the run's
   * order): the HTTP answer it got, which a retry of the same `(target, seq_id)` gets again.
   */
  refused?: { status: number; type: string };
}

/** A logged request as the API sees it. */
export interface RequestRow {
  requestId: string;
  owner: string;
  /** What the request addresses: a model id, a sampler id, a session id… */
  target: string;
  seqId: number | null;
  kind: string;
  status: RequestStatus;
  payload: Uint8Array | null;
  result: Uint8Array | null;
  error: RequestError | null;
  createdAt: number;
  completedAt: number | null;
}

/** Request log storage. */
export interface RequestRepo {
  /**
   * Logs a new 'pending' request. `(target, seqId)` is unique when `seqId` is not null: a
   * duplicate returns the ORIGINAL row with `created: false` (whatever its kind/payload/status),
   * also under concurrent inserts. The caller must have checked that `owner` may address
   * `target`; a duplicate owned by someone else throws `StoreConflictError`. With `error`, the
   * request is logged as already 'failed' with it (a request refused at submit).
   */
  insert(r: { owner: string; target: string; seqId: number | null; kind: string; payload: Uint8Array | null; now: number; error?: RequestError; serverId?: string }): Promise<{ row: RequestRow; created: boolean }>;
  /** The owner's request, or undefined. */
  get(requestId: string, owner: string): Promise<RequestRow | undefined>;
  /** pending → running (no-op in any other state). */
  markRunning(requestId: string): Promise<void>;
  /** pending/running → complete with `result` (no-op once finished: the first outcome wins). */
  complete(requestId: string, result: Uint8Array, now: number): Promise<void>;
  /** pending/running → failed with `error` (no-op once finished: the first outcome wins). */
  fail(requestId: string, error: RequestError, now: number): Promise<void>;
  /** The owner's request logged for `(target, seqId)`, if any. */
  findBySeq(target: string, seqId: number, owner: string): Promise<RequestRow | undefined>;
  /** The highest seq id logged for `target`, or null when none is. */
  maxSeq(target: string): Promise<number | null>;
  /**
   * Where `target`'s seq order stands, from the log alone (after a restart): `nextSeq` is the
   * first seq id after the lowest finished one that is not finished itself, and `finishedAfter`
   * the finished seq ids beyond it (requests refused or given up out of order, which the run
   * passes when it gets there). Undefined when nothing of `target` has finished.
   */
  progress(target: string): Promise<{ nextSeq: number; finishedAfter: number[] } | undefined>;
  /**
   * Finished requests of `target` with `seqFrom <= seqId < seqTo` (and those without a seq id when
   * `seqFrom` is 0), in completion order: ids and status only (`retrieve_futures`).
   */
  finishedIn(target: string, seqFrom: number, seqTo: number): Promise<{ requestId: string; status: 'complete' | 'failed' }[]>;
  /** Completed requests of `target` with `seqId > afterSeq`, in seq order (replay after a crash). */
  completedSince(target: string, afterSeq: number): Promise<RequestRow[]>;
  /** Pending or running requests (those `serverId` accepted, when given), oldest first (recovery after a restart). */
  unfinished(serverId?: string): Promise<RequestRow[]>;
  /**
   * Forgets the payloads of `target`'s finished requests up to `throughSeq`: a snapshot taken at
   * that seq covers them, so replay never reads them again (they hold whole training batches).
   */
  dropPayloads(target: string, throughSeq: number): Promise<void>;
  /** Deletes finished requests completed before `completedBefore`; returns how many. */
  prune(completedBefore: number): Promise<number>;
}

const FINISHED: RequestStatus[] = ['complete', 'failed'];
const UNFINISHED: RequestStatus[] = ['pending', 'running'];

function toRow(r: Selectable<RequestsTable>): RequestRow {
  return {
    requestId: r.request_id,
    owner: r.owner,
    target: r.target,
    seqId: r.seq_id === null ? null : Number(r.seq_id),
    kind: r.kind,
    status: r.status as RequestStatus,
    payload: toBytes(r.payload),
    result: toBytes(r.result),
    error: r.error === null ? null : parseJson<RequestError>(r.error),
    createdAt: Number(r.created_at),
    completedAt: r.completed_at === null ? null : Number(r.completed_at),
  };
}

/** What is stored of an error: only the known fields. */
function storedError(error: RequestError): RequestError {
  return { message: error.message, category: error.category, ...(error.refused ? { refused: { status: error.refused.status, type: error.refused.type } } : {}) };
}

/** A fresh opaque request id. */
function newRequestId(): string {
  return 'req_' + randomBytes(16).toString('base64url');
}

export function createRequestRepo(db: Kysely<Database>): RequestRepo {
  return {
    async insert(r) {
      // INSERT … ON CONFLICT DO NOTHING is atomic in both engines; under PostgreSQL a
      // concurrent inserter of the same key waits for the winner to commit and then inserts
      // nothing, after which the winner's row is visible to the follow-up SELECT. The loop only
      // repeats if the original row vanished (pruned) in between.
      for (let attempt = 0; attempt < 5; attempt++) {
        const inserted = await db
          .insertInto('requests')
          .values({
            request_id: newRequestId(),
            owner: r.owner,
            target: r.target,
            seq_id: r.seqId,
            kind: r.kind,
            status: r.error ? 'failed' : 'pending',
            payload: r.payload,
            result: null,
            error: r.error ? JSON.stringify(storedError(r.error)) : null,
            created_at: r.now,
            completed_at: r.error ? r.now : null,
            server_id: r.serverId ?? null,
          })
          .onConflict((oc) => oc.columns(['target', 'seq_id']).doNothing())
          .returningAll()
          .executeTakeFirst();
        if (inserted !== undefined) return { row: toRow(inserted), created: true };
        if (r.seqId === null) continue; // cannot happen (NULLs never conflict); retry with a new id
        const original = await db.selectFrom('requests').selectAll().where('target', '=', r.target).where('seq_id', '=', r.seqId).executeTakeFirst();
        if (original === undefined) continue;
        if (original.owner !== r.owner) throw new StoreConflictError(`request (${r.target}, ${r.seqId}) belongs to another owner`);
        return { row: toRow(original), created: false };
      }
      throw new Error(`requests.insert: could not insert or find (${r.target}, ${String(r.seqId)})`);
    },

    async get(requestId, owner) {
      const r = await db.selectFrom('requests').selectAll().where('request_id', '=', requestId).where('owner', '=', owner).executeTakeFirst();
      return r === undefined ? undefined : toRow(r);
    },

    async markRunning(requestId) {
      await db.updateTable('requests').set({ status: 'running' }).where('request_id', '=', requestId).where('status', '=', 'pending').execute();
    },

    async complete(requestId, result, now) {
      await db
        .updateTable('requests')
        .set({ status: 'complete', result, error: null, completed_at: now })
        .where('request_id', '=', requestId)
        .where('status', 'in', UNFINISHED)
        .execute();
    },

    async fail(requestId, error, now) {
      await db
        .updateTable('requests')
        .set({ status: 'failed', error: JSON.stringify(storedError(error)), completed_at: now })
        .where('request_id', '=', requestId)
        .where('status', 'in', UNFINISHED)
        .execute();
    },

    async findBySeq(target, seqId, owner) {
      const r = await db.selectFrom('requests').selectAll().where('target', '=', target).where('seq_id', '=', seqId).where('owner', '=', owner).executeTakeFirst();
      return r === undefined ? undefined : toRow(r);
    },

    async maxSeq(target) {
      const r = await db.selectFrom('requests').select((eb) => eb.fn.max('seq_id').as('max')).where('target', '=', target).executeTakeFirst();
      return r?.max === null || r?.max === undefined ? null : Number(r.max);
    },

    async progress(target) {
      // The lowest finished seq whose successor is not finished: one indexed probe per finished row.
      const gap = await db
        .selectFrom('requests as r')
        .select((eb) => eb.fn.min('r.seq_id').as('last'))
        .where('r.target', '=', target)
        .where('r.status', 'in', FINISHED)
        .where(({ eb, not, exists, selectFrom }) =>
          not(
            exists(
              selectFrom('requests as n')
                .select('n.seq_id')
                .where('n.target', '=', target)
                .where('n.status', 'in', FINISHED)
                .where('n.seq_id', '=', eb('r.seq_id', '+', 1)),
            ),
          ),
        )
        .executeTakeFirst();
      if (gap?.last === null || gap?.last === undefined) return undefined;
      const nextSeq = Number(gap.last) + 1;
      const ahead = await db
        .selectFrom('requests')
        .select('seq_id')
        .where('target', '=', target)
        .where('status', 'in', FINISHED)
        .where('seq_id', '>', nextSeq)
        .orderBy('seq_id')
        .execute();
      return { nextSeq, finishedAfter: ahead.map((r) => Number(r.seq_id)) };
    },

    async finishedIn(target, seqFrom, seqTo) {
      const rows = await db
        .selectFrom('requests')
        .select(['request_id', 'status'])
        .where('target', '=', target)
        .where('status', 'in', FINISHED)
        .where((eb) => {
          const inRange = eb.and([eb('seq_id', '>=', seqFrom), eb('seq_id', '<', seqTo)]);
          return seqFrom === 0 ? eb.or([inRange, eb('seq_id', 'is', null)]) : inRange;
        })
        .orderBy('completed_at')
        .orderBy('request_id')
        .execute();
      return rows.map((r) => ({ requestId: r.request_id, status: r.status as 'complete' | 'failed' }));
    },

    async completedSince(target, afterSeq) {
      const rows = await db
        .selectFrom('requests')
        .selectAll()
        .where('target', '=', target)
        .where('seq_id', '>', afterSeq)
        .where('status', '=', 'complete')
        .orderBy('seq_id', 'asc')
        .execute();
      return rows.map(toRow);
    },

    async unfinished(serverId) {
      const rows = await db
        .selectFrom('requests')
        .selectAll()
        .where('status', 'in', UNFINISHED)
        .$if(serverId !== undefined, (q) => q.where('server_id', '=', serverId!))
        .orderBy('created_at')
        .orderBy('target')
        .orderBy('seq_id')
        .orderBy('request_id')
        .execute();
      return rows.map(toRow);
    },

    async dropPayloads(target, throughSeq) {
      await db
        .updateTable('requests')
        .set({ payload: null })
        .where('target', '=', target)
        .where('seq_id', '<=', throughSeq)
        .where('status', 'not in', UNFINISHED)
        .execute();
    },

    async prune(completedBefore) {
      const res = await db.deleteFrom('requests').where('status', 'in', FINISHED).where('completed_at', '<', completedBefore).executeTakeFirst();
      return Number(res.numDeletedRows);
    },
  };
}
