/**
 * @module `tinker://` paths and where checkpoints live on disk.
 *
 * `tinker://{model_id}/weights/{name}` holds adapter + optimizer state (save_state);
 * `tinker://{model_id}/sampler_weights/{name}` holds the adapter alone (save_weights_for_sampler);
 * `tinker://{model_id}/external_weights/{name}` holds a Hugging Face PEFT adapter folder
 * (save_weights_external), for other tools: it is never loaded back.
 */
import path from 'node:path';
import { badRequest } from '../http/errors.js';

/** The kinds of checkpoint, as their path segment. */
export type CheckpointKind = 'weights' | 'sampler_weights' | 'external_weights';

const KINDS: readonly string[] = ['weights', 'sampler_weights', 'external_weights'] satisfies CheckpointKind[];

/** A parsed `tinker://` path. */
export interface TinkerPath {
  modelId: string;
  kind: CheckpointKind;
  name: string;
  /** `{kind}/NAME`, the REST checkpoint id. */
  checkpointId: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Checks a user-chosen checkpoint name (it becomes a folder name). */
export function checkName(name: string): string {
  if (!NAME.test(name)) {
    throw badRequest(`invalid checkpoint name ${JSON.stringify(name)}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  return name;
}

/** Builds `tinker://{modelId}/{kind}/{name}`. */
export function formatTinkerPath(modelId: string, kind: CheckpointKind, name: string): string {
  return `tinker://${modelId}/${kind}/${name}`;
}

/**
 * Parses a `tinker://` path, as the Python SDK does (exactly three parts after the scheme). With
 * `loadable`, a path that cannot be loaded into a training run or sampler (an external export) is
 * refused too.
 *
 * @example
 * parseTinkerPath('tinker://S:train:0/weights/step_10'); // { modelId: 'S:train:0', kind: 'weights', name: 'step_10', ... }
 * parseTinkerPath('tinker://S:train:0/external_weights/hf', { loadable: true }); // throws a 400
 */
export function parseTinkerPath(value: string, options: { loadable?: boolean } = {}): TinkerPath {
  const parts = value.startsWith('tinker://') ? value.slice('tinker://'.length).split('/') : [];
  const [modelId, kind, name] = parts;
  if (parts.length !== 3 || !modelId || kind === undefined || !KINDS.includes(kind) || !name) {
    throw badRequest(`invalid tinker path ${JSON.stringify(value)}: expected tinker://<model_id>/weights/<name> or tinker://<model_id>/sampler_weights/<name>`);
  }
  if (options.loadable && kind === 'external_weights') {
    throw badRequest(`${value} is a Hugging Face PEFT export (save_weights_external) and cannot be loaded; use a weights/ or sampler_weights/ checkpoint`, 'not_loadable');
  }
  return { modelId, kind: kind as CheckpointKind, name, checkpointId: `${kind}/${name}` };
}

/** The folder of a checkpoint under the data directory. */
export function checkpointDir(dataDir: string, modelId: string, kind: CheckpointKind, name: string): string {
  return path.join(dataDir, 'checkpoints', encodeURIComponent(modelId), kind, checkName(name));
}
