/**
 * @module The models this server can load, as the worker's model registry sees them: the built-in
 * tiny models, folders in the models directory (`org__name` or `org/name`), the Hugging Face cache
 * (`models--org--name/snapshots/<rev>/`), model folders named by absolute path, and aliases (a name
 * served from a folder or another model: `lathe serve --model-alias NAME=PATH`, or `models.json`).
 *
 * Models added after start are found without a restart: an unknown name triggers a re-scan, but
 * only when the scanned folders changed since the last scan (their directory mtimes), so unknown
 * names cost a few `readdir`s, not a Python start-up.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
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

/** What one scan found: the models, and the folders it looked in. */
export interface ScanResult {
  models: ModelEntry[];
  /** Folders whose changes (new models) call for a re-scan. */
  roots: string[];
}

/**
 * Asks the worker's registry (without loading weights) which models exist locally, plus an entry
 * for each of `describe` (model names or folder paths) that is a loadable model, named as given.
 *
 * @example
 * const { models } = await scanModels('.lathe/models'); // [{ model_name: 'lathe/tiny-llama3', ... }, ...]
 * await scanModels('.lathe/models', ['/srv/models/qwen3-8b']); // ... and { model_name: '/srv/models/qwen3-8b', ... }
 */
export async function scanModels(modelsDir: string, describe: string[] = []): Promise<ScanResult> {
  const args = ['-m', 'lathe_worker', '--list-models', '--models-dir', modelsDir, ...describe.flatMap((d) => ['--describe', d])];
  const { stdout } = await promisify(execFile)(pythonExecutable(), args, { cwd: path.join(REPO_ROOT, 'worker'), maxBuffer: 64 << 20 });
  return JSON.parse(stdout) as ScanResult;
}

/**
 * Model aliases from `<dataDir>/models.json` (`{"aliases": {"Qwen/Qwen3-8B": "/srv/qwen3-8b"}}`);
 * relative folder paths are taken from the data directory. None when the file is absent.
 *
 * @throws {Error} naming the file when it is not valid.
 */
export function readModelsConfig(dataDir: string): Record<string, string> {
  const file = path.join(dataDir, 'models.json');
  if (!existsSync(file)) return {};
  let aliases: unknown;
  try {
    aliases = (JSON.parse(readFileSync(file, 'utf8')) as { aliases?: unknown }).aliases ?? {};
  } catch (error) {
    throw new Error(`${file}: ${(error as Error).message}`);
  }
  if (typeof aliases !== 'object' || aliases === null || Array.isArray(aliases) || !Object.values(aliases).every((v) => typeof v === 'string')) {
    throw new Error(`${file}: "aliases" must map model names to folder paths or model names`);
  }
  return Object.fromEntries(Object.entries(aliases as Record<string, string>).map(([name, target]) => [name, isPathLike(target) ? path.resolve(dataDir, target) : target]));
}

/** A folder path rather than a model name (`org/name`): absolute, or relative starting with `.`. */
const isPathLike = (target: string): boolean => path.isAbsolute(target) || target.startsWith('.');

/**
 * Parses `NAME=PATH` (a `--model-alias` value).
 *
 * @example
 * parseAlias('Qwen/Qwen3-8B=/srv/qwen3-8b'); // ['Qwen/Qwen3-8B', '/srv/qwen3-8b']
 */
export function parseAlias(value: string): [string, string] {
  const at = value.indexOf('=');
  if (at <= 0 || at === value.length - 1) throw new Error(`expected NAME=PATH, got ${JSON.stringify(value)}`);
  return [value.slice(0, at), value.slice(at + 1)];
}

/** Directory mtimes down to `depth` levels: changes when a model folder appears (or gains files). */
function fingerprint(roots: string[], depth = 3): string {
  const parts: string[] = [];
  const walk = (dir: string, level: number): void => {
    let entries;
    try {
      parts.push(`${dir}:${statSync(dir).mtimeMs}`);
      if (level >= depth) return;
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return; // absent or unreadable: nothing to find there
    }
    for (const entry of entries) {
      // Hidden entries are temporary folders of half-written models, and HF's blob store is large.
      if (entry.isDirectory() && !entry.name.startsWith('.') && entry.name !== 'blobs') walk(path.join(dir, entry.name), level + 1);
    }
  };
  for (const root of roots) walk(root, 0);
  return parts.join('\n');
}

/** Options for {@link ModelCatalogue}. */
export interface CatalogueOptions {
  /** Scans the models (see {@link scanModels}); `describe` lists alias targets and folder paths. */
  scan: (describe: string[]) => Promise<ScanResult>;
  /** Model name → folder path or other model name it is served from. */
  aliases?: Record<string, string>;
}

/**
 * The server's model catalogue.
 *
 * @example
 * const catalogue = await ModelCatalogue.open({ scan: (d) => scanModels('.lathe/models', d), aliases: { 'Qwen/Qwen3-8B': '/srv/q' } });
 * catalogue.find('Qwen/Qwen3-8B'); // { model_name: 'Qwen/Qwen3-8B', ... }
 * catalogue.source('Qwen/Qwen3-8B'); // '/srv/q': what the worker loads
 * await catalogue.lookup('org/added-after-start'); // re-scans if the models folders changed
 */
export class ModelCatalogue {
  private models: ModelEntry[] = [];
  private roots: string[] = [];
  private scanned = '';
  private scanning: Promise<void> | undefined;
  /** Folder paths given as model names that turned out to be models (kept across re-scans). */
  private readonly folders = new Set<string>();
  private readonly aliases: Record<string, string>;
  /** Models announced by remote workers (see {@link announce}). */
  private readonly announced = new Map<string, ModelEntry>();

  private constructor(private readonly options: CatalogueOptions) {
    this.aliases = options.aliases ?? {};
  }

  /** Scans once and returns the catalogue. */
  static async open(options: CatalogueOptions): Promise<ModelCatalogue> {
    const catalogue = new ModelCatalogue(options);
    await catalogue.rescan();
    return catalogue;
  }

  /** A catalogue of fixed entries that never re-scans (tests, embedded servers). */
  static fixed(models: ModelEntry[]): ModelCatalogue {
    const catalogue = new ModelCatalogue({ scan: async () => ({ models, roots: [] }) });
    catalogue.models = models;
    return catalogue;
  }

  /** Every model, as of the last scan, then those only remote workers announced. */
  get entries(): readonly ModelEntry[] {
    return [...this.models, ...[...this.announced.values()].filter((m) => !this.models.some((local) => local.model_name === m.model_name))];
  }

  /** The entry of `name`, as of the last scan (or as a remote worker announced it). */
  find(name: string): ModelEntry | undefined {
    return this.models.find((m) => m.model_name === name) ?? this.announced.get(name);
  }

  /**
   * Adds the models a remote worker can load, so a server without them locally serves them too.
   * They stay listed after the worker leaves: its runs wait for another worker instead of becoming
   * unknown.
   */
  announce(models: readonly ModelEntry[]): void {
    for (const model of models) if (!this.announced.has(model.model_name)) this.announced.set(model.model_name, model);
  }

  /** What the worker loads for `name`: an alias's target, else the name itself. */
  source(name: string): string {
    return this.aliases[name] ?? name;
  }

  /**
   * The entry of `name`; re-scans first when it is unknown and the model folders changed since the
   * last scan, or when it is the absolute path of a model folder not seen yet.
   */
  async lookup(name: string): Promise<ModelEntry | undefined> {
    const known = this.find(name);
    if (known) return known;
    if (path.isAbsolute(name) && !this.folders.has(name)) {
      if (!existsSync(path.join(name, 'config.json'))) return undefined;
      this.folders.add(name);
      await this.rescan();
    } else {
      await this.refresh();
    }
    return this.find(name);
  }

  /** Re-scans when the model folders changed since the last scan (cheap when they did not). */
  async refresh(): Promise<void> {
    if (this.scanning) await this.scanning;
    if (fingerprint(this.roots) !== this.scanned) await this.rescan();
  }

  private async rescan(): Promise<void> {
    // One scan at a time; a caller arriving during one waits for it, then checks again.
    while (this.scanning) await this.scanning;
    const scan = async (): Promise<void> => {
      const targets = [...new Set([...Object.values(this.aliases), ...this.folders])];
      const before = this.roots.length > 0 ? fingerprint(this.roots) : '';
      const found = await this.options.scan(targets);
      const byName = new Map(found.models.map((m) => [m.model_name, m]));
      const aliased = Object.entries(this.aliases).flatMap(([name, target]) => {
        const entry = byName.get(target);
        return entry ? [{ ...entry, model_name: name }] : [];
      });
      const aliasTargets = new Set(Object.values(this.aliases).filter(isPathLike));
      // A folder that backs an alias is offered under the alias only.
      this.models = [...found.models.filter((m) => !aliasTargets.has(m.model_name) && !(m.model_name in this.aliases)), ...aliased];
      this.roots = found.roots;
      // Taken before scanning, so a model added during the scan triggers another one.
      this.scanned = before === '' ? fingerprint(found.roots) : before;
    };
    this.scanning = scan().finally(() => {
      this.scanning = undefined;
    });
    await this.scanning;
  }
}
