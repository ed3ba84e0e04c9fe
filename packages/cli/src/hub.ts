/**
 * @module Downloading a model from the Hugging Face Hub (or a mirror with the same endpoints, as
 * `HF_ENDPOINT` names one) into the models directory, resumably.
 *
 * The Hub's file list comes from `GET {endpoint}/api/models/{org}/{name}/revision/{rev}?blobs=true`
 * (`siblings` with sizes and LFS sha256s); each file from `GET {endpoint}/{org}/{name}/resolve/{sha}/{file}`.
 * Files are written to `{file}.incomplete` in a hidden staging folder `.{org}__{name}.partial`, which
 * the model registry ignores; an interrupted file continues with `Range: bytes=N-`, both within one
 * run (retries) and in a later run. Each finished file is checked against its size and sha256, then
 * renamed; when all are there the staging folder becomes `{org}__{name}`, where the server finds it.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { DownloadProgress, type ProgressStream } from './progress.js';

/** The public Hub; `$HF_ENDPOINT` or `--endpoint` point elsewhere. */
export const DEFAULT_HUB_ENDPOINT = 'https://huggingface.co';

/** A model id `org/name` of safe characters (it becomes a folder name). */
const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** Weight formats other than safetensors (the worker loads only safetensors): not downloaded. */
const OTHER_WEIGHTS = /\.(bin|pt|pth|ckpt|h5|msgpack|onnx|ot|gguf|tflite)$/;

/** A refusal that retrying cannot fix: unknown model or file, no access, a corrupt download. */
export class HubError extends Error {
  override name = 'HubError';
}

/** Options of {@link pullModel}. */
export interface PullOptions {
  /** `org/name` on the Hub. */
  repo: string;
  /** The folder the server finds models in; the model goes to `<modelsDir>/<org>__<name>`. */
  modelsDir: string;
  /** Default `$HF_ENDPOINT`, else {@link DEFAULT_HUB_ENDPOINT}. */
  endpoint?: string;
  /** Branch, tag or commit; default `main`. */
  revision?: string;
  /** For gated and private models; default `$HF_TOKEN`. */
  token?: string;
  /** Times a broken download is resumed within this call before giving up (default 5). */
  retries?: number;
  /** A connection that sends nothing for this long is dropped and resumed (default 60 s). */
  idleTimeoutMs?: number;
  progress: ProgressStream;
  log: (line: string) => void;
}

/** What {@link pullModel} did. */
export interface PullResult {
  folder: string;
  files: number;
  /** Bytes of the model's files (fetched now or earlier). */
  bytes: number;
  /** The model was already in the models directory; nothing was fetched. */
  alreadyPresent: boolean;
}

interface Sibling {
  rfilename: string;
  size?: number;
  lfs?: { sha256?: string; size?: number };
}

/**
 * Downloads `repo` into the models directory (see the module comment for the layout and resuming).
 *
 * @throws {HubError} for an unknown model (naming it), a model without access, or a corrupt file.
 * @example
 * const { folder } = await pullModel({ repo: 'Qwen/Qwen3-0.6B', modelsDir: '.lathe/models', progress: process.stderr, log: console.error });
 */
export async function pullModel(options: PullOptions): Promise<PullResult> {
  const { repo, log } = options;
  if (!REPO_ID.test(repo) || repo.split('/').some((part) => part === '..' || part === '.')) {
    throw new HubError(`a model to pull is named ORG/NAME (letters, digits, '_', '.', '-'), got ${JSON.stringify(repo)}`);
  }
  const folderName = repo.replace('/', '__');
  const folder = path.resolve(options.modelsDir, folderName);
  if (existsSync(path.join(folder, 'config.json'))) return { folder, files: 0, bytes: 0, alreadyPresent: true };
  if (existsSync(folder)) throw new HubError(`${folder} exists but has no config.json; move it away to pull ${repo} there`);
  const endpoint = (options.endpoint ?? process.env['HF_ENDPOINT'] ?? DEFAULT_HUB_ENDPOINT).replace(/\/+$/, '');
  const token = options.token ?? process.env['HF_TOKEN'];
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const retries = options.retries ?? 5;
  const revision = options.revision ?? 'main';

  const listing = await retrying(retries, log, () => fetchListing(endpoint, repo, revision, headers));
  const files = listing.siblings.filter((s) => !s.rfilename.includes('/') && !s.rfilename.includes('\\') && !OTHER_WEIGHTS.test(s.rfilename));
  if (!files.some((s) => s.rfilename === 'config.json')) throw new HubError(`${repo} has no config.json, so it is not a transformers model`);
  if (!files.some((s) => s.rfilename.endsWith('.safetensors'))) throw new HubError(`${repo} has no safetensors weights (Lathe loads only .safetensors)`);

  const staging = path.join(path.resolve(options.modelsDir), `.${folderName}.partial`);
  mkdirSync(staging, { recursive: true });
  const sizeOf = (s: Sibling): number => s.lfs?.size ?? s.size ?? 0;
  const total = files.reduce((sum, s) => sum + sizeOf(s), 0);
  const onDisk = (s: Sibling): number => {
    const file = path.join(staging, s.rfilename);
    if (existsSync(file)) return statSync(file).size;
    return existsSync(`${file}.incomplete`) ? statSync(`${file}.incomplete`).size : 0;
  };
  let done = files.reduce((sum, s) => sum + onDisk(s), 0);
  if (done > 0) log(`resuming ${repo}: ${done} of ${total} bytes already downloaded`);
  const progress = new DownloadProgress(options.progress, repo, total, done);
  const revisionPath = encodeURIComponent(listing.sha ?? revision);
  try {
    for (const sibling of files) {
      const file = path.join(staging, sibling.rfilename);
      if (existsSync(file)) continue; // finished (and checked) in an earlier run
      const url = `${endpoint}/${repo}/resolve/${revisionPath}/${encodeURIComponent(sibling.rfilename)}`;
      const others = done - onDisk(sibling);
      try {
        await retrying(retries, log, () => downloadFile(url, `${file}.incomplete`, headers, options.idleTimeoutMs ?? 60_000, (bytes) => progress.update(others + bytes)));
      } catch (error) {
        if (error instanceof HubError) throw error;
        throw new Error(`downloading ${repo} failed (${describe(error)}); what was downloaded is kept: run the same command again to resume`);
      }
      done = others + statSync(`${file}.incomplete`).size;
      await verify(`${file}.incomplete`, sibling, repo);
      renameSync(`${file}.incomplete`, file);
    }
  } finally {
    progress.done();
  }
  renameSync(staging, folder);
  return { folder, files: files.length, bytes: total, alreadyPresent: false };
}

/** The listing of `repo` at `revision`; a 401/404 is a {@link HubError} naming the model. */
async function fetchListing(endpoint: string, repo: string, revision: string, headers: Record<string, string>): Promise<{ sha?: string; siblings: Sibling[] }> {
  const response = await fetch(`${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`, { headers });
  if (response.status === 404 || response.status === 401 || response.status === 403) {
    const code = response.headers.get('x-error-code');
    if (code === 'RevisionNotFound') throw new HubError(`revision ${JSON.stringify(revision)} of model ${repo} was not found on ${endpoint}`);
    if (code === 'GatedRepo') throw new HubError(`model ${repo} on ${endpoint} is gated: accept its terms on the Hub and pass --token (or set HF_TOKEN)`);
    throw new HubError(`model ${repo} was not found on ${endpoint} (HTTP ${response.status}); if it is private or gated, pass --token (or set HF_TOKEN)`);
  }
  if (!response.ok) throw new Error(`listing ${repo} on ${endpoint} failed: HTTP ${response.status}`);
  const body = (await response.json()) as { sha?: unknown; siblings?: unknown };
  if (!Array.isArray(body.siblings)) throw new HubError(`${endpoint} answered the listing of ${repo} without "siblings"; is it a Hugging Face Hub endpoint?`);
  const siblings = (body.siblings as Sibling[]).filter((s) => typeof s?.rfilename === 'string' && s.rfilename !== '' && s.rfilename !== '.' && s.rfilename !== '..');
  return { ...(typeof body.sha === 'string' && { sha: body.sha }), siblings };
}

/**
 * Fetches `url` into `partial`, continuing after the bytes it already has with a Range request
 * (from scratch if the server ignores the range). `onBytes` gets the file's size as it grows.
 */
async function downloadFile(url: string, partial: string, headers: Record<string, string>, idleTimeoutMs: number, onBytes: (bytes: number) => void): Promise<void> {
  const have = existsSync(partial) ? statSync(partial).size : 0;
  const abort = new AbortController();
  let idle = setTimeout(() => abort.abort(new Error(`no data for ${idleTimeoutMs} ms`)), idleTimeoutMs);
  try {
    const response = await fetch(url, { headers: { ...headers, ...(have > 0 && { range: `bytes=${have}-` }) }, signal: abort.signal });
    if (response.status === 416 && have > 0) return; // nothing after `have`: the file is complete (checked by the caller)
    if (response.status === 404) throw new HubError(`${url} was not found`);
    if (response.status >= 400 && response.status < 500) throw new HubError(`${url}: HTTP ${response.status}`);
    if (!response.ok || response.body === null) throw new Error(`${url}: HTTP ${response.status}`);
    const resumed = response.status === 206;
    if (resumed && !(response.headers.get('content-range') ?? '').startsWith(`bytes ${have}-`)) {
      throw new HubError(`${url} answered bytes=${have}- with Content-Range ${JSON.stringify(response.headers.get('content-range'))}`);
    }
    let size = resumed ? have : 0;
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        clearTimeout(idle);
        idle = setTimeout(() => abort.abort(new Error(`no data for ${idleTimeoutMs} ms`)), idleTimeoutMs);
        size += chunk.length;
        onBytes(size);
        callback(null, chunk);
      },
    });
    const file = createWriteStream(partial, { flags: resumed ? 'a' : 'w' });
    try {
      await pipeline(Readable.fromWeb(response.body), counter, file);
    } finally {
      // On a cut connection pipeline rejects before the file's last write lands; the next attempt
      // must see the partial file's final size, so wait for the file to close.
      if (!file.closed) await new Promise<void>((resolve) => file.once('close', () => resolve()));
    }
  } finally {
    clearTimeout(idle);
  }
}

/** Checks a downloaded file's size and (for LFS files) sha256; a bad file is removed. */
async function verify(file: string, sibling: Sibling, repo: string): Promise<void> {
  const expectedSize = sibling.lfs?.size ?? sibling.size;
  const size = statSync(file).size;
  let problem = expectedSize !== undefined && size !== expectedSize ? `has ${size} bytes, expected ${expectedSize}` : undefined;
  if (problem === undefined && sibling.lfs?.sha256 !== undefined) {
    const hash = createHash('sha256');
    await pipeline(createReadStream(file), hash);
    const digest = hash.digest('hex');
    if (digest !== sibling.lfs.sha256) problem = `has sha256 ${digest}, expected ${sibling.lfs.sha256}`;
  }
  if (problem === undefined) return;
  rmSync(file, { force: true });
  throw new HubError(`${sibling.rfilename} of ${repo} ${problem}; it was removed, pull again`);
}

/** Runs `attempt` up to `retries` more times after network failures, waiting 0.5 s, 1 s, 2 s ... (at most 10 s). */
async function retrying<T>(retries: number, log: (line: string) => void, attempt: () => Promise<T>): Promise<T> {
  for (let failures = 0; ; failures++) {
    try {
      return await attempt();
    } catch (error) {
      if (error instanceof HubError || failures >= retries) throw error;
      const wait = Math.min(10_000, 500 * 2 ** failures);
      log(`download interrupted (${describe(error)}); resuming in ${wait / 1000} s`);
      await delay(wait);
    }
  }
}

/** A network error's message with its cause (fetch puts the useful part there). */
function describe(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : '';
  return `${message}${cause}`;
}
