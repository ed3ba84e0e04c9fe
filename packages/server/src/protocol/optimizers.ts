/**
 * @module Optimizer selection and step parameters (Tinker SDK >= 0.29, docs/protocol.md §3.2–3.3):
 * a run's `optimizer_config` (AdamW or Dimuon, fixed at `create_model`) and the `optim_step` body,
 * which carries `adam_params` (AdamW), `optimizer_params` (Dimuon) or, as the SDK's request model
 * also accepts it, `optim_params` (either, told apart by `type`). Checked here so that a bad or
 * wrong-family request is a 400 naming the field at submit, not a failed future.
 */
import { badRequest } from '../http/errors.js';
import type { OptimizerConfig } from '../store/index.js';

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * Normalises a wire `OptimizerConfig` (`where` names the field in errors): absent or null is AdamW;
 * `{"type": "dimuon"}` gets `version: 1`. Other types, versions or keys are refused: this server
 * cannot honour them.
 *
 * @example
 * parseOptimizerConfig({ type: 'dimuon' }, 'optimizer_config'); // { type: 'dimuon', version: 1 }
 * parseOptimizerConfig(undefined, 'optimizer_config'); // { type: 'adamw' }
 */
export function parseOptimizerConfig(value: unknown, where: string): OptimizerConfig {
  if (value === undefined || value === null) return { type: 'adamw' };
  if (!isRecord(value)) throw badRequest(`${where} must be an object like {"type": "adamw"} or {"type": "dimuon", "version": 1}`, 'invalid_optimizer_config');
  const type = value['type'];
  const allowed: Record<string, string[]> = { adamw: ['type'], dimuon: ['type', 'version'] };
  const keys = typeof type === 'string' ? allowed[type] : undefined;
  if (!keys) throw badRequest(`${where}.type must be "adamw" or "dimuon", got ${JSON.stringify(type) ?? 'nothing'}`, 'invalid_optimizer_config');
  const unknown = Object.keys(value).filter((k) => !keys.includes(k));
  if (unknown.length > 0) throw badRequest(`${where}: unknown keys for ${type}: ${unknown.join(', ')}`, 'invalid_optimizer_config');
  if (type === 'adamw') return { type: 'adamw' };
  const version = value['version'] ?? 1;
  if (version !== 1) throw badRequest(`${where}.version must be 1 for dimuon, got ${JSON.stringify(version)}`, 'invalid_optimizer_config');
  return { type: 'dimuon', version: 1 };
}

const ADAM_KEYS = ['learning_rate', 'beta1', 'beta2', 'eps', 'weight_decay', 'grad_clip_norm'] as const;
const DIMUON_KEYS = ['learning_rate', 'grad_clip_norm', 'beta1', 'damping', 'rank_lr_correction_exponent'] as const;

/** The numbers of `params` under `keys` (others are ignored: a newer SDK may send more), each finite. */
function numbers(params: Record<string, unknown>, keys: readonly string[], where: string, type: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const key of keys) {
    const value = params[key];
    if (value === undefined || value === null) continue;
    if (typeof value !== 'number' || !Number.isFinite(value)) throw badRequest(`${where}.${key} must be a finite number`, type);
    out[key] = value;
  }
  return out;
}

/** The step parameters of one `optim_step`, for the worker: exactly one family. */
export type OptimStepParams = { adamParams: Record<string, number> } | { optimizerParams: Record<string, unknown> };

/**
 * Reads an `optim_step` body's step parameters and checks them against the run's optimizer: the
 * wrong family is a 400 (`optimizer_mismatch`) naming the field sent.
 *
 * @example
 * optimStepParams({ optimizer_params: { type: 'dimuon', learning_rate: 0.02 } }, { type: 'dimuon', version: 1 }, 'S:train:0');
 * // { optimizerParams: { type: 'dimuon', learning_rate: 0.02 } }
 */
export function optimStepParams(body: Record<string, unknown>, optimizer: OptimizerConfig, modelId: string): OptimStepParams {
  const given = (['adam_params', 'optimizer_params', 'optim_params'] as const).filter((k) => body[k] !== undefined && body[k] !== null);
  if (given.length !== 1) {
    throw badRequest(`optim_step needs exactly one of adam_params (AdamW), optimizer_params (Dimuon) or optim_params, got ${given.length === 0 ? 'none' : given.join(', ')}`, 'invalid_optim_params');
  }
  const field = given[0]!;
  const params = body[field];
  if (!isRecord(params)) throw badRequest(`${field} must be an object`, 'invalid_optim_params');
  // `optim_params` is either family; only Dimuon's carries type "dimuon".
  const family = field === 'adam_params' || (field === 'optim_params' && params['type'] !== 'dimuon') ? 'adamw' : 'dimuon';
  if (family !== optimizer.type) {
    const instead = optimizer.type === 'adamw' ? 'adam_params' : 'optimizer_params with type "dimuon"';
    throw badRequest(`${field}: training run ${modelId} uses the ${optimizer.type} optimizer (chosen at create_model), so ${family} step parameters do not apply; send ${instead}`, 'optimizer_mismatch');
  }
  if (family === 'adamw') {
    const adam = numbers(params, ADAM_KEYS, field, 'invalid_adam_params');
    if ((adam['learning_rate'] ?? 0) < 0) throw badRequest(`${field}.learning_rate must be >= 0`, 'invalid_adam_params');
    return { adamParams: adam };
  }
  if (params['type'] !== 'dimuon') throw badRequest(`${field}.type must be "dimuon" (AdamW steps send adam_params), got ${JSON.stringify(params['type']) ?? 'nothing'}`, 'invalid_optimizer_params');
  const dimuon = numbers(params, DIMUON_KEYS, field, 'invalid_optimizer_params');
  const lr = dimuon['learning_rate'];
  if (lr === undefined || lr < 0) throw badRequest(`${field}.learning_rate is required and must be >= 0`, 'invalid_optimizer_params');
  const beta1 = dimuon['beta1'];
  if (beta1 !== undefined && (beta1 < 0 || beta1 >= 1)) throw badRequest(`${field}.beta1 must be in [0, 1), got ${beta1}`, 'invalid_optimizer_params');
  const damping = dimuon['damping'];
  if (damping !== undefined && damping <= 0) throw badRequest(`${field}.damping must be > 0, got ${damping}`, 'invalid_optimizer_params');
  return { optimizerParams: { type: 'dimuon', ...dimuon } };
}
