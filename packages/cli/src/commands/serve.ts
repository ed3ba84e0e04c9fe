/**
 * @module `lathe serve` and `lathe keys`: run the server, manage API keys.
 */
import path from 'node:path';
import { createServer, defaultDatabaseUrl, openStore } from '@lathe/server';

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
  log: (line: string) => void;
}

/**
 * Starts the server and resolves once it listens; stops on SIGINT/SIGTERM.
 *
 * @example
 * await serve({ host: '127.0.0.1', port: 8000, dataDir: '.lathe', log: console.log });
 */
export async function serve(options: ServeOptions): Promise<void> {
  const server = await createServer({
    dataDir: path.resolve(options.dataDir),
    ...(options.databaseUrl ? { databaseUrl: options.databaseUrl } : {}),
    ...(options.modelsDir ? { modelsDir: path.resolve(options.modelsDir) } : {}),
  });
  const address = await server.app.listen({ host: options.host, port: options.port });
  options.log(`listening on ${address}`);
  const stop = (): void => {
    void server.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

/** Creates an API key; returns the key (shown once, stored hashed). */
export async function createKey(options: DataOptions & { name: string }): Promise<string> {
  const { mkdirSync } = await import('node:fs');
  mkdirSync(options.dataDir, { recursive: true });
  const store = await openStore(databaseUrl(options));
  try {
    return (await store.keys.create(options.name)).key;
  } finally {
    await store.close();
  }
}
