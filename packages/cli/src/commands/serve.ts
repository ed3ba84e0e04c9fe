/**
 * @module `lathe serve` and `lathe keys`: run the server, manage API keys (create, list, revoke).
 */
import path from 'node:path';
import { createServer, defaultDatabaseUrl, generateWorkerToken, openStore, prepareDataDir, type Store } from '@lathe/server';
import { formatTable } from '../table.js';

/** Where the server keeps its database, checkpoints and models unless told otherwise. */
export const DEFAULT_DATA_DIR = '.lathe';

/** Options shared by commands that open the server's data. */
export interface DataOptions {
  dataDir: string;
  databaseUrl?: string;
}

/** The database location for a data directory (the server's own default). */
export function databaseUrl(options: DataOptions): string {
  return defaultDatabaseUrl(options.dataDir, options.databaseUrl);
}

/** Options for {@link serve}. */
export interface ServeOptions extends DataOptions {
  host: string;
  port: number;
  modelsDir?: string;
  /** Model name → folder path (or other model) it is served from. */
  modelAlias?: Record<string, string>;
  /** Open a port for remote workers (`lathe worker --connect`). */
  workerPort?: number;
  workerHost?: string;
  /** Default: `$LATHE_WORKER_TOKEN`, else a new one (printed). */
  workerToken?: string;
  /** Start local worker processes; default true. */
  localWorkers?: boolean;
  /** Fair-scheduling limits (see `SchedulingOptions`); the server's defaults when absent. */
  cycleTokens?: number;
  sampleCycleTokens?: number;
  maxQueuedPerKey?: number;
  /** Snapshot each run every this many optimizer steps (default 10). */
  snapshotEvery?: number;
  /** Per worker: adapters kept on the compute device / in host memory (then disk); default no limit. */
  maxResidentAdapters?: number;
  maxHostAdapters?: number;
  log: (line: string) => void;
}

/**
 * Starts the server and resolves once it listens. SIGINT/SIGTERM stop it gracefully (the worker
 * calls in flight finish, queued requests wait in the log for the next start) and exit 0; a
 * second signal exits at once.
 *
 * @example
 * await serve({ host: '127.0.0.1', port: 8000, dataDir: '.lathe', log: console.log });
 */
export async function serve(options: ServeOptions): Promise<void> {
  const given = options.workerToken || process.env['LATHE_WORKER_TOKEN'] || undefined;
  const workerToken = options.workerPort === undefined ? undefined : { value: given ?? generateWorkerToken(), generated: given === undefined };
  const server = await createServer({
    dataDir: path.resolve(options.dataDir),
    ...(options.databaseUrl ? { databaseUrl: options.databaseUrl } : {}),
    ...(options.modelsDir ? { modelsDir: path.resolve(options.modelsDir) } : {}),
    ...(options.modelAlias ? { modelAliases: options.modelAlias } : {}),
    ...(options.localWorkers === false ? { localWorkers: false } : {}),
    ...(workerToken !== undefined ? { workerPort: options.workerPort, workerHost: options.workerHost ?? '0.0.0.0', workerToken: workerToken.value } : {}),
    ordering: {
      ...(options.cycleTokens ? { cycleTokens: options.cycleTokens } : {}),
      ...(options.sampleCycleTokens ? { sampleCycleTokens: options.sampleCycleTokens } : {}),
      ...(options.maxQueuedPerKey ? { maxQueuedPerKey: options.maxQueuedPerKey } : {}),
    },
    ...(options.snapshotEvery ? { snapshotEvery: options.snapshotEvery } : {}),
    ...(options.maxResidentAdapters !== undefined ? { maxResidentAdapters: options.maxResidentAdapters } : {}),
    ...(options.maxHostAdapters !== undefined ? { maxHostAdapters: options.maxHostAdapters } : {}),
  });
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      options.log(`${signal} again: exiting without waiting`);
      process.exit(1);
    }
    stopping = true;
    options.log(`${signal}: stopping (finishing the worker calls in flight; send ${signal} again to exit at once)`);
    server.close().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error('lathe: the server did not stop cleanly:', error);
        process.exit(1);
      },
    );
  };
  // Before the first line: whoever reads "listening on" may signal at once.
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const address = await server.app.listen({ host: options.host, port: options.port });
  options.log(`listening on ${address}`);
  if (server.workerPort !== undefined && workerToken) {
    // The token is printed only when it was generated here: one the operator gave is already known.
    const token = workerToken.generated ? workerToken.value : '<the worker token>';
    options.log(`workers: listening on ${options.workerHost ?? '0.0.0.0'}:${server.workerPort}; join with: lathe worker --connect HOST:${server.workerPort} --token ${token}`);
  }
  if (options.localWorkers === false && server.workerPort === undefined) options.log('warning: --no-local-workers without --worker-port: no worker can ever serve a model');
}

/** Opens the server's store (creating the data directory if needed), runs `use`, closes it. */
async function withStore<T>(options: DataOptions, use: (store: Store) => Promise<T>): Promise<T> {
  prepareDataDir(options.dataDir);
  const store = await openStore(databaseUrl(options));
  try {
    return await use(store);
  } finally {
    await store.close();
  }
}

/** Creates an API key; returns the key (shown once, stored hashed). */
export async function createKey(options: DataOptions & { name: string }): Promise<string> {
  return withStore(options, async (store) => (await store.keys.create(options.name)).key);
}

/** ISO time of epoch milliseconds, or `-`. */
const when = (ms: number | null): string => (ms === null ? '-' : new Date(ms).toISOString());

/**
 * The keys as a table (name, prefix, created, revoked), oldest first; never a secret.
 *
 * @example
 * console.log(await listKeys({ dataDir: '.lathe' }));
 * // NAME   PREFIX        CREATED                   REVOKED
 * // alice  tml-3kQ9xZa1  2026-01-05T10:00:00.000Z  -
 */
export async function listKeys(options: DataOptions): Promise<string> {
  const keys = await withStore(options, (store) => store.keys.list());
  const rows = [['NAME', 'PREFIX', 'CREATED', 'REVOKED'], ...keys.map((k) => [k.name, k.prefix ?? k.id, when(k.createdAt), when(k.revokedAt)])];
  return formatTable(rows);
}

/** `lathe keys revoke` named no single active key. */
export class KeyNotFoundError extends Error {
  override name = 'KeyNotFoundError';
}

/**
 * Revokes the one active key that `ref` names (its name, prefix or id); servers refuse it within a
 * second, whichever process revoked it. Returns a line saying which key was revoked.
 *
 * @throws {KeyNotFoundError} when no active key, or more than one, matches.
 * @example
 * await revokeKey({ dataDir: '.lathe', ref: 'alice' }); // 'revoked alice (tml-3kQ9xZa1)'
 */
export async function revokeKey(options: DataOptions & { ref: string }): Promise<string> {
  return withStore(options, async (store) => {
    const matches = await store.keys.match(options.ref);
    if (matches.length === 0) throw new KeyNotFoundError(`no active API key is named ${JSON.stringify(options.ref)} or has that prefix (see lathe keys list)`);
    if (matches.length > 1) {
      const which = matches.map((k) => `${k.name} (${k.prefix ?? k.id})`).join(', ');
      throw new KeyNotFoundError(`${JSON.stringify(options.ref)} names ${matches.length} active keys: ${which}; revoke one by its prefix`);
    }
    const key = matches[0]!;
    await store.keys.revoke(key.id);
    return `revoked ${key.name} (${key.prefix ?? key.id})`;
  });
}
