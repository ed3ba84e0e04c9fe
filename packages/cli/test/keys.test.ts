// `lathe keys create | list | revoke` against a real data directory (SQLite).
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { openStore } from '@lathe/server';
import { CommanderError } from 'commander';
import { buildProgram } from '../src/main.js';

/** Runs `lathe ...argv`; returns what it printed on stdout, or the usage error it raised. */
async function lathe(...argv: string[]): Promise<{ stdout: string; error?: CommanderError; stderr: string }> {
  const program = buildProgram();
  const stderr: string[] = [];
  const quiet = (command: typeof program): void => {
    command.exitOverride().configureOutput({ writeErr: (s) => stderr.push(s), writeOut: () => {} });
    command.commands.forEach(quiet);
  };
  quiet(program);
  const lines: string[] = [];
  const log = console.log;
  console.log = (...args: unknown[]) => lines.push(args.join(' '));
  try {
    await program.parseAsync(['node', 'lathe', ...argv]);
    return { stdout: lines.join('\n'), stderr: stderr.join('') };
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    return { stdout: lines.join('\n'), error, stderr: stderr.join('') };
  } finally {
    console.log = log;
  }
}

test('lathe keys list shows name, prefix, created and revoked, never the secret; revoke takes a name or a prefix', async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lathe-cli-keys-'));
  const alice = (await lathe('keys', 'create', '--name', 'alice', '--data-dir', dataDir)).stdout;
  const bob = (await lathe('keys', 'create', '--name', 'bob', '--data-dir', dataDir)).stdout;
  await lathe('keys', 'create', '--name', 'bob', '--data-dir', dataDir); // a second "bob"
  assert.match(alice, /^tml-[A-Za-z0-9_-]{32}$/);

  const listed = (await lathe('keys', 'list', '--data-dir', dataDir)).stdout;
  const rows = listed.split('\n').map((line) => line.split(/\s+/));
  assert.deepEqual(rows[0], ['NAME', 'PREFIX', 'CREATED', 'REVOKED']);
  assert.deepEqual(rows.slice(1).map((r) => r[0]), ['alice', 'bob', 'bob']);
  assert.equal(rows[1]![1], alice.slice(0, 12));
  assert.ok(!Number.isNaN(Date.parse(rows[1]![2]!)));
  assert.equal(rows[1]![3], '-');
  assert.ok(!listed.includes(alice) && !listed.includes(bob), 'a secret was listed');

  // "bob" is ambiguous: refused, nothing revoked.
  const ambiguous = await lathe('keys', 'revoke', 'bob', '--data-dir', dataDir);
  assert.equal(ambiguous.error?.exitCode, 1);
  assert.match(ambiguous.stderr, /"bob" names 2 active keys/);
  assert.match((await lathe('keys', 'revoke', 'nobody', '--data-dir', dataDir)).stderr, /no active API key is named "nobody"/);

  assert.equal((await lathe('keys', 'revoke', 'alice', '--data-dir', dataDir)).stdout, `revoked alice (${alice.slice(0, 12)})`);
  assert.equal((await lathe('keys', 'revoke', bob.slice(0, 12), '--data-dir', dataDir)).stdout, `revoked bob (${bob.slice(0, 12)})`);
  const after = (await lathe('keys', 'list', '--data-dir', dataDir)).stdout.split('\n').slice(1).map((line) => line.split(/\s+/));
  assert.deepEqual(after.map((r) => r[3] !== '-'), [true, true, false]);

  const store = await openStore(path.join(dataDir, 'lathe.db'));
  try {
    assert.equal(await store.keys.authenticate(alice), undefined);
    assert.equal(await store.keys.authenticate(bob), undefined);
  } finally {
    await store.close();
  }
});
