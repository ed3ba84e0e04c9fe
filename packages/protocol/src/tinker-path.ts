/**
 * @module `tinker://` checkpoint paths, parsed as the Python SDK does (exactly three parts after
 * the scheme):
 *
 * - `tinker://{model_id}/weights/{name}`: adapter + optimizer state (save_state);
 * - `tinker://{model_id}/sampler_weights/{name}`: the adapter alone (save_weights_for_sampler);
 * - `tinker://{model_id}/external_weights/{name}`: a Hugging Face PEFT adapter folder
 *   (save_weights_external), for other tools: it is never loaded back.
 */

/** The kinds of checkpoint, as their path segment. */
export type CheckpointKind = 'weights' | 'sampler_weights' | 'external_weights';

const KINDS: readonly string[] = ['weights', 'sampler_weights', 'external_weights'] satisfies CheckpointKind[];
const SCHEME = 'tinker://';

/** A parsed `tinker://` path. */
export interface TinkerPath {
  /** The training run (model id) that saved it. */
  modelId: string;
  kind: CheckpointKind;
  name: string;
  /** `{kind}/{name}`, the REST checkpoint id. */
  checkpointId: string;
}

/** A string that is not a `tinker://` checkpoint path; the message quotes it and says what is expected. */
export class TinkerPathError extends Error {
  override readonly name = 'TinkerPathError';
}

/**
 * Builds `tinker://{modelId}/{kind}/{name}`.
 *
 * @example
 * formatTinkerPath('S:train:0', 'weights', 'step_10'); // 'tinker://S:train:0/weights/step_10'
 */
export function formatTinkerPath(modelId: string, kind: CheckpointKind, name: string): string {
  return `${SCHEME}${modelId}/${kind}/${name}`;
}

/**
 * Parses a `tinker://` path.
 *
 * @throws {TinkerPathError} when the scheme, the number of parts or the kind is wrong.
 * @example
 * parseTinkerPath('tinker://S:train:0/weights/step_10');
 * // { modelId: 'S:train:0', kind: 'weights', name: 'step_10', checkpointId: 'weights/step_10' }
 */
export function parseTinkerPath(value: string): TinkerPath {
  const expected = 'expected tinker://<model_id>/weights/<name> or tinker://<model_id>/sampler_weights/<name>';
  if (!value.startsWith(SCHEME)) throw new TinkerPathError(`invalid tinker path ${JSON.stringify(value)}: not a tinker:// path; ${expected}`);
  const parts = value.slice(SCHEME.length).split('/');
  const [modelId, kind, name] = parts;
  if (parts.length !== 3 || !modelId || kind === undefined || !KINDS.includes(kind) || !name) {
    throw new TinkerPathError(`invalid tinker path ${JSON.stringify(value)}: ${expected}`);
  }
  return { modelId, kind: kind as CheckpointKind, name, checkpointId: `${kind}/${name}` };
}
