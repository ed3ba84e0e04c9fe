/**
 * @module `lathe train sft|rl|dpo|distill`: one command per cookbook recipe, with the flags every
 * recipe shares (model, log dir, connection, learning rate, LoRA rank, checkpoints, seed).
 */
import type { Command } from 'commander';
import { runTrainCommand, type Supplied, type TrainFlags } from '../commands/train/command.js';
import type { TrainCommonOptions, TrainResult } from '../commands/train/run.js';
import { runTrainDistill, type TrainDistillOptions } from '../commands/train/distill.js';
import { DEFAULT_DPO_LR, runTrainDpo, type TrainDpoOptions } from '../commands/train/dpo.js';
import { RL_ENVS, runTrainRl, type RlEnvName, type TrainRlOptions } from '../commands/train/rl.js';
import { runTrainSft, type TrainSftOptions } from '../commands/train/sft.js';
import { connectionOptions, parseChoice, parseInteger, parseNumber, reportFailure } from './options.js';

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

/** Adds `lathe train` and its recipes to `program`. */
export function registerTrainCommands(program: Command): void {
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
}
