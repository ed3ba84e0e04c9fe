/**
 * @module The `lathe` command.
 */
import path from 'node:path';
import { DataDirError, parseAlias } from '@lathe/server';
import { Command, InvalidArgumentError } from 'commander';
import { checkpointsTable, deleteCheckpoint, downloadCheckpoint, exportCheckpoint, listCheckpoints } from './commands/checkpoints.js';
import { runDemo, type DemoOptions } from './commands/demo.js';
import { listModels, modelsTable, pullIntoModelsDir } from './commands/models.js';
import { formatRunDetails, listRuns, runsTable, showRun } from './commands/runs.js';
import { runSample, type SampleOptions } from './commands/sample.js';
import { createKey, DEFAULT_DATA_DIR, KeyNotFoundError, listKeys, revokeKey, serve } from './commands/serve.js';
import { runTrainCommand, type Supplied, type TrainFlags } from './commands/train/command.js';
import type { TrainCommonOptions, TrainResult } from './commands/train/run.js';
import { runTrainDistill, type TrainDistillOptions } from './commands/train/distill.js';
import { DEFAULT_DPO_LR, runTrainDpo, type TrainDpoOptions } from './commands/train/dpo.js';
import { RL_ENVS, runTrainRl, type RlEnvName, type TrainRlOptions } from './commands/train/rl.js';
import { runTrainSft, type TrainSftOptions } from './commands/train/sft.js';
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

/** A commander option parser accepting one of `choices`; anything else is a usage error naming the option. */
function parseChoice<T extends string>(name: string, choices: readonly T[]): (value: string) => T {
  return (value) => {
    if (!(choices as readonly string[]).includes(value)) throw new InvalidArgumentError(`${name} must be one of ${choices.join(', ')}, got ${JSON.stringify(value)}`);
    return value as T;
  };
}

/** What sets one `lathe train` recipe's command apart. */
interface TrainCommandSpec {
  name: string;
  description: string;
  /** Help of `--data` (none: the recipe takes no data file). */
  data?: string;
  /** Help of `--lr`: the recipe's default. */
  lr: string;
}

/** A `lathe train <recipe>` command with the flags every recipe shares, and whose action reports a failure in one line. */
function trainCommand<Options extends TrainCommonOptions>(train: Command, spec: TrainCommandSpec, run: (options: TrainFlags<Options> & Supplied) => Promise<TrainResult>): Command {
  const command = train
    .command(spec.name)
    .description(`${spec.description}; Ctrl-C saves a checkpoint, and the same --log-dir resumes`)
    .requiredOption('--model <name>', 'base model, e.g. lathe/tiny-qwen3 or Qwen/Qwen3-8B')
    .requiredOption('--log-dir <dir>', 'metrics.jsonl, checkpoints.jsonl and config.json go here; an interrupted run here is resumed');
  if (spec.data !== undefined) command.option('--data <file.jsonl>', spec.data);
  return connectionOptions(command)
    .option('--lr <rate>', spec.lr, parseNumber('--lr', { above: 0 }))
    .option('--lora-rank <n>', 'LoRA rank', parseInteger('--lora-rank', { min: 1 }), 32)
    .option('--save-every <n>', 'checkpoint every n steps (0: only at the end)', parseInteger('--save-every', { min: 0 }), 20)
    .option('--seed <n>', 'seed of the adapter, the data order and the sampling', parseInteger('--seed', { min: 0 }), 0)
    .action(async (flags: TrainFlags<Options>) => {
      await reportFailure(`train ${spec.name}`, () => runTrainCommand(run, flags));
    });
}

/** `--steps` or `--epochs` (not both) for a recipe that passes over a data set. */
function stepsOrEpochs(command: Command, unit: string): Command {
  return command
    .option('--steps <n>', 'train exactly this many steps (instead of --epochs)', parseInteger('--steps', { min: 1 }))
    .option('--epochs <n>', `passes over the ${unit} (default 1)`, parseInteger('--epochs', { min: 1 }))
    .hook('preAction', (self) => {
      const { steps, epochs } = self.opts<{ steps?: number; epochs?: number }>();
      if (steps !== undefined && epochs !== undefined) self.error('error: give --steps or --epochs, not both');
    });
}

/** The flags of the recipes that render conversations with a chat template and evaluate on held-out items. */
function chatOptions(command: Command, heldOut: string): Command {
  return command
    .option('--renderer <name>', 'chat template (default: the one recommended for the model)')
    .option('--eval-every <n>', 'held-out evaluation every n steps (0: only at the start and end)', parseInteger('--eval-every', { min: 0 }), 10)
    .option('--test-size <n>', `${heldOut} held out for evaluation (default: a tenth, at most 16)`, parseInteger('--test-size', { min: 0 }));
}

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
  const getLrDefault = "(default: the cookbook's getLr for the model)";
  stepsOrEpochs(
    chatOptions(
      trainCommand<TrainSftOptions>(train, { name: 'sft', description: 'supervised fine-tuning on a conversation JSONL file', data: 'one {"messages": [{"role", "content"}, ...]} per line (default: a small built-in set of capitals)', lr: `peak learning rate, linear decay ${getLrDefault}` }, runTrainSft),
      'conversations',
    ),
    'data',
  )
    .option('--batch-size <n>', 'conversations per step', parseInteger('--batch-size', { min: 1 }), 4)
    .option('--max-length <n>', 'truncate examples to this many tokens', parseInteger('--max-length', { min: 2 }));
  trainCommand<TrainRlOptions>(train, { name: 'rl', description: 'reinforcement learning on a built-in environment', lr: `learning rate ${getLrDefault}` }, runTrainRl)
    .option('--env <name>', `environment: ${RL_ENVS.join(' or ')}`, parseChoice<RlEnvName>('--env', RL_ENVS), 'arithmetic')
    .option('--steps <n>', 'training steps (batches of groups)', parseInteger('--steps', { min: 1 }), 20)
    .option('--batch-size <n>', 'groups (problems) per step', parseInteger('--batch-size', { min: 1 }), 8)
    .option('--group-size <n>', 'rollouts per group, whose rewards are compared', parseInteger('--group-size', { min: 2 }), 8)
    .option('--max-tokens <n>', 'most tokens sampled per turn', parseInteger('--max-tokens', { min: 1 }), 4)
    .option('--temperature <t>', 'sampling temperature', parseNumber('--temperature', { above: 0 }), 1)
    .option('--loss-fn <name>', 'importance_sampling or ppo', parseChoice('--loss-fn', ['importance_sampling', 'ppo'] as const), 'importance_sampling')
    .option('--max-staleness <n>', 'rollouts may come from weights this many steps old (0: on-policy)', parseInteger('--max-staleness', { min: 0 }), 0);
  stepsOrEpochs(
    chatOptions(
      trainCommand<TrainDpoOptions>(
        train,
        { name: 'dpo', description: 'preference training (DPO) on chosen/rejected pairs', data: 'one {"chosen": [messages], "rejected": [messages]} per line (default: built-in answer-format pairs)', lr: `peak learning rate, linear decay (default ${DEFAULT_DPO_LR})` },
        runTrainDpo,
      ),
      'pairs',
    ),
    'pairs',
  )
    .option('--batch-size <n>', 'pairs per step', parseInteger('--batch-size', { min: 1 }), 4)
    .option('--beta <b>', 'DPO temperature: how far from the reference the policy may go', parseNumber('--beta', { above: 0 }), 0.1)
    .option('--max-length <n>', 'truncate examples to this many tokens', parseInteger('--max-length', { min: 2 }));
  chatOptions(
    trainCommand<TrainDistillOptions>(
      train,
      { name: 'distill', description: 'on-policy distillation from a teacher model', data: 'conversations ({"messages": [...]} per line) whose messages before the final answer are the prompts (default: built-in questions)', lr: `learning rate ${getLrDefault}` },
      runTrainDistill,
    ),
    'prompts',
  )
    .requiredOption('--teacher <model-or-path>', 'a base model with the same tokenizer, or tinker://... sampler weights (e.g. from lathe train sft)')
    .option('--steps <n>', 'training steps', parseInteger('--steps', { min: 1 }), 20)
    .option('--prompts-per-step <n>', 'prompts per step', parseInteger('--prompts-per-step', { min: 1 }), 4)
    .option('--samples-per-prompt <n>', 'student samples per prompt', parseInteger('--samples-per-prompt', { min: 1 }), 4)
    .option('--max-tokens <n>', 'most tokens per student sample', parseInteger('--max-tokens', { min: 1 }), 64)
    .option('--temperature <t>', 'student sampling temperature', parseNumber('--temperature', { above: 0 }), 1)
    .option('--kl-coef <c>', 'weight of the reverse KL in the advantage', parseNumber('--kl-coef', { above: 0 }), 1);
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
  // Managing runs, checkpoints and models (lathe runs|checkpoints|models).
  type ConnectionFlags = { baseUrl?: string; apiKey?: string; dataDir: string; modelsDir?: string };
  const stderrLog = (line: string): void => console.error(line);
  const print = (json: boolean, value: unknown, table: string): void => console.log(json ? JSON.stringify(value, null, 2) : table);
  const runs = program.command('runs').description("this key's training runs");
  connectionOptions(runs.command('list').description('training runs, newest first'))
    .option('--limit <n>', 'most runs to list', parseInteger('--limit', { min: 1 }), 50)
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: ConnectionFlags & { limit: number; json?: boolean }) => {
      await reportFailure('runs list', async () => {
        const list = await listRuns({ ...opts, log: stderrLog });
        print(opts.json === true, list, runsTable(list));
      });
    });
  connectionOptions(runs.command('show').description('one training run and its checkpoints').argument('<run-id>', 'the training run id (lathe runs list)'))
    .option('--json', 'print JSON instead of text')
    .action(async (runId: string, opts: ConnectionFlags & { json?: boolean }) => {
      await reportFailure('runs show', async () => {
        const details = await showRun({ ...opts, runId, log: stderrLog });
        print(opts.json === true, details, formatRunDetails(details));
      });
    });
  const checkpoints = program.command('checkpoints').description('list, download, export and delete checkpoints');
  connectionOptions(checkpoints.command('list').description("checkpoints of one run, or all of this key's, newest first"))
    .option('--run <run-id>', 'only this training run')
    .option('--limit <n>', 'most checkpoints to list', parseInteger('--limit', { min: 1 }), 100)
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: ConnectionFlags & { run?: string; limit: number; json?: boolean }) => {
      await reportFailure('checkpoints list', async () => {
        const list = await listCheckpoints({ ...opts, ...(opts.run !== undefined && { runId: opts.run }), log: stderrLog });
        print(opts.json === true, list, checkpointsTable(list));
      });
    });
  connectionOptions(checkpoints.command('download').description('download a checkpoint as a tar of its adapter (PEFT layout, Tinker tensor names)').argument('<tinker-path>', 'tinker://RUN/weights/NAME or tinker://RUN/sampler_weights/NAME'))
    .option('-o, --output <file.tar>', 'where to write the archive (default: a name made from the path, in the current folder)')
    .action(async (tinkerPath: string, opts: ConnectionFlags & { output?: string }) => {
      await reportFailure('checkpoints download', async () => {
        const { file, bytes } = await downloadCheckpoint({ ...opts, tinkerPath, log: stderrLog });
        console.log(`${file} (${bytes} bytes)`);
      });
    });
  connectionOptions(checkpoints.command('export').description('write a checkpoint as a PEFT adapter folder and/or a merged Hugging Face model').argument('<tinker-path>', 'the checkpoint'))
    .option('--peft <dir>', 'write the adapter here under PEFT names (loads in peft, transformers and vLLM as is)')
    .option('--merged <dir>', 'write the base model with the adapter merged in here (config.json, safetensors, tokenizer files)')
    .option('--base-model <name-or-dir>', 'the base model to merge into (default: the one the checkpoint was trained on, found in --models-dir)')
    .action(async (tinkerPath: string, opts: ConnectionFlags & { peft?: string; merged?: string; baseModel?: string }, command: Command) => {
      if (opts.peft === undefined && opts.merged === undefined) command.error('error: give --peft DIR, --merged DIR or both');
      await reportFailure('checkpoints export', async () => {
        for (const { kind, folder } of await exportCheckpoint({ ...opts, tinkerPath, log: stderrLog })) console.log(`wrote ${kind === 'peft' ? 'the PEFT adapter' : 'the merged model'} to ${folder}`);
      });
    });
  connectionOptions(checkpoints.command('delete').description('delete a checkpoint and its files').argument('<tinker-path>', 'the checkpoint'))
    .action(async (tinkerPath: string, opts: ConnectionFlags) => {
      await reportFailure('checkpoints delete', async () => {
        await deleteCheckpoint({ ...opts, tinkerPath, log: stderrLog });
        console.log(`deleted ${tinkerPath}`);
      });
    });
  const models = program.command('models').description('models to fine-tune: list them, pull one from the Hugging Face Hub');
  connectionOptions(models.command('list').description('with --base-url: what that server serves; else the built-in models, those in --models-dir and the Hugging Face cache, and the models.json aliases'))
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: ConnectionFlags & { json?: boolean }) => {
      await reportFailure('models list', async () => {
        const list = await listModels({ ...opts, log: stderrLog });
        print(opts.json === true, list, modelsTable(list));
      });
    });
  models
    .command('pull')
    .description('download a model from the Hugging Face Hub into the models directory (resumable: run it again after an interruption)')
    .argument('<org/name>', 'the model on the Hub, e.g. Qwen/Qwen3-0.6B')
    .option('--data-dir <dir>', 'the server data directory', DEFAULT_DATA_DIR)
    .option('--models-dir <dir>', 'where to put it (default <data-dir>/models, where the server looks)')
    .option('--endpoint <url>', 'the Hub or a mirror (default: $HF_ENDPOINT, else https://huggingface.co)')
    .option('--revision <rev>', 'branch, tag or commit', 'main')
    .option('--token <token>', 'for gated or private models (default: $HF_TOKEN)')
    .option('--retries <n>', 'times an interrupted download is resumed before giving up', parseInteger('--retries', { min: 0 }), 5)
    .action(async (repo: string, opts: { dataDir: string; modelsDir?: string; endpoint?: string; revision: string; token?: string; retries: number }) => {
      await reportFailure('models pull', async () => {
        const result = await pullIntoModelsDir({ ...opts, repo, progress: process.stderr, log: stderrLog });
        console.log(result.alreadyPresent ? `${repo} is already in ${result.folder}` : `pulled ${repo} (${result.files} files, ${result.bytes} bytes) into ${result.folder}`);
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
