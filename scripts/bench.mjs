#!/usr/bin/env node
// Runs one benchmark: `npm run bench -- <name> [args]`. `npm run bench` alone lists the benchmarks.
// The exit code is the benchmark's.
//
//   TypeScript: bench/ts/<name>.ts (checked first) runs as
//     node --conditions=lathe-source --import tsx bench/ts/<name>.ts [args]
//     from the repository root, with the soft file-descriptor limit raised to the hard limit
//     (the control-plane benchmarks hold thousands of sockets).
//   Python: bench/python/<name, - as _>.py runs with the repository's venv (or $LATHE_PYTHON),
//     cwd worker/ and PYTHONPATH=worker so that `import lathe_worker` works.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const benchDir = path.join(root, 'bench', 'python');
const tsBenchDir = path.join(root, 'bench', 'ts');
const python = process.env.LATHE_PYTHON || path.join(root, '.venv', 'bin', 'python');

function pythonBenches() {
  if (!existsSync(benchDir)) return [];
  return readdirSync(benchDir)
    .filter((f) => f.endsWith('.py') && !f.startsWith('_'))
    .sort()
    .map((f) => {
      // First line of the module docstring, if any, as the description.
      const text = readFileSync(path.join(benchDir, f), 'utf8');
      const m = text.match(/^(?:#[^\n]*\n)*\s*(?:"""|''')\s*([^\n]*)/);
      return { name: f.slice(0, -3).replaceAll('_', '-'), file: f, about: m ? m[1].trim() : '' };
    });
}

function tsBenches() {
  if (!existsSync(tsBenchDir)) return [];
  return readdirSync(tsBenchDir)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts') && !f.startsWith('_'))
    .sort()
    .map((f) => {
      // First line of the leading /** ... */ comment, without a "<name>:" prefix, as the description.
      const name = f.slice(0, -3);
      const text = readFileSync(path.join(tsBenchDir, f), 'utf8');
      const m = text.match(/^(?:#![^\n]*\n)?\s*\/\*\*?\s*\n?\s*\*?\s*(?:@module\s+)?([^\n]*)/);
      let about = m ? m[1].trim() : '';
      if (about.startsWith(`${name}:`)) about = about.slice(name.length + 1).trim();
      return { name, file: f, about };
    });
}

const [name, ...rest] = process.argv.slice(2);
const py = pythonBenches();
const ts = tsBenches();

if (!name || name === '--list' || name === '-h' || name === '--help') {
  console.log('usage: npm run bench -- <name> [args]   (pass --help after the name for its options)\n');
  const width = Math.max(0, ...[...py, ...ts].map((b) => b.name.length));
  console.log('benchmarks (bench/python/):');
  for (const b of py) console.log(`  ${b.name.padEnd(width)}  ${b.about}`);
  console.log('\nbenchmarks (bench/ts/):');
  for (const b of ts) console.log(`  ${b.name.padEnd(width)}  ${b.about}`);
  process.exit(0);
}

/** Exits like the benchmark did (a signal as a shell would report it: 128 + its number). */
function exitLike(result, program) {
  if (result.error) {
    console.error(`failed to run ${program}: ${result.error.message}`);
    process.exit(1);
  }
  if (result.status === null) {
    const signals = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };
    process.exit(128 + (signals[result.signal] ?? 1));
  }
  process.exit(result.status);
}

const tsFile = path.join(tsBenchDir, `${name}.ts`);
if (/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(name) && existsSync(tsFile)) {
  const nodeArgs = ['--conditions=lathe-source', '--import', 'tsx', path.relative(root, tsFile), ...rest];
  // Raise the soft fd limit as far as the hard limit allows (a no-op when it cannot), then exec node.
  const raise =
    'h=$(ulimit -Hn 2>/dev/null); [ "$h" = unlimited ] && h=1048576; ' +
    '[ -n "$h" ] && { ulimit -n "$h" 2>/dev/null || ulimit -n 65536 2>/dev/null || true; }; exec "$@"';
  const useShell = process.platform !== 'win32' && existsSync('/bin/sh');
  const result = useShell
    ? spawnSync('/bin/sh', ['-c', raise, 'sh', process.execPath, ...nodeArgs], { cwd: root, stdio: 'inherit' })
    : spawnSync(process.execPath, nodeArgs, { cwd: root, stdio: 'inherit' });
  exitLike(result, process.execPath);
}

const file = path.join(benchDir, `${name.replaceAll('-', '_')}.py`);
if (!existsSync(file)) {
  console.error(`unknown benchmark ${JSON.stringify(name)}; available: ${[...py, ...ts].map((b) => b.name).join(', ')}`);
  process.exit(2);
}
if (!process.env.LATHE_PYTHON && !existsSync(python)) {
  console.error(`no Python at ${path.relative(root, python)}; run \`npm run setup\` or set LATHE_PYTHON`);
  process.exit(2);
}

const workerDir = path.join(root, 'worker');
const env = { ...process.env, PYTHONPATH: [workerDir, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter) };
exitLike(spawnSync(python, [file, ...rest], { cwd: workerDir, stdio: 'inherit', env }), python);
