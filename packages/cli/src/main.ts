/**
 * @module The `lathe` command.
 */
import path from 'node:path';
import { DataDirError, parseAlias } from '@lathe/server';
import { Command, InvalidArgumentError } from 'commander';
import { runDemo } from './commands/demo.js';
import { createKey, DEFAULT_DATA_DIR, KeyNotFoundError, listKeys, revokeKey, serve } from './commands/serve.js';
import { runWorker } from './commands/worker.js';

/**
 * A commander option parser for whole numbers in `[min, max]`: it rejects `abc`, `1.5`, `12abc`
 * and out-of-range values with commander's {@link InvalidArgumentError} (which commander reports
 * as a usage error, exit code 1) instead of letting `NaN` through. `name` is the option's flag.
 *
 * @example
 * program.option('--port <port>', 'port', parseInteger('--port', { min: 0, max: 65535 }), 8000);
 * parseInteger('--steps', { min: 1 })('30'); // 30
 * parseInteger('--steps', { min: 1 })('ten'); // throws InvalidArgumentError: --steps must be an integer >= 1, got "ten"
 */
export function parseInteger(name: string, range: { min?: number; max?: number } = {}): (value: string) => number {
  const { min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER } = range;
  const expected = `an integer${range.min !== undefined && range.max !== undefined ? ` from ${min} to ${max}` : range.min !== undefined ? ` >= ${min}` : range.max !== undefined ? ` <= ${max}` : ''}`;
  return (value) => {
    const n = /^\s*[+-]?\d+\s*$/.test(value) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be ${expected}, got ${JSON.stringify(value)}`);
    return n;
  };
}

/** Accumulates `--model-alias NAME=PATH` values; a relative folder path is taken from the current directory. */
function collectAlias(value: string, previous: Record<string, string>): Record<string, string> {
  let name: string;
  let target: string;
  try {
    [name, target] = parseAlias(value);
  } catch (error) {
    throw new InvalidArgumentError(`--model-alias: ${(error as Error).message}`);
  }
  return { ...previous, [name]: target.startsWith('.') ? path.resolve(target) : target };
}

/** Builds the command tree (exported for tests). */
export function buildProgram(): Command {
  const program = new Command('lathe').description('Lathe: self-hostable LoRA fine-tuning, Tinker-compatible').version('0.1.0');
  program
    .command('demo')
    .description('start an embedded server and fine-tune the built-in tiny model through the SDK; print loss and samples before and after')
    .option('--model <name>', 'base model', 'lathe/tiny-qwen3')
    .option('--steps <n>', 'training steps', parseInteger('--steps', { min: 1 }), 30)
    .option('--data-dir <dir>', 'the embedded server data directory', DEFAULT_DATA_DIR)
    .option('--models-dir <dir>', 'where models are found and tiny models are written (default <data-dir>/models)')
    .action(async (opts: { model: string; steps: number; dataDir: string; modelsDir?: string }) => {
      await runDemo({ ...opts, log: (line) => console.log(line) });
    });
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
  return program;
}

/**
 * Entry point used by `bin/lathe.js`. A data directory that cannot be used is reported in one
 * line on stderr (no stack trace) with exit code 1.
 */
export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (error) {
    if (!(error instanceof DataDirError)) throw error;
    console.error(`lathe: ${error.message}`);
    process.exitCode = 1;
  }
}
