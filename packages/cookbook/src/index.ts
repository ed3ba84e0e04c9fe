/**
 * @module @lathe/cookbook: tokenizers, renderers, datum builders and training recipes over @lathe/sdk.
 */
export * from './tokenizers.js';
export * from './renderers/types.js';
export { BaseRenderer, textOf } from './renderers/base.js';
export { RoleColonRenderer } from './renderers/role_colon.js';
export { Llama3Renderer } from './renderers/llama3.js';
export { Qwen3Renderer, pythonJson } from './renderers/qwen3.js';
export { Qwen3DisableThinkingRenderer } from './renderers/qwen3_disable_thinking.js';
export { getRenderer, recommendedRendererName, RENDERER_NAMES } from './renderers/index.js';
export * from './supervised/datum.js';
export * from './supervised/data.js';
export * from './supervised/train.js';
export * from './utils/checkpoints.js';
export * from './utils/hyperparams.js';
export * from './utils/lr-schedule.js';
export * from './utils/ml-log.js';
export { DEFAULT_ADAM, type AdamSettings, type LoopConfig, type LoopResult } from './utils/loop.js';
export * from './preference/dpo-loss.js';
export * from './preference/data.js';
export * from './preference/train.js';
export * from './distillation/on-policy.js';
export * from './distillation/data.js';
export * from './rl/types.js';
export * from './rl/rollouts.js';
export * from './rl/data.js';
export * from './rl/envs.js';
export * from './rl/train.js';
