/**
 * @module The command line of every TypeScript benchmark: its own flags plus the ones they all take
 * (`--model`, `--models-dir`, `--help`).
 */
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { REPO_ROOT } from '../../packages/server/src/worker/process.js';

/** The flags every benchmark takes. */
const SHARED_OPTIONS = {
  model: { type: 'string', default: 'lathe/tiny-qwen3' },
  'models-dir': { type: 'string', default: path.join(REPO_ROOT, '.lathe', 'models') },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

type BenchOptions = NonNullable<ParseArgsConfig['options']>;

/** The parsed flags of a benchmark whose own flags are `Own`. */
export type BenchValues<Own extends BenchOptions> = ReturnType<typeof parseArgs<{ options: Own & typeof SHARED_OPTIONS }>>['values'];

/**
 * Parses `process.argv` with the benchmark's `options` and the shared ones; with `--help` prints
 * `usage` and returns undefined (the benchmark then exits 0).
 *
 * @example
 * const values = parseBenchArgs(USAGE, { steps: { type: 'string', default: '10' } });
 * if (values === undefined) return 0;
 * startBenchServer({ model: values.model, modelsDir: path.resolve(values['models-dir']) });
 */
export function parseBenchArgs<const Own extends BenchOptions>(usage: string, options: Own): BenchValues<Own> | undefined {
  // parseArgs cannot type the values of options still generic here; BenchValues names them for the caller.
  const values = parseArgs({ options: { ...options, ...SHARED_OPTIONS } }).values as BenchValues<Own> & { help: boolean };
  if (values.help) {
    console.log(usage);
    return undefined;
  }
  return values;
}
