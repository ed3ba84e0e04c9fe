/**
 * @module The models this server can load, as the worker's model registry sees them.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { pythonExecutable, REPO_ROOT } from './process.js';

/** One loadable model. */
export interface ModelEntry {
  model_name: string;
  max_context_length: number;
  vocab_size: number;
  architecture: string;
}

/**
 * Asks the worker's registry (without loading weights) which models exist locally.
 *
 * @example
 * const models = await listModels('.lathe/models'); // [{ model_name: 'lathe/tiny-llama3', ... }, ...]
 */
export async function listModels(modelsDir: string): Promise<ModelEntry[]> {
  const { stdout } = await promisify(execFile)(pythonExecutable(), ['-m', 'lathe_worker', '--list-models', '--models-dir', modelsDir], {
    cwd: path.join(REPO_ROOT, 'worker'),
  });
  return JSON.parse(stdout) as ModelEntry[];
}
