/**
 * @module The `lathe` command.
 */
import { Command } from 'commander';
import { runDemo } from './commands/demo.js';

/** Builds the command tree (exported for tests). */
export function buildProgram(): Command {
  const program = new Command('lathe').description('Lathe: self-hostable LoRA fine-tuning, Tinker-compatible').version('0.1.0');
  program
    .command('demo')
    .description('fine-tune the built-in tiny model on one example through a local worker; print loss and samples before and after')
    .option('--model <name>', 'base model', 'lathe/tiny-qwen3')
    .option('--steps <n>', 'training steps', (v) => Number.parseInt(v, 10), 30)
    .option('--models-dir <dir>', 'where models are found and tiny models are written', '.lathe/models')
    .action(async (opts: { model: string; steps: number; modelsDir: string }) => {
      await runDemo({ model: opts.model, steps: opts.steps, modelsDir: opts.modelsDir, log: (line) => console.log(line) });
    });
  return program;
}

/** Entry point used by `bin/lathe.js`. */
export async function main(argv: string[]): Promise<void> {
  await buildProgram().parseAsync(argv);
}
