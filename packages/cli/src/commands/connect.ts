/**
 * @module A service connection for the client commands (`demo`, `train`, `sample`): a remote
 * server given by `--base-url`, or else an embedded one started in this process for the command
 * (SQLite in the data directory, a local worker, built-in tiny models) and stopped after it.
 */

/** The embedded server's API key, kept in its data directory (see {@link embeddedKey}). */
export const EMBEDDED_KEY_FILE = 'cli-api-key';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ServiceClient } from '@lathe/sdk';
import { createServer, type Store } from '@lathe/server';

/** Where a client command finds its server. */
export interface ConnectOptions {
  /** A running server; without it an embedded server is started on `dataDir`. */
  baseUrl?: string;
  /** The key for `baseUrl` (default: `$LATHE_API_KEY`); the embedded server makes its own. */
  apiKey?: string;
  /** The embedded server's data directory (database, checkpoints, models). */
  dataDir: string;
  /** Where the embedded server finds models and writes tiny ones; default `<dataDir>/models`. */
  modelsDir?: string;
}

/**
 * The models directory of `options`: `modelsDir`, else the embedded server's `<dataDir>/models`.
 *
 * @example
 * modelsDirOf({ dataDir: '.lathe' }); // '/abs/path/.lathe/models'
 */
export function modelsDirOf(options: Pick<ConnectOptions, 'dataDir' | 'modelsDir'>): string {
  return path.resolve(options.modelsDir ?? path.join(options.dataDir, 'models'));
}

/**
 * Runs `use` with a service client for `options`, then closes the client (and the embedded
 * server, if one was started), also when `use` throws.
 *
 * @example
 * const runs = await withService({ dataDir: '.lathe' }, console.error, async (service) => service.createRestClient().listTrainingRuns());
 */
export async function withService<T>(options: ConnectOptions, log: (line: string) => void, use: (service: ServiceClient) => Promise<T>): Promise<T> {
  if (options.baseUrl !== undefined) {
    const service = new ServiceClient({ baseUrl: options.baseUrl, ...(options.apiKey !== undefined && { apiKey: options.apiKey }) });
    try {
      return await use(service);
    } finally {
      await service.close();
    }
  }
  const dataDir = path.resolve(options.dataDir);
  log(`starting a server on ${dataDir} (SQLite, local worker) ...`);
  // createServer makes the data directory.
  const server = await createServer({ dataDir, ...(options.modelsDir !== undefined && { modelsDir: path.resolve(options.modelsDir) }) });
  let service: ServiceClient | undefined;
  try {
    const baseUrl = await server.app.listen({ host: '127.0.0.1', port: 0 });
    const key = await embeddedKey(server.services.store.keys, dataDir);
    service = new ServiceClient({ baseUrl, apiKey: key });
    log(`server ${baseUrl}`);
    return await use(service);
  } finally {
    try {
      await service?.close();
    } finally {
      await server.close();
    }
  }
}

/**
 * The key the client commands use on an embedded server: one per data directory, so a later
 * command sees the runs and checkpoints of an earlier one (they belong to the key that made them).
 * Made on first use and kept, readable by the owner only, in `<dataDir>/cli-api-key`; a key that
 * was revoked is replaced.
 */
async function embeddedKey(keys: Store['keys'], dataDir: string): Promise<string> {
  const file = path.join(dataDir, EMBEDDED_KEY_FILE);
  if (existsSync(file)) {
    const saved = readFileSync(file, 'utf8').trim();
    if ((await keys.authenticate(saved)) !== undefined) return saved;
  }
  const { key } = await keys.create('lathe cli (embedded server)');
  writeFileSync(file, `${key}\n`, { mode: 0o600 });
  return key;
}
