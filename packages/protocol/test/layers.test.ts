// Dependency direction between the workspaces (docs/architecture.md, "Dependency rules"): every
// import of every TypeScript source file, and every workspace's runtime dependencies, point down
// the layers cookbook → sdk → protocol ← server; only the cli and the dashboard sit above them all.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** Which other workspaces each workspace's sources may import (its own name is always allowed). */
const ALLOWED_IMPORTS: Readonly<Record<string, readonly string[]>> = {
  '@lathe/protocol': [],
  '@lathe/sdk': ['@lathe/protocol'],
  '@lathe/cookbook': ['@lathe/sdk', '@lathe/protocol'],
  '@lathe/server': ['@lathe/protocol'],
  '@lathe/web': ['@lathe/sdk', '@lathe/cookbook', '@lathe/protocol'],
  '@lathe/cli': ['@lathe/server', '@lathe/sdk', '@lathe/cookbook', '@lathe/protocol'],
};

/** A workspace: its package name and its folder relative to the repository root. */
interface Workspace {
  name: string;
  dir: string;
}

/** One source file: its path relative to the repository root, and its text. */
interface SourceFile {
  file: string;
  text: string;
}

/**
 * The workspace a module specifier refers to: `@lathe/x` or `@lathe/x/sub` by name, a relative
 * specifier by the folder it resolves into; undefined for anything else (node:*, npm packages).
 */
function targetWorkspace(specifier: string, fromFile: string, workspaces: readonly Workspace[]): string | undefined {
  if (specifier.startsWith('.')) {
    const resolved = path.posix.join(path.posix.dirname(fromFile), specifier);
    return workspaces.find((w) => resolved === w.dir || resolved.startsWith(`${w.dir}/`))?.name;
  }
  return workspaces.find((w) => specifier === w.name || specifier.startsWith(`${w.name}/`))?.name;
}

/**
 * Every import (static, type-only, dynamic, `export … from`, side-effect) of `files` that breaks
 * `rules`, as `file → specifier (workspace)`. Comments are not imports: TypeScript's own scanner
 * reads them.
 */
function layerViolations(files: readonly SourceFile[], workspaces: readonly Workspace[], rules: Readonly<Record<string, readonly string[]>>): string[] {
  const violations: string[] = [];
  for (const { file, text } of files) {
    const owner = workspaces.find((w) => file.startsWith(`${w.dir}/`));
    assert.ok(owner, `${file} belongs to no workspace`);
    const allowed = rules[owner.name];
    assert.ok(allowed, `no layer rule for ${owner.name}: add it to ALLOWED_IMPORTS and docs/architecture.md`);
    for (const { fileName: specifier } of ts.preProcessFile(text, true, true).importedFiles) {
      const target = targetWorkspace(specifier, file, workspaces);
      if (target !== undefined && target !== owner.name && !allowed.includes(target)) {
        violations.push(`${file} → ${specifier} (${owner.name} may not import ${target})`);
      }
    }
  }
  return violations;
}

function workspaces(): Workspace[] {
  const root = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { workspaces: string[] };
  return root.workspaces.map((dir) => ({ dir, name: packageJson(dir).name }));
}

function packageJson(dir: string): { name: string; dependencies?: Record<string, string> } {
  return JSON.parse(readFileSync(path.join(REPO_ROOT, dir, 'package.json'), 'utf8')) as { name: string; dependencies?: Record<string, string> };
}

/** The TypeScript sources of a workspace: everything under its `src/` (tests and builds excluded). */
function sources(workspace: Workspace): SourceFile[] {
  const src = path.join(REPO_ROOT, workspace.dir, 'src');
  return readdirSync(src, { recursive: true, encoding: 'utf8' })
    .filter((entry) => /\.(ts|mts|tsx)$/.test(entry) && !entry.endsWith('.d.ts'))
    .map((entry) => ({ file: `${workspace.dir}/src/${entry.split(path.sep).join('/')}`, text: readFileSync(path.join(src, entry), 'utf8') }));
}

test('every workspace has a layer rule', () => {
  assert.deepEqual(workspaces().map((w) => w.name).sort(), Object.keys(ALLOWED_IMPORTS).sort());
});

test('no source file imports a workspace above its own', () => {
  const all = workspaces();
  const files = all.flatMap(sources);
  assert.ok(files.length > 100, `only ${files.length} source files found`);
  assert.deepEqual(layerViolations(files, all, ALLOWED_IMPORTS), []);
});

test('no workspace depends at run time on a workspace above its own', () => {
  for (const workspace of workspaces()) {
    const lathe = Object.keys(packageJson(workspace.dir).dependencies ?? {}).filter((dep) => dep.startsWith('@lathe/'));
    const forbidden = lathe.filter((dep) => !ALLOWED_IMPORTS[workspace.name]!.includes(dep));
    assert.deepEqual(forbidden, [], `${workspace.name}'s dependencies`);
  }
});

test('a back-edge is found however it is written, and comments are not imports', () => {
  const all = workspaces();
  const sdk = all.find((w) => w.name === '@lathe/sdk')!.dir;
  const protocol = all.find((w) => w.name === '@lathe/protocol')!.dir;
  const files: SourceFile[] = [
    { file: `${sdk}/src/core/a.ts`, text: "import { createServer } from '@lathe/server';\nimport { encode } from '@lathe/protocol';" },
    { file: `${sdk}/src/core/b.ts`, text: "export type { Run } from '../../../server/src/store/runs.js';" },
    { file: `${sdk}/src/core/c.ts`, text: "const cookbook = await import('@lathe/cookbook/browser');" },
    { file: `${protocol}/src/d.ts`, text: "/** import { x } from '@lathe/sdk' */\n// import '@lathe/server';\nimport './wire.js';" },
    { file: `${protocol}/src/e.ts`, text: "import '@lathe/sdk';" },
  ];
  assert.deepEqual(layerViolations(files, all, ALLOWED_IMPORTS), [
    `${sdk}/src/core/a.ts → @lathe/server (@lathe/sdk may not import @lathe/server)`,
    `${sdk}/src/core/b.ts → ../../../server/src/store/runs.js (@lathe/sdk may not import @lathe/server)`,
    `${sdk}/src/core/c.ts → @lathe/cookbook/browser (@lathe/sdk may not import @lathe/cookbook)`,
    `${protocol}/src/e.ts → @lathe/sdk (@lathe/protocol may not import @lathe/sdk)`,
  ]);
});
