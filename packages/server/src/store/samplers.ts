/**
 * @module store/samplers
 * Sampling sessions (`create_sampling_session`). Ids come from the route
 * (`{session_id}:sample:{n}`), so creation is idempotent.
 */
import type { Kysely, Selectable } from 'kysely';
import { StoreConflictError } from './db.js';
import type { Database, SamplersTable } from './schema.js';

/** A sampler as the API sees it. */
export interface SamplerRow {
  samplerId: string;
  owner: string;
  sessionId: string;
  baseModel: string;
  /** The tinker path of the weights it samples from; null for the base model. */
  modelPath: string | null;
  createdAt: number;
}

/** Sampler storage. */
export interface SamplerRepo {
  /**
   * Creates a sampler with `createdAt = now`. A duplicate `samplerId` returns the existing row
   * (one owned by someone else throws `StoreConflictError`). The session must exist (foreign key).
   */
  create(s: Omit<SamplerRow, 'createdAt'> & { now: number }): Promise<SamplerRow>;
  /** The owner's sampler, or undefined. */
  get(samplerId: string, owner: string): Promise<SamplerRow | undefined>;
  /** Sampler ids of a session, oldest first (caller checks session ownership). */
  listForSession(sessionId: string): Promise<string[]>;
  /**
   * Hands out the owner's sampler's next client counter (1, 2, …; the original client is 0),
   * atomically, so concurrent joins get distinct numbers; undefined for an unknown sampler.
   */
  joinClient(samplerId: string, owner: string): Promise<number | undefined>;
}

function toRow(r: Selectable<SamplersTable>): SamplerRow {
  return {
    samplerId: r.sampler_id,
    owner: r.owner,
    sessionId: r.session_id,
    baseModel: r.base_model,
    modelPath: r.model_path,
    createdAt: Number(r.created_at),
  };
}

export function createSamplerRepo(db: Kysely<Database>): SamplerRepo {
  return {
    async create(s) {
      const inserted = await db
        .insertInto('samplers')
        .values({ sampler_id: s.samplerId, owner: s.owner, session_id: s.sessionId, base_model: s.baseModel, model_path: s.modelPath, created_at: s.now })
        .onConflict((oc) => oc.column('sampler_id').doNothing())
        .returningAll()
        .executeTakeFirst();
      const row = inserted ?? (await db.selectFrom('samplers').selectAll().where('sampler_id', '=', s.samplerId).executeTakeFirst());
      if (row === undefined) throw new Error(`samplers.create: ${s.samplerId} neither inserted nor found`);
      if (row.owner !== s.owner) throw new StoreConflictError(`sampler id ${s.samplerId} belongs to another owner`);
      return toRow(row);
    },

    async get(samplerId, owner) {
      const r = await db.selectFrom('samplers').selectAll().where('sampler_id', '=', samplerId).where('owner', '=', owner).executeTakeFirst();
      return r === undefined ? undefined : toRow(r);
    },

    async listForSession(sessionId) {
      const rows = await db.selectFrom('samplers').select('sampler_id').where('session_id', '=', sessionId).orderBy('created_at').orderBy('sampler_id').execute();
      return rows.map((r) => r.sampler_id);
    },

    async joinClient(samplerId, owner) {
      const r = await db
        .updateTable('samplers')
        .set((eb) => ({ client_counter: eb('client_counter', '+', 1) }))
        .where('sampler_id', '=', samplerId)
        .where('owner', '=', owner)
        .returning('client_counter')
        .executeTakeFirst();
      return r === undefined ? undefined : Number(r.client_counter);
    },
  };
}
