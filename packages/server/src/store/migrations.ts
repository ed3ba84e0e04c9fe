/**
 * @module store/migrations
 * Schema migrations, applied by `openStore`. Each migration runs once, inside one transaction
 * together with its `schema_migrations` row, so a crash never leaves a half-applied version.
 * Concurrent openers are serialised: SQLite takes the write lock up front (`BEGIN IMMEDIATE`),
 * PostgreSQL a transaction-scoped advisory lock.
 *
 * Append new migrations to `MIGRATIONS`; never edit an applied one.
 */
import { sql, type Kysely } from 'kysely';
import type { Dialect } from './db.js';
import type { Database } from './schema.js';

/** Column types that differ between the dialects; everything else is `text`/`integer`. */
interface ColumnTypes {
  /** Epoch milliseconds and other 64-bit integers. */
  time: 'integer' | 'bigint';
  /** Binary payloads. */
  bytes: 'blob' | 'bytea';
}

function columnTypes(dialect: Dialect): ColumnTypes {
  return dialect === 'postgres' ? { time: 'bigint', bytes: 'bytea' } : { time: 'integer', bytes: 'blob' };
}

/** One schema version. `up` receives a connection inside the migration transaction. */
export interface Migration {
  version: number;
  name: string;
  up(db: Kysely<Database>, dialect: Dialect): Promise<void>;
}

// Migrations build tables that are not in `Database` yet (or not any more), so they use an
// untyped view of the connection.
type AnyDb = Kysely<any>;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial',
    async up(typed, dialect) {
      const db = typed as AnyDb;
      const t = columnTypes(dialect);

      await db.schema
        .createTable('api_keys')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('key_hash', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', t.time, (c) => c.notNull())
        .addColumn('revoked_at', t.time)
        .execute();

      await db.schema
        .createTable('sessions')
        .addColumn('session_id', 'text', (c) => c.primaryKey())
        .addColumn('owner', 'text', (c) => c.notNull())
        .addColumn('tags', 'text', (c) => c.notNull())
        .addColumn('user_metadata', 'text', (c) => c.notNull())
        .addColumn('sdk_version', 'text', (c) => c.notNull())
        .addColumn('project_id', 'text')
        .addColumn('created_at', t.time, (c) => c.notNull())
        .addColumn('last_heartbeat_at', t.time, (c) => c.notNull())
        .addColumn('finished_at', t.time)
        .execute();
      await db.schema.createIndex('sessions_owner_created').on('sessions').columns(['owner', 'created_at']).execute();
      await db.schema.createIndex('sessions_heartbeat').on('sessions').columns(['finished_at', 'last_heartbeat_at']).execute();

      await db.schema
        .createTable('training_runs')
        .addColumn('model_id', 'text', (c) => c.primaryKey())
        .addColumn('owner', 'text', (c) => c.notNull())
        .addColumn('session_id', 'text', (c) => c.notNull().references('sessions.session_id'))
        .addColumn('base_model', 'text', (c) => c.notNull())
        .addColumn('lora_rank', 'integer', (c) => c.notNull())
        .addColumn('lora_config', 'text', (c) => c.notNull())
        .addColumn('user_metadata', 'text', (c) => c.notNull())
        .addColumn('created_at', t.time, (c) => c.notNull())
        .addColumn('last_request_at', t.time, (c) => c.notNull())
        .addColumn('corrupted', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('state', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('training_runs_owner_created').on('training_runs').columns(['owner', 'created_at']).execute();
      await db.schema.createIndex('training_runs_session').on('training_runs').column('session_id').execute();

      await db.schema
        .createTable('requests')
        .addColumn('request_id', 'text', (c) => c.primaryKey())
        .addColumn('owner', 'text', (c) => c.notNull())
        .addColumn('target', 'text', (c) => c.notNull())
        .addColumn('seq_id', t.time)
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('payload', t.bytes)
        .addColumn('result', t.bytes)
        .addColumn('error', 'text')
        .addColumn('created_at', t.time, (c) => c.notNull())
        .addColumn('completed_at', t.time)
        .execute();
      // Both engines treat NULLs as distinct in a unique index, so requests without a seq id
      // never collide while (target, seq_id) pairs are deduplicated.
      await db.schema.createIndex('requests_target_seq').on('requests').columns(['target', 'seq_id']).unique().execute();
      await db.schema.createIndex('requests_status_created').on('requests').columns(['status', 'created_at']).execute();
      await db.schema.createIndex('requests_completed').on('requests').column('completed_at').execute();

      await db.schema
        .createTable('checkpoints')
        .addColumn('model_id', 'text', (c) => c.notNull().references('training_runs.model_id'))
        .addColumn('checkpoint_id', 'text', (c) => c.notNull())
        .addColumn('owner', 'text', (c) => c.notNull())
        .addColumn('checkpoint_type', 'text', (c) => c.notNull())
        .addColumn('tinker_path', 'text', (c) => c.notNull().unique())
        .addColumn('storage_path', 'text', (c) => c.notNull())
        .addColumn('size_bytes', t.time, (c) => c.notNull())
        .addColumn('public', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', t.time, (c) => c.notNull())
        .addColumn('expires_at', t.time)
        .addColumn('ephemeral', 'integer', (c) => c.notNull().defaultTo(0))
        .addPrimaryKeyConstraint('checkpoints_pk', ['model_id', 'checkpoint_id'])
        .execute();
      await db.schema.createIndex('checkpoints_owner_created').on('checkpoints').columns(['owner', 'created_at']).execute();
      await db.schema.createIndex('checkpoints_expires').on('checkpoints').column('expires_at').execute();

      await db.schema
        .createTable('samplers')
        .addColumn('sampler_id', 'text', (c) => c.primaryKey())
        .addColumn('owner', 'text', (c) => c.notNull())
        .addColumn('session_id', 'text', (c) => c.notNull().references('sessions.session_id'))
        .addColumn('base_model', 'text', (c) => c.notNull())
        .addColumn('model_path', 'text')
        .addColumn('created_at', t.time, (c) => c.notNull())
        .execute();
      await db.schema.createIndex('samplers_session').on('samplers').column('session_id').execute();
    },
  },
  {
    version: 2,
    name: 'api_key_prefix',
    async up(db: AnyDb) {
      // The first characters of a key, kept so `lathe keys list` can tell keys apart (older keys: null).
      await db.schema.alterTable('api_keys').addColumn('prefix', 'text').execute();
    },
  },
  {
    version: 3,
    name: 'sampler_client_counter',
    async up(db: AnyDb) {
      // The last `client_counter` handed out by join_sampling_session (the original client is 0).
      await db.schema.alterTable('samplers').addColumn('client_counter', 'integer', (c) => c.notNull().defaultTo(0)).execute();
    },
  },
  {
    version: 4,
    name: 'optimizer_and_checkpoint_metadata',
    async up(db: AnyDb) {
      // A run's optimizer (Tinker's OptimizerConfig as JSON; null: AdamW, as for every older run)
      // and a checkpoint's user_metadata (JSON; null: none given).
      await db.schema.alterTable('training_runs').addColumn('optimizer_config', 'text').execute();
      await db.schema.alterTable('checkpoints').addColumn('user_metadata', 'text').execute();
    },
  },
  {
    version: 5,
    name: 'server_ownership',
    async up(db: AnyDb) {
      // Several servers may share one database: a run lives on the server that created it (its worker
      // holds the adapter, its data dir the snapshots), and a logged request is resumed only by the
      // server that accepted it. Older rows (null) are adopted by the first server that starts.
      await db.schema.alterTable('training_runs').addColumn('server_id', 'text').execute();
      await db.schema.alterTable('requests').addColumn('server_id', 'text').execute();
      await db.schema.createIndex('requests_server_status').on('requests').columns(['server_id', 'status']).execute();
    },
  },
  {
    version: 6,
    name: 'run_metrics',
    async up(db: AnyDb, dialect) {
      // The dashboard's curves: points recorded from the request log, and metrics clients report.
      const t = columnTypes(dialect);
      await db.schema
        .createTable('run_metrics')
        .addColumn('id', dialect === 'postgres' ? 'bigserial' : 'integer', (c) => (dialect === 'postgres' ? c.primaryKey() : c.primaryKey().autoIncrement()))
        .addColumn('model_id', 'text', (c) => c.notNull().references('training_runs.model_id'))
        .addColumn('source', 'text', (c) => c.notNull())
        .addColumn('seq', t.time, (c) => c.notNull())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('step', t.time, (c) => c.notNull())
        .addColumn('tokens', t.time, (c) => c.notNull().defaultTo(0))
        .addColumn('metric_values', 'text', (c) => c.notNull())
        .addColumn('recorded_at', t.time, (c) => c.notNull())
        .execute();
      await db.schema.createIndex('run_metrics_point').on('run_metrics').columns(['model_id', 'source', 'seq']).unique().execute();
      await db.schema.createIndex('run_metrics_kind_time').on('run_metrics').columns(['kind', 'recorded_at']).execute();
    },
  },
];

/** Arbitrary constant key for the PostgreSQL advisory lock that serialises migrators. */
const PG_MIGRATION_LOCK_KEY = 0x1a7e_0001;

/**
 * Applies every migration in `MIGRATIONS` that `schema_migrations` does not list yet.
 * Idempotent; safe to call from several processes at once. Returns the versions applied.
 */
export async function migrate(db: Kysely<Database>, dialect: Dialect, migrations: readonly Migration[] = MIGRATIONS): Promise<number[]> {
  // Fast path without any lock: an up-to-date database is only read. Besides saving a write
  // lock on every start, this keeps a second SQLite store on the same file in the same process
  // from blocking (better-sqlite3 waits synchronously, so it would stall the lock holder).
  const applied = await appliedVersions(db);
  if (applied !== undefined && migrations.every((m) => applied.has(m.version))) return [];

  return db.connection().execute(async (conn) => {
    // The lock is taken before anything is read, so the check-then-apply below is race-free.
    if (dialect === 'sqlite') {
      await sql`begin immediate`.execute(conn);
    } else {
      await sql`begin`.execute(conn);
      await sql`select pg_advisory_xact_lock(${PG_MIGRATION_LOCK_KEY})`.execute(conn);
    }
    try {
      await conn.schema
        .createTable('schema_migrations')
        .ifNotExists()
        .addColumn('version', 'integer', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('applied_at', columnTypes(dialect).time, (c) => c.notNull())
        .execute();
      const done = new Set((await conn.selectFrom('schema_migrations').select('version').execute()).map((r) => Number(r.version)));
      const applied: number[] = [];
      for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
        if (done.has(m.version)) continue;
        await m.up(conn, dialect);
        await conn.insertInto('schema_migrations').values({ version: m.version, name: m.name, applied_at: Date.now() }).execute();
        applied.push(m.version);
      }
      await sql`commit`.execute(conn);
      return applied;
    } catch (err) {
      await sql`rollback`.execute(conn).catch(() => {});
      throw err;
    }
  });
}

/** Versions listed in `schema_migrations`, or undefined when the table does not exist yet. */
async function appliedVersions(db: Kysely<Database>): Promise<Set<number> | undefined> {
  try {
    const rows = await db.selectFrom('schema_migrations').select('version').execute();
    return new Set(rows.map((r) => Number(r.version)));
  } catch {
    return undefined; // no table yet (or unreadable): the locked path below creates/reports it
  }
}
