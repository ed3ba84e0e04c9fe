/**
 * @module Option parsers and shared flags of the `lathe` commands: whole numbers, numbers, choices,
 * `--model-alias`, the connection flags, and the one-line failure report of client commands.
 */
import path from 'node:path';
import { DataDirError, parseAlias } from '@lathe/server';
import { Command, InvalidArgumentError } from 'commander';
import { DEFAULT_DATA_DIR } from '../commands/serve.js';

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
export async function reportFailure(command: string, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (error) {
    if (error instanceof DataDirError) throw error;
    console.error(`lathe ${command}: ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 1;
  }
}

/** Options of the commands that talk to a server: a remote one, or an embedded one on a data directory. */
export function connectionOptions(command: Command): Command {
  return command
    .option('--base-url <url>', 'a running server (default: start an embedded one for this command)')
    .option('--api-key <key>', 'API key for --base-url (default: $LATHE_API_KEY)')
    .option('--data-dir <dir>', 'the embedded server data directory', DEFAULT_DATA_DIR)
    .option('--models-dir <dir>', 'where the embedded server finds models (default <data-dir>/models)');
}

/** Accumulates `--model-alias NAME=PATH` values; a relative folder path is taken from the current directory. */
export function collectAlias(value: string, previous: Record<string, string>): Record<string, string> {
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
export function parseChoice<T extends string>(name: string, choices: readonly T[]): (value: string) => T {
  return (value) => {
    if (!(choices as readonly string[]).includes(value)) throw new InvalidArgumentError(`${name} must be one of ${choices.join(', ')}, got ${JSON.stringify(value)}`);
    return value as T;
  };
}
