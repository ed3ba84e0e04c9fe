/**
 * @module `lathe serve` and `lathe keys`: run the server, manage API keys.
 */
import path from 'node:path';
import { createServer, defaultDatabaseUrl, openStore, prepareDataDir } from '@lathe/server';

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
 * Starts the server and resolves once it listens. SIGINT/SIGTERM stop it gracefully (the worker
 * calls in flight finish, queued requests wait in the log for the next start) and exit 0; a
 * second signal exits at once.
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
}

/** Creates an API key; returns the key (shown once, stored hashed). */
export async function createKey(options: DataOptions & { name: string }): Promise<string> {
  prepareDataDir(options.dataDir);
  const store = await openStore(databaseUrl(options));
  try {
    return (await store.keys.create(options.name)).key;
  } finally {
    await store.close();
  }
}
