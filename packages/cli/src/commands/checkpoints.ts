/**
 * @module `lathe checkpoints list|download|export|delete`. Downloads go through the server's signed
 * archive link (a tar of the adapter as a PEFT-layout folder under Tinker's names); exports turn
 * that archive into a PEFT adapter or a merged Hugging Face model with the worker's Python code
 * (`python -m lathe_worker.export`), which knows the models' weight names and tied embeddings.
 */
import { execFile } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import type { Checkpoint, RestClient } from '@lathe/sdk';
import { pythonExecutable, REPO_ROOT } from '@lathe/server';
import { extract as extractTar } from 'tar';
import { formatBytes, formatTable, take } from '../table.js';
import { modelsDirOf, withService, type ConnectOptions } from './connect.js';

/** What every checkpoint command takes: a connection and a log for progress lines. */
export interface CheckpointCommandOptions extends ConnectOptions {
  log: (line: string) => void;
}

/**
 * The checkpoints of one run (`runId`), or all of this key's, newest first (at most `limit`).
 *
 * @example
 * const checkpoints = await listCheckpoints({ dataDir: '.lathe', runId: 'S:train:0', limit: 100, log: console.error });
 */
export async function listCheckpoints(options: CheckpointCommandOptions & { runId?: string; limit: number }): Promise<Checkpoint[]> {
  return withService(options, options.log, async (service) => {
    const rest = service.createRestClient();
    if (options.runId !== undefined) return (await rest.listCheckpoints(options.runId)).checkpoints.slice(0, options.limit);
    return take(rest.iterUserCheckpoints({ limit: Math.min(options.limit, 100) }), options.limit);
  });
}

/**
 * Checkpoints as a table: tinker path, type, size, created, expiry, published.
 *
 * @example
 * console.log(checkpointsTable(checkpoints));
 */
export function checkpointsTable(checkpoints: readonly Checkpoint[]): string {
  if (checkpoints.length === 0) return 'no checkpoints';
  return formatTable([
    ['PATH', 'TYPE', 'SIZE', 'CREATED', 'EXPIRES', 'PUBLIC'],
    ...checkpoints.map((c) => [c.tinkerPath, c.checkpointType, formatBytes(c.sizeBytes), c.time, c.expiresAt ?? '-', c.public ? 'yes' : 'no']),
  ]);
}

/**
 * A file name for a checkpoint's archive: `tinker://S:train:0/weights/step-10` gives
 * `S_train_0-weights-step-10.tar` (no characters that some file systems refuse).
 *
 * @example
 * archiveFileName('tinker://S:train:0/sampler_weights/final'); // 'S_train_0-sampler_weights-final.tar'
 */
export function archiveFileName(tinkerPath: string): string {
  return `${tinkerPath.replace(/^tinker:\/\//, '').replace(/\//g, '-').replace(/[^A-Za-z0-9._-]/g, '_')}.tar`;
}

/** Streams the archive of `tinkerPath` to `file`; returns its size in bytes. */
async function saveArchive(rest: RestClient, tinkerPath: string, file: string): Promise<number> {
  const { url } = await rest.getCheckpointArchiveUrlFromTinkerPath(tinkerPath);
  const response = await fetch(url);
  if (!response.ok || response.body === null) throw new Error(`downloading ${tinkerPath} failed: HTTP ${response.status} ${(await response.text()).slice(0, 300)}`);
  const out = createWriteStream(file);
  await pipeline(Readable.fromWeb(response.body), out);
  return out.bytesWritten;
}

/**
 * Downloads a checkpoint as a tar of its adapter (`adapter_config.json`, `adapter_model.safetensors`)
 * to `output` (default: {@link archiveFileName} in the current folder).
 *
 * @example
 * const { file, bytes } = await downloadCheckpoint({ dataDir: '.lathe', tinkerPath: 'tinker://S:train:0/weights/final', log: console.error });
 */
export async function downloadCheckpoint(options: CheckpointCommandOptions & { tinkerPath: string; output?: string }): Promise<{ file: string; bytes: number }> {
  const file = path.resolve(options.output ?? archiveFileName(options.tinkerPath));
  const bytes = await withService(options, options.log, (service) => saveArchive(service.createRestClient(), options.tinkerPath, file));
  return { file, bytes };
}

/** Options of {@link exportCheckpoint}: at least one of `peft` and `merged`. */
export interface ExportOptions extends CheckpointCommandOptions {
  tinkerPath: string;
  /** Write the adapter here, under PEFT's names (for peft, transformers and vLLM). */
  peft?: string;
  /** Write the base model with the adapter merged in here, as a Hugging Face folder. */
  merged?: string;
  /** The base model (name or folder) for `merged`; default the one the checkpoint was trained on. */
  baseModel?: string;
}

/** A folder {@link exportCheckpoint} wrote. */
export interface ExportedFolder {
  kind: 'peft' | 'merged';
  /** Absolute path. */
  folder: string;
}

/**
 * Exports a checkpoint as a PEFT adapter folder and/or a merged Hugging Face model; returns the
 * folders written. The merge needs the base model's weights on this machine (found in `modelsDir`
 * like the server finds them).
 *
 * @example
 * const [{ folder }] = await exportCheckpoint({ dataDir: '.lathe', tinkerPath: 'tinker://S:train:0/sampler_weights/final', merged: 'out/merged', log: console.error });
 */
export async function exportCheckpoint(options: ExportOptions): Promise<ExportedFolder[]> {
  const outputs: [flag: '--peft' | '--merged', dir: string][] = [];
  if (options.peft !== undefined) outputs.push(['--peft', path.resolve(options.peft)]);
  if (options.merged !== undefined) outputs.push(['--merged', path.resolve(options.merged)]);
  if (outputs.length === 0) throw new Error('give --peft DIR and/or --merged DIR');
  // Checked here too (the export script checks again) so that a bad folder costs no download.
  for (const [flag, dir] of outputs) if (existsSync(dir) && readdirSync(dir).length > 0) throw new Error(`${flag} ${dir} exists and is not empty`);
  const work = mkdtempSync(path.join(os.tmpdir(), 'lathe-export-'));
  try {
    const archive = path.join(work, 'archive.tar');
    await withService(options, options.log, (service) => saveArchive(service.createRestClient(), options.tinkerPath, archive));
    const adapter = path.join(work, 'adapter');
    mkdirSync(adapter);
    await extractTar({ file: archive, cwd: adapter });
    const base = options.baseModel !== undefined ? ['--base', options.baseModel] : [];
    await runExport(['--adapter', adapter, ...outputs.flat(), '--models-dir', modelsDirOf(options), ...base]);
    return outputs.map(([flag, dir]) => ({ kind: flag === '--peft' ? 'peft' : 'merged', folder: dir }));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** `python -m lathe_worker.export ARGS`; a failure becomes an error with the script's message. */
async function runExport(args: string[]): Promise<void> {
  try {
    await promisify(execFile)(pythonExecutable(), ['-m', 'lathe_worker.export', ...args], { cwd: path.join(REPO_ROOT, 'worker'), maxBuffer: 16 << 20 });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new Error(stderr ? stderr.split('\n').at(-1)! : (error as Error).message);
  }
}

/**
 * Deletes a checkpoint (its files too).
 *
 * @example
 * await deleteCheckpoint({ dataDir: '.lathe', tinkerPath: 'tinker://S:train:0/weights/step-10', log: console.error });
 */
export async function deleteCheckpoint(options: CheckpointCommandOptions & { tinkerPath: string }): Promise<void> {
  await withService(options, options.log, (service) => service.createRestClient().deleteCheckpointFromTinkerPath(options.tinkerPath));
}
