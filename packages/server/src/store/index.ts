/**
 * @module store
 * Persistence for the Lathe server: API keys, sessions, training runs, the request (futures)
 * log, checkpoints and samplers, on SQLite (default, zero-ops) or PostgreSQL, through one
 * Kysely code path.
 *
 * @example
 * const store = await openStore('lathe.db'); // or 'postgres://user@host/db'
 * const { key } = await store.keys.create('alice');
 * const who = await store.keys.authenticate(key);
 * await store.close();
 */
import { sql, type Kysely } from 'kysely';
import { createCheckpointRepo, type CheckpointRepo } from './checkpoints.js';
import { connect, type Dialect } from './db.js';
import { createKeyRepo, type KeyRepo } from './keys.js';
import { createMetricsRepo, type MetricsRepo } from './metrics.js';
import { migrate } from './migrations.js';
import { createRequestRepo, type RequestRepo } from './requests.js';
import { createRunRepo, type RunRepo } from './runs.js';
import { createSamplerRepo, type SamplerRepo } from './samplers.js';
import type { Database } from './schema.js';
import { createSessionRepo, type SessionRepo } from './sessions.js';

export type { CheckpointRepo, CheckpointRow } from './checkpoints.js';
export { StoreConflictError, type Dialect } from './db.js';
export { hashKey, KEY_PREFIX_LENGTH, type CreatedKey, type KeyInfo, type KeyRepo } from './keys.js';
export type { MetricPoint, MetricSource, MetricsRepo, RunTotals, ServerPoint, UnrecordedRequest } from './metrics.js';
export { MIGRATIONS, migrate, type Migration } from './migrations.js';
export type { RequestError, RequestRepo, RequestRow, RequestStatus } from './requests.js';
export { DEFAULT_OPTIMIZER, type LoraConfig, type OptimizerConfig, type RunRepo, type RunRow, type RunState } from './runs.js';
export type { SamplerRepo, SamplerRow } from './samplers.js';
export type { Database } from './schema.js';
export type { SessionRepo, SessionRow } from './sessions.js';

/** An open store: the repositories plus the raw Kysely handle. */
export interface Store {
  readonly dialect: Dialect;
  readonly db: Kysely<Database>;
  keys: KeyRepo;
  sessions: SessionRepo;
  runs: RunRepo;
  requests: RequestRepo;
  checkpoints: CheckpointRepo;
  samplers: SamplerRepo;
  /** The dashboard's metric points and run totals. */
  metrics: MetricsRepo;
  /**
   * Gives every run and logged request that no server owns yet (rows from before migration 5) to
   * `serverId`, all at once: of several servers starting together, one takes them all. Returns how
   * many rows it took.
   */
  adoptUnowned(serverId: string): Promise<number>;
  /** Statements waiting (asynchronously) for a lock another process holds; always 0 on PostgreSQL. */
  readonly lockWaits: number;
  /** Closes the connection(s). The store must not be used afterwards. */
  close(): Promise<void>;
}

/** Arbitrary constant key of the PostgreSQL advisory lock that serialises {@link Store.adoptUnowned}. */
const ADOPT_LOCK_KEY = 0x1a7e_0002;

/**
 * Opens (and migrates) a store. `url` is a `postgres://` / `postgresql://` URL, or a SQLite
 * file path (parent directories are created) or `:memory:`. Migrations are idempotent and
 * tracked in `schema_migrations`. SQLite runs in WAL mode with foreign keys on, and waits
 * for other processes' locks asynchronously (see `SQLITE_BUSY_WAIT_MS`); PostgreSQL returns int8 columns as JS numbers (per-pool parser).
 *
 * @example
 * const store = await openStore(process.env.LATHE_DATABASE_URL ?? 'data/lathe.db');
 */
export async function openStore(url: string): Promise<Store> {
  const { dialect, db, lockWaits } = connect(url);
  try {
    await migrate(db, dialect);
  } catch (err) {
    await db.destroy().catch(() => {});
    throw err;
  }
  let closed: Promise<void> | undefined;
  return {
    dialect,
    db,
    keys: createKeyRepo(db),
    sessions: createSessionRepo(db),
    runs: createRunRepo(db),
    requests: createRequestRepo(db),
    checkpoints: createCheckpointRepo(db),
    samplers: createSamplerRepo(db),
    metrics: createMetricsRepo(db),
    async adoptUnowned(serverId) {
      return db.transaction().execute(async (tx) => {
        // SQLite serialises writers anyway; PostgreSQL would let two adopters split the rows.
        if (dialect === 'postgres') await sql`select pg_advisory_xact_lock(${ADOPT_LOCK_KEY})`.execute(tx);
        const runs = await tx.updateTable('training_runs').set({ server_id: serverId }).where('server_id', 'is', null).executeTakeFirst();
        const requests = await tx.updateTable('requests').set({ server_id: serverId }).where('server_id', 'is', null).executeTakeFirst();
        return Number(runs.numUpdatedRows) + Number(requests.numUpdatedRows);
      });
    },
    get lockWaits() {
      return lockWaits();
    },
    close() {
      closed ??= db.destroy();
      return closed;
    },
  };
}
