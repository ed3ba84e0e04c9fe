// The command line's option parsing (no server is started: every case fails in parsing).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CommanderError, InvalidArgumentError, type Command } from 'commander';
import { buildProgram, parseInteger } from '../src/main.js';

/** The program with every command throwing instead of exiting, and its stderr captured. */
function program(): { root: Command; stderr: string[] } {
  const stderr: string[] = [];
  const root = buildProgram();
  const quiet = (command: Command): void => {
    command.exitOverride().configureOutput({ writeErr: (s) => stderr.push(s), writeOut: () => {} });
    command.commands.forEach(quiet);
  };
  quiet(root);
  return { root, stderr };
}

describe('parseInteger', () => {
  test('accepts whole numbers in range', () => {
    assert.equal(parseInteger('--steps', { min: 1 })('30'), 30);
    assert.equal(parseInteger('--port', { min: 0, max: 65535 })('0'), 0);
    assert.equal(parseInteger('--port', { min: 0, max: 65535 })('65535'), 65535);
  });

  test('rejects non-numbers, fractions, trailing junk and out-of-range values, naming the option', () => {
    const port = parseInteger('--port', { min: 0, max: 65535 });
    for (const bad of ['abc', '', '1.5', '80x', '0x50', '65536', '-1', '1e3']) {
      assert.throws(
        () => port(bad),
        (e: unknown) => e instanceof InvalidArgumentError && e.message === `--port must be an integer from 0 to 65535, got ${JSON.stringify(bad)}`,
        bad,
      );
    }
    assert.throws(() => parseInteger('--steps', { min: 1 })('0'), /--steps must be an integer >= 1, got "0"/);
  });
});

describe('the lathe command', () => {
  for (const [argv, flag] of [
    [['demo', '--rl-steps', 'ten'], '--rl-steps'],
    [['serve', '--port', 'http'], '--port'],
    [['serve', '--port', '99999'], '--port'],
    [['serve', '--max-resident-adapters', '0'], '--max-resident-adapters'],
    [['serve', '--max-host-adapters', 'many'], '--max-host-adapters'],
  ] as const) {
    test(`lathe ${argv.join(' ')} is a usage error naming ${flag}`, async () => {
      const { root, stderr } = program();
      const error = await root.parseAsync(['node', 'lathe', ...argv]).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(error instanceof CommanderError, String(error));
      assert.equal(error.code, 'commander.invalidArgument');
      assert.equal(error.exitCode, 1);
      assert.match(stderr.join(''), new RegExp(`${flag} must be an integer`));
    });
  }
});

test('lathe serve --model-alias without NAME=PATH is a usage error naming the option', async () => {
  const { root, stderr } = program();
  const error = await root.parseAsync(['node', 'lathe', 'serve', '--model-alias', 'just-a-name']).then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(error instanceof CommanderError, String(error));
  assert.equal(error.code, 'commander.invalidArgument');
  assert.match(stderr.join(''), /--model-alias: expected NAME=PATH, got "just-a-name"/);
});

test('lathe serve scheduling limits must be positive integers: a usage error naming the option', async () => {
  for (const [flag, value] of [['--cycle-tokens', '0'], ['--sample-cycle-tokens', 'many'], ['--max-queued-per-key', '-3']] as const) {
    const { root, stderr } = program();
    const error = await root.parseAsync(['node', 'lathe', 'serve', flag, value]).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(error instanceof CommanderError, String(error));
    assert.equal(error.code, 'commander.invalidArgument');
    assert.match(stderr.join(''), new RegExp(`${flag} must be an integer >= 1, got "${value}"`));
  }
});

describe('lathe train and lathe sample usage errors', () => {
  const recipe = (name: string): string[] => ['train', name, '--model', 'lathe/tiny-qwen3', '--log-dir', 'runs/x'];
  const sft = recipe('sft');
  const sample = ['sample', '--model', 'lathe/tiny-qwen3', '--prompt', 'Hi'];
  for (const [argv, code, message] of [
    [[...sft, '--steps', '0'], 'commander.invalidArgument', '--steps must be an integer >= 1, got "0"'],
    [[...sft, '--batch-size', 'four'], 'commander.invalidArgument', '--batch-size must be an integer >= 1, got "four"'],
    [[...sft, '--lr', 'fast'], 'commander.invalidArgument', '--lr must be a number > 0, got "fast"'],
    [[...sft, '--lr', '0'], 'commander.invalidArgument', '--lr must be a number > 0, got "0"'],
    [[...sft, '--save-every', '-1'], 'commander.invalidArgument', '--save-every must be an integer >= 0, got "-1"'],
    [['train', 'sft', '--model', 'lathe/tiny-qwen3'], 'commander.missingMandatoryOptionValue', "required option '--log-dir <dir>' not specified"],
    [[...recipe('rl'), '--env', 'chess'], 'commander.invalidArgument', '--env must be one of arithmetic, guess-number, got "chess"'],
    [[...recipe('rl'), '--loss-fn', 'cispo'], 'commander.invalidArgument', '--loss-fn must be one of importance_sampling, ppo, got "cispo"'],
    [[...recipe('rl'), '--group-size', '1'], 'commander.invalidArgument', '--group-size must be an integer >= 2, got "1"'],
    [[...recipe('dpo'), '--beta', '0'], 'commander.invalidArgument', '--beta must be a number > 0, got "0"'],
    [[...recipe('distill'), '--teacher', 'lathe/tiny-qwen3', '--kl-coef', 'x'], 'commander.invalidArgument', '--kl-coef must be a number > 0, got "x"'],
    [recipe('distill'), 'commander.missingMandatoryOptionValue', "required option '--teacher <model-or-path>' not specified"],
    [[...sample, '--temperature', '-1'], 'commander.invalidArgument', '--temperature must be a number >= 0, got "-1"'],
    [[...sample, '--max-tokens', '0'], 'commander.invalidArgument', '--max-tokens must be an integer >= 1, got "0"'],
    [['sample', '--model', 'lathe/tiny-qwen3'], 'commander.missingMandatoryOptionValue', "required option '--prompt <text>' not specified"],
  ] as const) {
    test(`lathe ${argv.join(' ')} is a usage error naming the option`, async () => {
      const { root, stderr } = program();
      const error = await root.parseAsync(['node', 'lathe', ...argv]).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(error instanceof CommanderError, String(error));
      assert.equal(error.code, code);
      assert.equal(error.exitCode, 1);
      assert.ok(stderr.join('').includes(message), stderr.join(''));
    });
  }

  for (const name of ['sft', 'dpo']) {
    test(`lathe train ${name} with both --steps and --epochs is a usage error`, async () => {
      const { root, stderr } = program();
      const error = await root.parseAsync(['node', 'lathe', ...recipe(name), '--steps', '5', '--epochs', '2']).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(error instanceof CommanderError, String(error));
      assert.equal(error.exitCode, 1);
      assert.match(stderr.join(''), /give --steps or --epochs, not both/);
    });
  }
});
