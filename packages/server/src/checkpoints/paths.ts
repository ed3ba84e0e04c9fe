/**
 * @module `tinker://` paths and where checkpoints live on disk.
 *
 * `tinker://{model_id}/weights/{name}` holds adapter + optimizer state (save_state);
 * `tinker://{model_id}/sampler_weights/{name}` holds the adapter alone (save_weights_for_sampler).
 */
import path from 'node:path';
import { badRequest } from '../http/errors.js';

/** The two kinds of checkpoint. */
export type CheckpointKind = 'weights' | 'sampler_weights';

/** A parsed `tinker://` path. */
export interface TinkerPath {
  modelId: string;
  kind: CheckpointKind;
  name: string;
  /** `weights/NAME` or `sampler_weights/NAME`, the REST checkpoint id. */
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
 * Parses a `tinker://` path, as the Python SDK does (exactly three parts after the scheme).
 *
 * @example
 * parseTinkerPath('tinker://S:train:0/weights/step_10'); // { modelId: 'S:train:0', kind: 'weights', name: 'step_10', ... }
 */
export function parseTinkerPath(value: string): TinkerPath {
  const parts = value.startsWith('tinker://') ? value.slice('tinker://'.length).split('/') : [];
  const [modelId, kind, name] = parts;
  if (parts.length !== 3 || !modelId || (kind !== 'weights' && kind !== 'sampler_weights') || !name) {
    throw badRequest(`invalid tinker path ${JSON.stringify(value)}: expected tinker://<model_id>/weights/<name> or tinker://<model_id>/sampler_weights/<name>`);
  }
  return { modelId, kind, name, checkpointId: `${kind}/${name}` };
}

/** The folder of a checkpoint under the data directory. */
export function checkpointDir(dataDir: string, modelId: string, kind: CheckpointKind, name: string): string {
  return path.join(dataDir, 'checkpoints', encodeURIComponent(modelId), kind, checkName(name));
}
