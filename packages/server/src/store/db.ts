/**
 * @module store/db
 * Driver setup: turns a store URL into a `Kysely<Database>` for SQLite (better-sqlite3) or
 * PostgreSQL (pg), plus small value converters shared by the repositories. This and
 * `migrations.ts` are the only places where the two dialects differ.
 */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import {
  CompiledQuery,
  Kysely,
  PostgresDialect,
  SqliteAdapter,
  SqliteIntrospector,
  SqliteQueryCompiler,
  type DatabaseConnection,
  type Dialect as KyselyDialect,
  type Driver,
  type QueryResult,
} from 'kysely';
import pg from 'pg';
import type { Database } from './schema.js';

/** The two supported engines. */
export type Dialect = 'sqlite' | 'postgres';

/**
 * How long a SQLite statement keeps retrying while another process holds the write lock (ms)
 * before it fails with `database is locked`. The wait is asynchronous (see {@link BusyRetryDriver}):
 * the event loop goes on serving health checks, reads and long polls meanwhile.
 */
export const SQLITE_BUSY_WAIT_MS = 10_000;

/** While opening (pragmas, before anything else runs) SQLite itself may wait this long for a lock (ms). */
const SQLITE_OPEN_TIMEOUT_MS = 5000;

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
export function connect(url: string): { dialect: Dialect; db: Kysely<Database>; lockWaits: () => number } {
  if (isPostgresUrl(url)) return { dialect: 'postgres', db: connectPostgres(url), lockWaits: () => 0 };
  const waits = { count: 0 };
  return { dialect: 'sqlite', db: connectSqlite(url, waits), lockWaits: () => waits.count };
}

function connectSqlite(url: string, waits: { count: number }): Kysely<Database> {
  const path = url.replace(/^sqlite:(\/\/)?/i, '');
  if (path === '') throw new Error('openStore: empty SQLite path');
  const memory = path === ':memory:';
  if (!memory) mkdirSync(dirname(resolve(path)), { recursive: true });
  const database = new SqliteDatabase(path, { timeout: SQLITE_OPEN_TIMEOUT_MS });
  try {
    if (!memory) {
      const mode = database.pragma('journal_mode = WAL', { simple: true });
      if (String(mode).toLowerCase() !== 'wal') throw new Error(`openStore: could not enable WAL on ${path} (got ${String(mode)})`);
      // Safe with WAL: a crash can lose the last commits but never corrupts the database.
      database.pragma('synchronous = NORMAL');
    }
    database.pragma('foreign_keys = ON');
    // From here on SQLite never waits for a lock itself: better-sqlite3 would wait synchronously,
    // freezing the whole server. BusyRetryDriver waits asynchronously instead.
    database.pragma('busy_timeout = 0');
  } catch (err) {
    database.close();
    throw err;
  }
  return new Kysely<Database>({ dialect: new BusyRetrySqliteDialect(withStatementCache(database), waits) });
}

/** True for SQLite's "another connection holds the lock" errors (SQLITE_BUSY and its extended codes). */
export function isSqliteBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('SQLITE_BUSY');
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Kysely's SQLite dialect with {@link BusyRetryDriver} in place of its driver. */
class BusyRetrySqliteDialect implements KyselyDialect {
  constructor(
    private readonly database: SqliteDatabase.Database,
    private readonly waits: { count: number },
  ) {}
  createDriver(): Driver {
    return new BusyRetryDriver(this.database, this.waits);
  }
  createQueryCompiler(): SqliteQueryCompiler {
    return new SqliteQueryCompiler();
  }
  createAdapter(): SqliteAdapter {
    return new SqliteAdapter();
  }
  createIntrospector(db: Kysely<unknown>): SqliteIntrospector {
    return new SqliteIntrospector(db);
  }
}

/**
 * A better-sqlite3 driver whose waits for another process's lock are asynchronous: a statement
 * that gets SQLITE_BUSY is retried after a short timer (backing off to 50 ms) for up to
 * {@link SQLITE_BUSY_WAIT_MS}, and nothing is held meanwhile, so other statements (reads never
 * wait under WAL) run in between. Kysely's own driver serialises every query through one mutex;
 * here only an open transaction excludes the other connections (all share the one handle, and a
 * statement run while another caller's transaction is open would land inside it).
 */
class BusyRetryDriver implements Driver {
  /** The connection whose transaction is open on the shared handle, and a promise of its end. */
  private owner: { connection: DatabaseConnection; ended: Promise<void>; end: () => void } | null = null;

  /** `waits.count`: statements waiting for another process's lock right now. */
  constructor(
    private readonly database: SqliteDatabase.Database,
    private readonly waits: { count: number },
  ) {}

  async init(): Promise<void> {}

  async acquireConnection(): Promise<DatabaseConnection> {
    return new BusyRetryConnection(this);
  }

  async beginTransaction(connection: DatabaseConnection): Promise<void> {
    // IMMEDIATE takes the write lock up front: a deferred transaction could hit SQLITE_BUSY on its
    // first write, where retrying the statement cannot help.
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('commit'));
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('rollback'));
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    // A connection handed back with its transaction open (a caller's bug) must not block the rest.
    if (this.owner?.connection === connection) {
      if (this.database.inTransaction) this.database.exec('rollback');
      this.settle(connection);
    }
  }

  async destroy(): Promise<void> {
    this.database.close();
  }

  /** Runs one statement for `connection`, waiting (asynchronously) for other transactions and locks. */
  async run(connection: DatabaseConnection, compiled: CompiledQuery): Promise<QueryResult<unknown>> {
    const deadline = Date.now() + SQLITE_BUSY_WAIT_MS;
    for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
      while (this.owner !== null && this.owner.connection !== connection) await this.owner.ended;
      try {
        return this.runNow(connection, compiled);
      } catch (error) {
        this.settle(connection);
        if (!isSqliteBusy(error) || Date.now() >= deadline) throw error;
      }
      this.waits.count++;
      await sleep(delay).finally(() => this.waits.count--);
    }
  }

  /** Synchronous: no other statement can interleave between the checks and the statement. */
  private runNow(connection: DatabaseConnection, { sql, parameters }: CompiledQuery): QueryResult<unknown> {
    const statement = this.database.prepare(sql);
    let result: QueryResult<unknown>;
    if (statement.reader) {
      result = { rows: statement.all(parameters) };
    } else {
      const { changes, lastInsertRowid } = statement.run(parameters);
      result = { numAffectedRows: BigInt(changes), insertId: BigInt(lastInsertRowid), rows: [] };
    }
    if (this.database.inTransaction && this.owner === null) {
      let end = (): void => {};
      const ended = new Promise<void>((resolve) => (end = resolve));
      this.owner = { connection, ended, end };
    }
    this.settle(connection);
    return result;
  }

  /** Ends `connection`'s ownership once its transaction is over. */
  private settle(connection: DatabaseConnection): void {
    if (this.owner?.connection === connection && !this.database.inTransaction) {
      const { end } = this.owner;
      this.owner = null;
      end();
    }
  }
}

class BusyRetryConnection implements DatabaseConnection {
  constructor(private readonly driver: BusyRetryDriver) {}

  executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    return this.driver.run(this, compiled) as Promise<QueryResult<R>>;
  }

  // eslint-disable-next-line require-yield
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('the SQLite store does not stream queries');
  }
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
