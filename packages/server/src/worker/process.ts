/**
 * @module Starting a local worker process (`python -m lathe_worker`, or with `LATHE_WORKER_PROCS=N` a
 * tensor-parallel group of N processes under `torchrun`) and connecting to it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WorkerClient } from './client.js';

/** The repository root (this file lives at packages/server/{src,dist}/worker/). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');

/** The Python interpreter: `$LATHE_PYTHON`, else the repository's `.venv`, else `python3`. */
export function pythonExecutable(): string {
  const fromEnv = process.env['LATHE_PYTHON'];
  if (fromEnv) return fromEnv;
  const venv = path.join(REPO_ROOT, '.venv', 'bin', 'python');
  return existsSync(venv) ? venv : 'python3';
}

/** Options for {@link startLocalWorker}. */
export interface LocalWorkerOptions {
  /** Where built-in tiny models are written and local models are found. */
  modelsDir: string;
  /** Load this model at start-up. */
  model?: string;
  /** Extra environment for the worker process. */
  env?: NodeJS.ProcessEnv;
  /** Extra `python -m lathe_worker` flags. */
  args?: string[];
  /** Forward the worker's stderr (its log) to ours. */
  inheritStderr?: boolean;
  /**
   * Processes that split the base model between them (tensor parallel, one device each), started by
   * `torchrun`; default `$LATHE_WORKER_PROCS` (from `env`, then the server's environment), else 1.
   */
  processes?: number;
}

/** The worker's processes: `options.processes`, else `LATHE_WORKER_PROCS`, else 1. */
export function workerProcesses(options: Pick<LocalWorkerOptions, 'processes' | 'env'>): number {
  const raw = options.processes ?? options.env?.['LATHE_WORKER_PROCS'] ?? process.env['LATHE_WORKER_PROCS'] ?? 1;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`LATHE_WORKER_PROCS / processes must be a positive integer, got ${String(raw)}`);
  return n;
}

/** `python` arguments that start the worker: `-m lathe_worker ...`, or a torchrun group of `processes`. */
export function workerCommand(processes: number, workerArgs: string[]): string[] {
  const worker = ['-m', 'lathe_worker', ...workerArgs];
  return processes === 1 ? worker : ['-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', String(processes), ...worker];
}

/** A worker process and a connection to it. */
export interface LocalWorker {
  client: WorkerClient;
  child: ChildProcess;
  socketPath: string;
  /** Asks the worker to shut down and waits for the process to exit. */
  stop(): Promise<void>;
}

/**
 * Spawns a worker on a fresh unix socket and connects once it says it is listening.
 *
 * @example
 * const worker = await startLocalWorker({ modelsDir: '.lathe/models', model: 'lathe/tiny-qwen3' });
 * console.log(await worker.client.request('stats'));
 * await worker.stop();
 */
export async function startLocalWorker(options: LocalWorkerOptions): Promise<LocalWorker> {
  const socketPath = path.join(mkdtempSync(path.join(os.tmpdir(), 'lathe-worker-')), 'worker.sock');
  const workerArgs = ['--socket', socketPath, '--models-dir', options.modelsDir];
  if (options.model) workerArgs.push('--model', options.model);
  if (options.args) workerArgs.push(...options.args);
  const child = spawn(pythonExecutable(), workerCommand(workerProcesses(options), workerArgs), {
    cwd: path.join(REPO_ROOT, 'worker'),
    env: { ...process.env, PYTHONUNBUFFERED: '1', ...options.env },
    stdio: ['ignore', 'pipe', options.inheritStderr ? 'inherit' : 'pipe'],
  });
  const stderr: string[] = [];
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr.push(chunk.toString());
    if (stderr.length > 200) stderr.shift();
  });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      if (out.includes('lathe-worker listening on')) {
        child.stdout?.off('data', onData);
        child.stdout?.resume(); // keep draining so the worker never blocks on a full pipe
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.once('exit', (code) => reject(new Error(`worker exited with code ${code} before listening:\n${stderr.join('')}`)));
    child.once('error', reject);
  });
  const client = await WorkerClient.connect({ socketPath });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    client,
    child,
    socketPath,
    async stop() {
      if (child.exitCode === null) {
        await client.request('shutdown').catch(() => undefined);
        client.close();
        await exited;
      }
    },
  };
}
