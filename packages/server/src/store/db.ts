/**
 * @module store/db
 * Driver setup: turns a store URL into a `Kysely<Database>` for SQLite (better-sqlite3) or
 * PostgreSQL (pg), plus small value converters shared by the repositories. This and
 * `migrations.ts` are the only places where the two dialects differ.
 */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect } from 'kysely';
import pg from 'pg';
import type { Database } from './schema.js';

/** The two supported engines. */
export type Dialect = 'sqlite' | 'postgres';

/** How long a SQLite connection waits for a lock held by another process (ms). */
const SQLITE_BUSY_TIMEOUT_MS = 5000;

/** PostgreSQL type oid of `int8` / `bigint` (also the type of `count(*)`). */
const INT8_OID = 20;

/** True for `postgres://` and `postgresql://` URLs. */
export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:\/\//i.test(url);
}

/**
 * Opens a Kysely instance for `url`: a `postgres://` / `postgresql://` URL, or a SQLite file
 * path (`:memory:` for an in-memory database; a `sqlite:` prefix is tolerated). Does not migrate.
 */
export function connect(url: string): { dialect: Dialect; db: Kysely<Database> } {
  if (isPostgresUrl(url)) return { dialect: 'postgres', db: connectPostgres(url) };
  return { dialect: 'sqlite', db: connectSqlite(url) };
}

function connectSqlite(url: string): Kysely<Database> {
  const path = url.replace(/^sqlite:(\/\/)?/i, '');
  if (path === '') throw new Error('openStore: empty SQLite path');
  const memory = path === ':memory:';
  if (!memory) mkdirSync(dirname(resolve(path)), { recursive: true });
  const database = new SqliteDatabase(path);
  try {
    database.pragma(`busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
    if (!memory) {
      const mode = database.pragma('journal_mode = WAL', { simple: true });
      if (String(mode).toLowerCase() !== 'wal') throw new Error(`openStore: could not enable WAL on ${path} (got ${String(mode)})`);
      // Safe with WAL: a crash can lose the last commits but never corrupts the database.
      database.pragma('synchronous = NORMAL');
    }
    database.pragma('foreign_keys = ON');
  } catch (err) {
    database.close();
    throw err;
  }
  return new Kysely<Database>({ dialect: new SqliteDialect({ database: withStatementCache(database) }) });
}

/**
 * Kysely prepares a fresh statement for every query; preparing dominated the server's CPU time on
 * the futures hot path. The queries are a small fixed set, so cache statements by SQL text.
 */
function withStatementCache(database: SqliteDatabase.Database): SqliteDatabase.Database {
  const cache = new Map<string, SqliteDatabase.Statement>();
  const prepare = database.prepare.bind(database);
  return new Proxy(database, {
    get(target, key, receiver) {
      if (key === 'prepare') {
        return (sql: string) => {
          let statement = cache.get(sql);
          if (!statement) {
            statement = prepare(sql);
            if (cache.size < 1000) cache.set(sql, statement);
          }
          return statement;
        };
      }
      const value: unknown = Reflect.get(target, key, receiver);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

function connectPostgres(url: string): Kysely<Database> {
  // Per-pool type parsers: int8 (times, counts, sizes) as a JS number. The global
  // `pg.types.setTypeParser` is deliberately left alone so other pg users are unaffected.
  const types: pg.CustomTypesConfig = {
    getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
      if (oid === INT8_OID && format !== 'binary') return (value: string) => Number(value);
      return format === undefined ? pg.types.getTypeParser(oid) : pg.types.getTypeParser(oid, format);
    }) as pg.CustomTypesConfig['getTypeParser'],
  };
  const pool = new pg.Pool({ connectionString: url, types, max: 10 });
  // An idle client losing its connection (server restart) must not crash the process.
  pool.on('error', () => {});
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
}

/** Binary column value (Buffer from either driver) → a plain `Uint8Array` copy. */
export function toBytes(value: Uint8Array | null): Uint8Array | null {
  if (value === null) return null;
  return new Uint8Array(value);
}

/** Boolean → stored bit. */
export function bit(value: boolean): 0 | 1 {
  return value ? 1 : 0;
}

/** Stored bit (0/1; tolerant of a driver returning a boolean) → boolean. */
export function fromBit(value: unknown): boolean {
  return value === 1 || value === true || value === '1';
}

/** Parses a JSON text column. */
export function parseJson<T>(text: string): T {
  return JSON.parse(text) as T;
}

/** Kysely's affected-row counts (bigint) → number. */
export function affected(n: bigint | number | undefined): number {
  return Number(n ?? 0);
}

/**
 * Thrown when an idempotent create (run, sampler, request) finds the id already taken by a
 * different owner. Ids embed an unguessable session UUID, so this signals a bug or an attack,
 * never a normal retry; routes should answer it like "not found".
 */
export class StoreConflictError extends Error {
  override readonly name = 'StoreConflictError';
  constructor(message: string) {
    super(message);
  }
}
