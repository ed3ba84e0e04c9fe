/**
 * @module The `lathe` command.
 */
import path from 'node:path';
import { DataDirError, parseAlias } from '@lathe/server';
import { Command, InvalidArgumentError } from 'commander';
import { runDemo, type DemoOptions } from './commands/demo.js';
import { runSample, type SampleOptions } from './commands/sample.js';
import { createKey, DEFAULT_DATA_DIR, KeyNotFoundError, listKeys, revokeKey, serve } from './commands/serve.js';
import { runTrainSft, type TrainSftOptions } from './commands/train.js';
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

/**
 * A commander option parser for finite numbers above a bound (`{ above: 0 }`: a learning rate) or
 * at least one (`{ atLeast: 0 }`: a temperature); anything else is a usage error naming the option.
 *
 * @example
 * parseNumber('--lr', { above: 0 })('2e-4'); // 0.0002
 * parseNumber('--lr', { above: 0 })('0'); // throws InvalidArgumentError: --lr must be a number > 0, got "0"
 */
export function parseNumber(name: string, bound: { above: number } | { atLeast: number }): (value: string) => number {
  const [limit, inRange, expected] = 'above' in bound ? [bound.above, (n: number) => n > bound.above, '>'] : [bound.atLeast, (n: number) => n >= bound.atLeast, '>='];
  return (value) => {
    const n = value.trim() === '' ? Number.NaN : Number(value);
    if (!Number.isFinite(n) || !inRange(n)) throw new InvalidArgumentError(`${name} must be a number ${expected} ${limit}, got ${JSON.stringify(value)}`);
    return n;
  };
}

/** Runs a client command; a failure is one `lathe <command>: message` line on stderr and exit code 1. */
async function reportFailure(command: string, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (error) {
    if (error instanceof DataDirError) throw error;
    console.error(`lathe ${command}: ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 1;
  }
}

/** Options of the commands that talk to a server: a remote one, or an embedded one on a data directory. */
function connectionOptions(command: Command): Command {
  return command
    .option('--base-url <url>', 'a running server (default: start an embedded one for this command)')
    .option('--api-key <key>', 'API key for --base-url (default: $LATHE_API_KEY)')
    .option('--data-dir <dir>', 'the embedded server data directory', DEFAULT_DATA_DIR)
    .option('--models-dir <dir>', 'where the embedded server finds models (default <data-dir>/models)');
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

/** `lathe train sft`'s flags: its options without what the action supplies. */
type TrainSftFlags = Omit<TrainSftOptions, 'signal' | 'progress' | 'log'>;

/** `lathe sample`'s flags. */
type SampleFlags = Omit<SampleOptions, 'log'>;

/** Builds the command tree (exported for tests). */
export function buildProgram(): Command {
  const program = new Command('lathe').description('Lathe: self-hostable LoRA fine-tuning, Tinker-compatible').version('0.1.0');
  program
    .command('demo')
    .description('start an embedded server; fine-tune the built-in tiny model (SFT, then RL) through the SDK and cookbook, with samples before and after and plots of the loss and reward')
    .option('--model <name>', 'base model', 'lathe/tiny-qwen3')
    .option('--sft-steps <n>', 'supervised fine-tuning steps', parseInteger('--sft-steps', { min: 1 }), 12)
    .option('--rl-steps <n>', 'RL steps', parseInteger('--rl-steps', { min: 1 }), 14)
    .option('--data-dir <dir>', 'the embedded server data directory', DEFAULT_DATA_DIR)
    .option('--models-dir <dir>', 'where models are found and tiny models are written (default <data-dir>/models)')
    .option('--log-dir <dir>', 'where the runs log (sft/, rl/; default a new <data-dir>/demo/<time>)')
    .action(async (opts: Omit<DemoOptions, 'progress' | 'log'>) => {
      await runDemo({ ...opts, progress: process.stderr, log: (line) => console.log(line) });
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
  const train = program.command('train').description('training recipes from the cookbook');
  connectionOptions(
    train
      .command('sft')
      .description('supervised fine-tuning on a conversation JSONL file; Ctrl-C saves a checkpoint, and the same --log-dir resumes')
      .requiredOption('--model <name>', 'base model, e.g. lathe/tiny-qwen3 or Qwen/Qwen3-8B')
      .requiredOption('--log-dir <dir>', 'metrics.jsonl, checkpoints.jsonl and config.json go here; an interrupted run here is resumed')
      .option('--data <file.jsonl>', 'one {"messages": [{"role", "content"}, ...]} per line (default: a small built-in set of capitals)'),
  )
    .option('--steps <n>', 'train exactly this many steps (instead of --epochs)', parseInteger('--steps', { min: 1 }))
    .option('--epochs <n>', 'passes over the data (default 1)', parseInteger('--epochs', { min: 1 }))
    .option('--batch-size <n>', 'conversations per step', parseInteger('--batch-size', { min: 1 }), 4)
    .option('--lr <rate>', 'peak learning rate, linear decay (default: the cookbook\'s getLr for the model)', parseNumber('--lr', { above: 0 }))
    .option('--lora-rank <n>', 'LoRA rank', parseInteger('--lora-rank', { min: 1 }), 32)
    .option('--renderer <name>', 'chat template (default: the one recommended for the model)')
    .option('--max-length <n>', 'truncate examples to this many tokens', parseInteger('--max-length', { min: 2 }))
    .option('--save-every <n>', 'checkpoint every n steps (0: only at the end)', parseInteger('--save-every', { min: 0 }), 20)
    .option('--eval-every <n>', 'held-out NLL every n steps (0: only at the start and end)', parseInteger('--eval-every', { min: 0 }), 10)
    .option('--test-size <n>', 'conversations held out for test/nll (default: a tenth, at most 16)', parseInteger('--test-size', { min: 0 }))
    .option('--seed <n>', 'seed of the adapter, the split and the shuffles', parseInteger('--seed', { min: 0 }), 0)
    .action(async (opts: TrainSftFlags, command: Command) => {
      if (opts.steps !== undefined && opts.epochs !== undefined) command.error('error: give --steps or --epochs, not both');
      await reportFailure('train sft', async () => {
        const stop = new AbortController();
        const onInterrupt = (): void => {
          if (stop.signal.aborted) process.exit(130);
          console.error('\nstopping after the steps in flight and saving a checkpoint (Ctrl-C again to quit without one)');
          stop.abort();
        };
        process.on('SIGINT', onInterrupt);
        try {
          const result = await runTrainSft({ ...opts, signal: stop.signal, progress: process.stderr, log: (line) => console.error(line) });
          if (result.interrupted) {
            console.error(`stopped at step ${result.steps}/${result.totalSteps}${result.checkpoint ? `; checkpoint ${result.checkpoint.state_path}` : ''}; run the same command again to resume`);
            process.exitCode = 130;
          } else {
            console.log(`done: ${result.steps} steps; sampler weights ${result.checkpoint?.sampler_path ?? '(none)'}`);
          }
        } finally {
          process.off('SIGINT', onInterrupt);
        }
      });
    });
  for (const [name, what] of [['rl', 'reinforcement learning'], ['dpo', 'preference (DPO) training'], ['distill', 'distillation']] as const) {
    train
      .command(name)
      .description(`${what} (not available yet in this version)`)
      .allowUnknownOption()
      .allowExcessArguments()
      .action(() => {
        console.error(`lathe train ${name}: ${what} is not available yet in this version of lathe; use lathe train sft, or the cookbook from TypeScript`);
        process.exitCode = 2;
      });
  }
  connectionOptions(
    program
      .command('sample')
      .description("one chat reply from a model, with the model's chat template")
      .requiredOption('--model <name-or-path>', 'a base model, or tinker://... sampler weights (e.g. from lathe train sft)')
      .requiredOption('--prompt <text>', 'the user message'),
  )
    .option('--system <text>', 'a system message before the prompt')
    .option('--renderer <name>', 'chat template (default: the one recommended for the base model)')
    .option('--max-tokens <n>', 'most tokens in the reply', parseInteger('--max-tokens', { min: 1 }), 128)
    .option('--temperature <t>', '0 is greedy', parseNumber('--temperature', { atLeast: 0 }), 0)
    .option('--seed <n>', 'makes sampling at temperature > 0 reproducible', parseInteger('--seed', { min: 0 }))
    .action(async (opts: SampleFlags) => {
      await reportFailure('sample', async () => {
        const result = await runSample({ ...opts, log: (line) => console.error(line) });
        console.log(result.reply);
        if (!result.complete) console.error(`(the reply was cut off at --max-tokens ${opts.maxTokens})`);
      });
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
