/**
 * @module `lathe models list|pull`: the models a server can train, and downloading one from the
 * Hugging Face Hub into the models directory (see ../hub.ts).
 */
import path from 'node:path';
import { ModelCatalogue, readModelsConfig, scanModels } from '@lathe/server';
import { pullModel, type PullOptions, type PullResult } from '../hub.js';
import { formatTable } from '../table.js';
import { modelsDirOf, withService, type ConnectOptions } from './connect.js';

/** One model a server can load. Architecture and vocabulary are known only for a local models directory. */
export interface ModelListing {
  name: string;
  maxContextLength: number | undefined;
  architecture?: string;
  vocabSize?: number;
}

/**
 * The models of the server at `baseUrl` (its capabilities), or else those an embedded server on
 * `dataDir` would serve: the built-in tiny models, those in the models directory and Hugging Face
 * cache, and the aliases of `<dataDir>/models.json` (read from their config.json; no server is
 * started). As on the server, a folder behind an alias is listed under the alias only.
 *
 * @example
 * const models = await listModels({ dataDir: '.lathe', log: console.error });
 * models.map((m) => m.name); // ['lathe/tiny-llama3', 'lathe/tiny-qwen3', 'Qwen/Qwen3-0.6B', ...]
 */
export async function listModels(options: ConnectOptions & { log: (line: string) => void }): Promise<ModelListing[]> {
  if (options.baseUrl !== undefined) {
    return withService(options, options.log, async (service) =>
      (await service.getServerCapabilities()).supportedModels.map((m) => ({ name: m.modelName ?? '?', maxContextLength: m.maxContextLength })),
    );
  }
  const modelsDir = modelsDirOf(options);
  const aliases = readModelsConfig(path.resolve(options.dataDir));
  const catalogue = await ModelCatalogue.open({ scan: (describe) => scanModels(modelsDir, describe), aliases });
  return catalogue.entries.map((m) => ({ name: m.model_name, maxContextLength: m.max_context_length, architecture: m.architecture, vocabSize: m.vocab_size }));
}

/**
 * The models as a table: name, architecture, context length, vocabulary.
 *
 * @example
 * console.log(modelsTable(await listModels(options)));
 */
export function modelsTable(models: readonly ModelListing[]): string {
  if (models.length === 0) return 'no models';
  const cell = (value: string | number | undefined): string => (value === undefined ? '-' : String(value));
  return formatTable([['MODEL', 'ARCHITECTURE', 'CONTEXT', 'VOCAB'], ...models.map((m) => [m.name, cell(m.architecture), cell(m.maxContextLength), cell(m.vocabSize)])]);
}

/**
 * `lathe models pull`: {@link pullModel} into `--models-dir` (default `<data-dir>/models`).
 *
 * @example
 * await pullIntoModelsDir({ repo: 'Qwen/Qwen3-0.6B', dataDir: '.lathe', progress: process.stderr, log: console.error });
 */
export async function pullIntoModelsDir(options: Omit<PullOptions, 'modelsDir'> & { dataDir: string; modelsDir?: string }): Promise<PullResult> {
  return pullModel({ ...options, modelsDir: modelsDirOf(options) });
}
