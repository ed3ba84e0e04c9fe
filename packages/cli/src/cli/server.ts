/**
 * @module `lathe serve|worker|keys`: running the server and its remote workers, and managing API keys.
 */
import { Command } from 'commander';
import { createKey, DEFAULT_DATA_DIR, KeyNotFoundError, listKeys, revokeKey, serve } from '../commands/serve.js';
import { runWorker } from '../commands/worker.js';
import { collectAlias, parseInteger } from './options.js';

/** Adds `lathe serve` and `lathe worker` to `program`. */
export function registerServerCommands(program: Command): void {
  program
    .command('serve')
    .description('run the Tinker-compatible server (SQLite + local workers by default)')
    .option('--host <host>', 'interface to listen on', '127.0.0.1')
    .option('--port <port>', 'port (0: any free port)', parseInteger('--port', { min: 0, max: 65535 }), 8000)
    .option('--data-dir <dir>', 'database, checkpoints and models', DEFAULT_DATA_DIR)
    .option('--database-url <url>', 'postgres://... to use PostgreSQL instead of SQLite')
    .option('--models-dir <dir>', 'where models are found (default <data-dir>/models)')
    .option(
      '--model-alias <name=path>',
      'serve a model folder (or another model) under this name, e.g. Qwen/Qwen3-8B=/srv/qwen3-8b; repeatable (also: <data-dir>/models.json)',
      collectAlias,
      {},
    )
    .option('--worker-port <port>', 'open this TCP port for remote workers (lathe worker --connect HOST:PORT; 0: any free port)', parseInteger('--worker-port', { min: 0, max: 65535 }))
    .option('--worker-host <host>', 'interface of the worker port', '0.0.0.0')
    .option('--worker-token <token>', 'the token remote workers must present (default: $LATHE_WORKER_TOKEN, else a new one, printed)')
    .option('--no-local-workers', 'start no local worker processes: only remote workers serve models')
    .option('--cycle-tokens <n>', 'most tokens of forward(_backward) data packed into one clock cycle (default 32768)', parseInteger('--cycle-tokens', { min: 1 }))
    .option('--sample-cycle-tokens <n>', 'most rows x max_tokens decoded in one sampling call (default 8192)', parseInteger('--sample-cycle-tokens', { min: 1 }))
    .option('--max-queued-per-key <n>', 'most requests one API key may have queued per base model before 429 (default 1024)', parseInteger('--max-queued-per-key', { min: 1 }))
    .option('--snapshot-every <n>', 'snapshot each run every n optimizer steps (fewer: less replayed after a worker crash)', parseInteger('--snapshot-every', { min: 1 }), 10)
    .option('--max-resident-adapters <n>', 'per worker: adapters kept on the GPU; the least recently used idle ones move to host memory (default: no limit)', parseInteger('--max-resident-adapters', { min: 1 }))
    .option('--max-host-adapters <m>', 'per worker: moved-out adapters kept in host memory; beyond that they go to disk (default: no limit)', parseInteger('--max-host-adapters', { min: 0 }))
    .action(async (opts: { host: string; port: number; dataDir: string; databaseUrl?: string; modelsDir?: string; modelAlias: Record<string, string>; workerPort?: number; workerHost: string; workerToken?: string; localWorkers: boolean; cycleTokens?: number; sampleCycleTokens?: number; maxQueuedPerKey?: number; snapshotEvery: number; maxResidentAdapters?: number; maxHostAdapters?: number }) => {
      await serve({ ...opts, log: (line) => console.log(line) });
    });
  program
    .command('worker')
    .description('run a compute worker that joins a server over TCP (the server runs lathe serve --worker-port N)')
    .requiredOption('--connect <host:port>', "the server's worker port")
    .option('--token <token>', 'the worker token the server printed (default: $LATHE_WORKER_TOKEN)')
    .option('--models-dir <dir>', 'where this machine finds models (default .lathe/models)')
    .option('--device <device>', 'cpu, cuda or cuda:N (default: cuda when available)')
    .option('--dtype <dtype>', 'float32 or bfloat16 (default: bfloat16 on CUDA, float32 on CPU)')
    .option('--no-reconnect', 'exit when the server closes the connection (default: reconnect with backoff)')
    .action(async (opts: { connect: string; token?: string; modelsDir?: string; device?: string; dtype?: string; reconnect: boolean }, command: Command) => {
      const token = opts.token || process.env['LATHE_WORKER_TOKEN'];
      if (!token) command.error('error: lathe worker needs --token (or LATHE_WORKER_TOKEN): the token lathe serve printed');
      process.exitCode = await runWorker({ ...opts, token });
    });
}

/** Adds `lathe keys create|list|revoke` to `program`. */
export function registerKeyCommands(program: Command): void {
  const keys = program.command('keys').description('manage API keys');
  keys
    .command('create')
    .description('create an API key and print it (its only line on stdout)')
    .requiredOption('--name <name>', 'a label for the key')
    .option('--data-dir <dir>', 'the server data directory', DEFAULT_DATA_DIR)
    .option('--database-url <url>', 'postgres://... when the server uses PostgreSQL')
    .action(async (opts: { name: string; dataDir: string; databaseUrl?: string }) => {
      console.log(await createKey(opts));
    });
  keys
    .command('list')
    .description('list API keys: name, prefix, created, revoked (never the secret)')
    .option('--data-dir <dir>', 'the server data directory', DEFAULT_DATA_DIR)
    .option('--database-url <url>', 'postgres://... when the server uses PostgreSQL')
    .action(async (opts: { dataDir: string; databaseUrl?: string }) => {
      console.log(await listKeys(opts));
    });
  keys
    .command('revoke')
    .description('revoke an API key by name or prefix; every server refuses it within a second')
    .argument('<name-or-prefix>', 'the key\'s name, its prefix (tml-XXXXXXXX) or the key itself')
    .option('--data-dir <dir>', 'the server data directory', DEFAULT_DATA_DIR)
    .option('--database-url <url>', 'postgres://... when the server uses PostgreSQL')
    .action(async (ref: string, opts: { dataDir: string; databaseUrl?: string }, command: Command) => {
      try {
        console.log(await revokeKey({ ...opts, ref }));
      } catch (error) {
        if (error instanceof KeyNotFoundError) command.error(`error: ${error.message}`);
        throw error;
      }
    });
}
