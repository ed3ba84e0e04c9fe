/**
 * @module `lathe worker --connect HOST:PORT --token TOKEN`: runs a compute worker that dials a
 * server's worker port (`lathe serve --worker-port N`) and serves its ops.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { pythonExecutable, REPO_ROOT } from '@lathe/server';

/** Options for {@link runWorker}. */
export interface WorkerOptions {
  /** `HOST:PORT` of the server's worker port. */
  connect: string;
  /** The server's worker token (it travels to Python in the environment, never on a command line). */
  token: string;
  modelsDir?: string;
  /** `cpu`, `cuda`, `cuda:1`…; default: CUDA when available. */
  device?: string;
  dtype?: string;
  /** Exit when the server closes the connection instead of reconnecting. */
  reconnect?: boolean;
}

/** The `python -m lathe_worker` arguments for {@link WorkerOptions}. */
export function workerArgs(options: WorkerOptions): string[] {
  return [
    // --owned: the worker exits when this process dies (it is this process's worker).
    '-m', 'lathe_worker', '--connect', options.connect, '--owned',
    ...(options.modelsDir ? ['--models-dir', path.resolve(options.modelsDir)] : []),
    ...(options.device ? ['--device', options.device] : []),
    ...(options.dtype ? ['--dtype', options.dtype] : []),
    ...(options.reconnect === false ? ['--no-reconnect'] : []),
  ];
}

/**
 * Runs the Python worker in connect mode until it exits, forwarding SIGINT/SIGTERM to it; resolves
 * with its exit status (2: the server refused the token).
 *
 * @example
 * process.exitCode = await runWorker({ connect: 'gpu-server:7001', token: process.env.LATHE_WORKER_TOKEN! });
 */
export async function runWorker(options: WorkerOptions): Promise<number> {
  const child = spawn(pythonExecutable(), workerArgs(options), {
    cwd: path.join(REPO_ROOT, 'worker'),
    env: { ...process.env, LATHE_WORKER_TOKEN: options.token, PYTHONUNBUFFERED: '1' },
    stdio: 'inherit',
  });
  const forward = (signal: NodeJS.Signals): void => {
    child.kill(signal);
  };
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  try {
    return await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 + (signalNumber(signal) ?? 0) : 1)));
    });
  } finally {
    process.off('SIGINT', forward);
    process.off('SIGTERM', forward);
  }
}

function signalNumber(signal: NodeJS.Signals): number | undefined {
  return ({ SIGINT: 2, SIGKILL: 9, SIGTERM: 15 } as Partial<Record<NodeJS.Signals, number>>)[signal];
}
