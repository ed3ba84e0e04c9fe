/**
 * @module The server's data directory: checked at start, and locked so that only one server
 * uses it at a time.
 */
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, statSync, unlinkSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/**
 * A data directory the server cannot use, told in one sentence; the CLI prints just the message.
 *
 * @example
 * try { prepareDataDir('/etc/passwd/x'); } catch (e) { if (e instanceof DataDirError) console.error(e.message); }
 */
export class DataDirError extends Error {
  override readonly name = 'DataDirError';
}

/** The lock file's name inside the data directory. */
export const LOCK_FILE = 'lathe.lock';

/** Why a file system call failed, in words. */
function why(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOTDIR':
      return 'a part of its path is a file, not a directory';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EROFS':
      return 'the file system is read-only';
    case 'ENOSPC':
      return 'no space is left on the device';
    default:
      return (error as Error).message;
  }
}

/**
 * Creates `dataDir` if needed and checks that it is a directory; throws {@link DataDirError}.
 * (Whether it is writable is found out by taking the lock, which writes a file there.)
 *
 * @example
 * prepareDataDir('.lathe');
 */
export function prepareDataDir(dataDir: string): void {
  try {
    if (statSync(dataDir, { throwIfNoEntry: false })?.isDirectory() === false) throw new DataDirError(`the data directory ${dataDir} is not a directory`);
    mkdirSync(dataDir, { recursive: true });
  } catch (error) {
    if (error instanceof DataDirError) throw error;
    throw new DataDirError(`cannot create the data directory ${dataDir}: ${why(error)}`);
  }
}

/** The holder a lock file names. */
interface Holder {
  pid: number;
  host: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'; // someone else's live process
  }
}

/**
 * Takes `<dataDir>/lathe.lock` for this process, or throws {@link DataDirError} naming the live
 * server that holds it. A lock left by a dead process (of this host) is taken over. Returns the
 * release function. Two servers starting at the same instant over a stale lock are not told
 * apart (both remove it); a live holder always is.
 *
 * @example
 * const release = lockDataDir('.lathe');
 * // ... serve ...
 * release();
 */
export function lockDataDir(dataDir: string): () => void {
  const file = path.join(dataDir, LOCK_FILE);
  const mine = JSON.stringify({ pid: process.pid, host: os.hostname() } satisfies Holder);
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    try {
      fd = openSync(file, 'wx', 0o644);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 3) {
        throw new DataDirError(`cannot write to the data directory ${dataDir}: ${why(error)}`);
      }
      const text = readText(file);
      if (text === undefined) continue; // released meanwhile
      const holder = parseHolder(text);
      if (holder && (holder.host !== os.hostname() || alive(holder.pid))) {
        const where = holder.host === os.hostname() ? '' : ` on ${holder.host}`;
        throw new DataDirError(`the data directory ${dataDir} is in use by another lathe server (pid ${holder.pid}${where}); stop it, or remove ${file} if it is gone`);
      }
      // A stale (or unreadable) lock: take it over, unless it changed meanwhile.
      if (readText(file) === text) rmSync(file, { force: true });
      continue;
    }
    try {
      writeSync(fd, mine);
    } catch (error) {
      closeSync(fd);
      unlinkSync(file);
      throw new DataDirError(`cannot write to the data directory ${dataDir}: ${why(error)}`);
    }
    closeSync(fd);
    return () => {
      // Only our own lock: a later holder's must survive a late release.
      if (readText(file) === mine) rmSync(file, { force: true });
    };
  }
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function parseHolder(text: string): Holder | undefined {
  try {
    const parsed = JSON.parse(text) as Partial<Holder>;
    return typeof parsed.pid === 'number' && typeof parsed.host === 'string' ? { pid: parsed.pid, host: parsed.host } : undefined;
  } catch {
    return undefined;
  }
}
