/**
 * @module `tinker://` paths and where checkpoints live on disk.
 *
 * `tinker://{model_id}/weights/{name}` holds adapter + optimizer state (save_state);
 * `tinker://{model_id}/sampler_weights/{name}` holds the adapter alone (save_weights_for_sampler);
 * `tinker://{model_id}/external_weights/{name}` holds a Hugging Face PEFT adapter folder
 * (save_weights_external), for other tools: it is never loaded back.
 */
import path from 'node:path';
import { parseTinkerPath as parseTinker, TinkerPathError, type CheckpointKind, type TinkerPath } from '@lathe/protocol';
import { badRequest } from '../http/errors.js';

export { formatTinkerPath, type CheckpointKind, type TinkerPath } from '@lathe/protocol';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Checks a user-chosen checkpoint name (it becomes a folder name). */
export function checkName(name: string): string {
  if (!NAME.test(name)) {
    throw badRequest(`invalid checkpoint name ${JSON.stringify(name)}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  return name;
}

/**
 * Parses a `tinker://` path (see `@lathe/protocol`'s `parseTinkerPath`), as a 400 when it is not
 * one. With `loadable`, a path that cannot be loaded into a training run or sampler (an external
 * export) is refused too.
 *
 * @example
 * parseTinkerPath('tinker://S:train:0/weights/step_10'); // { modelId: 'S:train:0', kind: 'weights', name: 'step_10', ... }
 * parseTinkerPath('tinker://S:train:0/external_weights/hf', { loadable: true }); // throws a 400
 */
export function parseTinkerPath(value: string, options: { loadable?: boolean } = {}): TinkerPath {
  let parsed: TinkerPath;
  try {
    parsed = parseTinker(value);
  } catch (error) {
    if (error instanceof TinkerPathError) throw badRequest(error.message);
    throw error;
  }
  if (options.loadable && parsed.kind === 'external_weights') {
    throw badRequest(`${value} is a Hugging Face PEFT export (save_weights_external) and cannot be loaded; use a weights/ or sampler_weights/ checkpoint`, 'not_loadable');
  }
  return parsed;
}

/** The folder of a checkpoint under the data directory. */
export function checkpointDir(dataDir: string, modelId: string, kind: CheckpointKind, name: string): string {
  return path.join(dataDir, 'checkpoints', encodeURIComponent(modelId), kind, checkName(name));
}
