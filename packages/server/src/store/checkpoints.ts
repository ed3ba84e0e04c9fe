/**
 * @module store/checkpoints
 * Saved weights. A checkpoint is keyed by `(modelId, checkpointId)` where `checkpointId` is
 * `weights/NAME`, `sampler_weights/NAME` or `external_weights/NAME`; `tinkerPath` (`tinker://{modelId}/{checkpointId}`)
 * is unique too. Reads by id or path see the owner's checkpoints and public ones; writes are
 * owner-only. Ephemeral checkpoints (temporary sampler weights) are left out of listings.
 */
import type { ExpressionBuilder, ExpressionWrapper, Kysely, Selectable, SqlBool, Updateable } from 'kysely';
import { affected, bit, fromBit, parseJson, StoreConflictError } from './db.js';
import type { Database, CheckpointsTable } from './schema.js';

/** A checkpoint as the API sees it. */
export interface CheckpointRow {
  modelId: string;
  /** `weights/NAME`, `sampler_weights/NAME` or `external_weights/NAME`. */
  checkpointId: string;
  owner: string;
  /** `external`: a Hugging Face PEFT adapter folder (save_weights_external), not loadable as state. */
  checkpointType: 'training' | 'sampler' | 'external';
  tinkerPath: string;
  /** Where the files live (server-side; never sent to clients). */
  storagePath: string;
  sizeBytes: number;
  public: boolean;
  createdAt: number;
  expiresAt: number | null;
  ephemeral: boolean;
  /** What the client attached at save time (`user_metadata`), or null. */
  userMetadata: Record<string, string> | null;
}

/** Checkpoint storage. */
export interface CheckpointRepo {
  /**
   * Records a checkpoint with `createdAt = now`. An existing `(modelId, checkpointId)` is
   * replaced (all fields, `createdAt` included) except `public`, which it keeps; a new one is
   * private. The run must exist (foreign key); another owner's checkpoint at the same key
   * throws `StoreConflictError`.
   */
  put(c: Omit<CheckpointRow, 'createdAt' | 'public' | 'userMetadata'> & { now: number; userMetadata?: Record<string, string> | null }): Promise<CheckpointRow>;
  /** The checkpoint if the owner's or public, else undefined. */
  get(modelId: string, checkpointId: string, owner: string): Promise<CheckpointRow | undefined>;
  /** The checkpoint at `tinkerPath` if the owner's or public, else undefined. */
  byTinkerPath(tinkerPath: string, owner: string): Promise<CheckpointRow | undefined>;
  /** A run's non-ephemeral checkpoints visible to `owner` (own or public), newest first. */
  listForRun(modelId: string, owner: string): Promise<CheckpointRow[]>;
  /** The owner's non-ephemeral checkpoints, newest first, and how many there are in all. */
  listForOwner(owner: string, limit: number, offset: number): Promise<{ checkpoints: CheckpointRow[]; total: number }>;
  /** Deletes the owner's checkpoint and returns it (the caller removes the files); undefined if none. */
  delete(modelId: string, checkpointId: string, owner: string): Promise<CheckpointRow | undefined>;
  /** Publishes/unpublishes the owner's checkpoint; false when not found (or not the owner's). */
  setPublic(modelId: string, checkpointId: string, owner: string, isPublic: boolean): Promise<boolean>;
  /** Sets/clears the owner's checkpoint expiry; false when not found (or not the owner's). */
  setExpiry(modelId: string, checkpointId: string, owner: string, expiresAt: number | null): Promise<boolean>;
  /** Every checkpoint (any owner, ephemeral included) with `expiresAt <= now`, soonest first. */
  expired(now: number): Promise<CheckpointRow[]>;
  /**
   * How many non-ephemeral checkpoints the owner has and their bytes; with `projectId`, only those
   * of runs whose session is in that project.
   */
  usage(owner: string, projectId?: string): Promise<{ count: number; bytes: number }>;
}

function toRow(r: Selectable<CheckpointsTable>): CheckpointRow {
  return {
    modelId: r.model_id,
    checkpointId: r.checkpoint_id,
    owner: r.owner,
    checkpointType: r.checkpoint_type as CheckpointRow['checkpointType'],
    tinkerPath: r.tinker_path,
    storagePath: r.storage_path,
    sizeBytes: Number(r.size_bytes),
    public: fromBit(r.public),
    createdAt: Number(r.created_at),
    expiresAt: r.expires_at === null ? null : Number(r.expires_at),
    ephemeral: fromBit(r.ephemeral),
    userMetadata: r.user_metadata === null ? null : parseJson<Record<string, string>>(r.user_metadata),
  };
}

/** The checkpoints `owner` may read: its own and public ones. */
function visibleTo(owner: string): (eb: ExpressionBuilder<Database, 'checkpoints'>) => ExpressionWrapper<Database, 'checkpoints', SqlBool> {
  return (eb: ExpressionBuilder<Database, 'checkpoints'>) => eb.or([eb('owner', '=', owner), eb('public', '=', 1)]);
}

export function createCheckpointRepo(db: Kysely<Database>): CheckpointRepo {
  /** Updates the owner's checkpoint; false when not found (or not the owner's). */
  const updateOwned = async (modelId: string, checkpointId: string, owner: string, values: Updateable<CheckpointsTable>): Promise<boolean> => {
    const res = await db
      .updateTable('checkpoints')
      .set(values)
      .where('model_id', '=', modelId)
      .where('checkpoint_id', '=', checkpointId)
      .where('owner', '=', owner)
      .executeTakeFirst();
    return affected(res.numUpdatedRows) > 0;
  };

  return {
    async put(c) {
      // One upsert statement: atomic, and `public` survives a replace.
      const row = await db
        .insertInto('checkpoints')
        .values({
          model_id: c.modelId,
          checkpoint_id: c.checkpointId,
          owner: c.owner,
          checkpoint_type: c.checkpointType,
          tinker_path: c.tinkerPath,
          storage_path: c.storagePath,
          size_bytes: c.sizeBytes,
          public: bit(false),
          created_at: c.now,
          expires_at: c.expiresAt,
          ephemeral: bit(c.ephemeral),
          user_metadata: c.userMetadata ? JSON.stringify(c.userMetadata) : null,
        })
        .onConflict((oc) =>
          oc
            .columns(['model_id', 'checkpoint_id'])
            .doUpdateSet((eb) => ({
            checkpoint_type: eb.ref('excluded.checkpoint_type'),
            tinker_path: eb.ref('excluded.tinker_path'),
            storage_path: eb.ref('excluded.storage_path'),
            size_bytes: eb.ref('excluded.size_bytes'),
            created_at: eb.ref('excluded.created_at'),
            expires_at: eb.ref('excluded.expires_at'),
            ephemeral: eb.ref('excluded.ephemeral'),
            user_metadata: eb.ref('excluded.user_metadata'),
            }))
            // Never take over another owner's checkpoint.
            .where((eb) => eb('checkpoints.owner', '=', eb.ref('excluded.owner'))),
        )
        .returningAll()
        .executeTakeFirst();
      if (row === undefined) throw new StoreConflictError(`checkpoint ${c.modelId}/${c.checkpointId} belongs to another owner`);
      return toRow(row);
    },

    async get(modelId, checkpointId, owner) {
      const r = await db
        .selectFrom('checkpoints')
        .selectAll()
        .where('model_id', '=', modelId)
        .where('checkpoint_id', '=', checkpointId)
        .where(visibleTo(owner))
        .executeTakeFirst();
      return r === undefined ? undefined : toRow(r);
    },

    async byTinkerPath(tinkerPath, owner) {
      const r = await db
        .selectFrom('checkpoints')
        .selectAll()
        .where('tinker_path', '=', tinkerPath)
        .where(visibleTo(owner))
        .executeTakeFirst();
      return r === undefined ? undefined : toRow(r);
    },

    async listForRun(modelId, owner) {
      const rows = await db
        .selectFrom('checkpoints')
        .selectAll()
        .where('model_id', '=', modelId)
        .where('ephemeral', '=', 0)
        .where(visibleTo(owner))
        .orderBy('created_at', 'desc')
        .orderBy('checkpoint_id', 'desc')
        .execute();
      return rows.map(toRow);
    },

    async listForOwner(owner, limit, offset) {
      const [rows, count] = await Promise.all([
        db
          .selectFrom('checkpoints')
          .selectAll()
          .where('owner', '=', owner)
          .where('ephemeral', '=', 0)
          .orderBy('created_at', 'desc')
          .orderBy('model_id', 'desc')
          .orderBy('checkpoint_id', 'desc')
          .limit(limit)
          .offset(offset)
          .execute(),
        db
          .selectFrom('checkpoints')
          .select((eb) => eb.fn.countAll<number>().as('n'))
          .where('owner', '=', owner)
          .where('ephemeral', '=', 0)
          .executeTakeFirstOrThrow(),
      ]);
      return { checkpoints: rows.map(toRow), total: Number(count.n) };
    },

    async delete(modelId, checkpointId, owner) {
      const r = await db
        .deleteFrom('checkpoints')
        .where('model_id', '=', modelId)
        .where('checkpoint_id', '=', checkpointId)
        .where('owner', '=', owner)
        .returningAll()
        .executeTakeFirst();
      return r === undefined ? undefined : toRow(r);
    },

    setPublic: (modelId, checkpointId, owner, isPublic) => updateOwned(modelId, checkpointId, owner, { public: bit(isPublic) }),

    setExpiry: (modelId, checkpointId, owner, expiresAt) => updateOwned(modelId, checkpointId, owner, { expires_at: expiresAt }),

    async expired(now) {
      const rows = await db
        .selectFrom('checkpoints')
        .selectAll()
        .where('expires_at', 'is not', null)
        .where('expires_at', '<=', now)
        .orderBy('expires_at')
        .orderBy('model_id')
        .orderBy('checkpoint_id')
        .execute();
      return rows.map(toRow);
    },

    async usage(owner, projectId) {
      let query = db
        .selectFrom('checkpoints')
        .select((eb) => [eb.fn.countAll<number>().as('n'), eb.fn.sum<number | string | null>('checkpoints.size_bytes').as('bytes')])
        .where('checkpoints.owner', '=', owner)
        .where('checkpoints.ephemeral', '=', 0);
      if (projectId !== undefined) {
        query = query
          .innerJoin('training_runs', 'training_runs.model_id', 'checkpoints.model_id')
          .innerJoin('sessions', 'sessions.session_id', 'training_runs.session_id')
          .where('sessions.project_id', '=', projectId);
      }
      const row = await query.executeTakeFirstOrThrow();
      // PostgreSQL sums bigints as numeric (a string); SQLite as an integer; both null over no rows.
      return { count: Number(row.n), bytes: Number(row.bytes ?? 0) };
    },
  };
}
