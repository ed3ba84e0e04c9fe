/**
 * @module The `lathe` command: the command tree (each group registered by its module in cli/) and
 * the entry point.
 */
import { DataDirError } from '@lathe/server';
import { Command } from 'commander';
import { runDemo, type DemoOptions } from './commands/demo.js';
import { runSample, type SampleOptions } from './commands/sample.js';
import { DEFAULT_DATA_DIR } from './commands/serve.js';
import { registerManageCommands } from './cli/manage.js';
import { connectionOptions, parseInteger, parseNumber, reportFailure } from './cli/options.js';
import { registerKeyCommands, registerServerCommands } from './cli/server.js';
import { registerTrainCommands } from './cli/train.js';

export { parseInteger, parseNumber } from './cli/options.js';

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
  registerServerCommands(program);
  registerTrainCommands(program);
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
  registerManageCommands(program);
  registerKeyCommands(program);
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
