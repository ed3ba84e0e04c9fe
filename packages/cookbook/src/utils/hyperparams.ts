/**
 * @module Hyperparameter helpers (the cookbook's `hyperparam_utils.py`): a recommended learning rate
 * per model and the LoRA/full fine-tuning ratio from "LoRA Without Regret".
 */

/** Hidden sizes of the models {@link getLr} knows (the cookbook's baked table, plus Lathe's tiny models). */
const HIDDEN_SIZE: Readonly<Record<string, number>> = {
  'lathe/tiny-qwen3': 64,
  'lathe/tiny-llama3': 64,
  'Qwen/Qwen3-0.6B': 1024,
  'Qwen/Qwen3-1.7B': 2048,
  'Qwen/Qwen3-4B': 2560,
  'Qwen/Qwen3-4B-Instruct-2507': 2560,
  'Qwen/Qwen3-8B': 4096,
  'Qwen/Qwen3-8B-Base': 4096,
  'Qwen/Qwen3-14B': 5120,
  'Qwen/Qwen3-32B': 5120,
  'Qwen/Qwen3-30B-A3B': 2048,
  'Qwen/Qwen3-30B-A3B-Base': 2048,
  'Qwen/Qwen3-30B-A3B-Instruct-2507': 2048,
  'Qwen/Qwen3-235B-A22B-Instruct-2507': 4096,
  'Qwen/Qwen3.5-4B': 2560,
  'meta-llama/Llama-3.2-1B': 2048,
  'meta-llama/Llama-3.2-3B': 3072,
  'meta-llama/Llama-3.1-8B': 4096,
  'meta-llama/Llama-3.1-8B-Instruct': 4096,
  'meta-llama/Llama-3.1-70B': 8192,
  'meta-llama/Llama-3.3-70B-Instruct': 8192,
};

/** Families the cookbook has not calibrated the formula for. */
const UNCALIBRATED = ['deepseek', 'gpt-oss', 'kimi', 'nemotron', 'inkling'];

/** LoRA needs about this many times the full fine-tuning learning rate ("LoRA Without Regret"). */
export function getLoraLrOverFullFinetuneLr(): number {
  return 10;
}

/**
 * A recommended learning rate: 5e-5 × (10 for LoRA) × (2000 / hidden_size)^P with P = 0.0775 for
 * Qwen and 0.781 for Llama models. Pass `hiddenSize` for a model outside the built-in table.
 *
 * @example
 * getLr('Qwen/Qwen3-8B');          // ≈ 4.73e-4
 * getLr('meta-llama/Llama-3.1-8B'); // ≈ 2.86e-4
 */
export function getLr(modelName: string, options: { isLora?: boolean; hiddenSize?: number } = {}): number {
  const lower = modelName.toLowerCase();
  const family = UNCALIBRATED.find((f) => lower.includes(f));
  if (family !== undefined) throw new RangeError(`getLr is not calibrated for ${family} models (${modelName})`);
  const exponent = lower.includes('qwen') ? 0.0775 : lower.includes('llama') ? 0.781 : undefined;
  if (exponent === undefined) throw new RangeError(`getLr knows Qwen and Llama models only, got ${JSON.stringify(modelName)}`);
  const hiddenSize = options.hiddenSize ?? HIDDEN_SIZE[modelName];
  if (hiddenSize === undefined) throw new RangeError(`unknown hidden size of ${JSON.stringify(modelName)}; pass options.hiddenSize`);
  const loraFactor = (options.isLora ?? true) ? getLoraLrOverFullFinetuneLr() : 1;
  return 5e-5 * loraFactor * (2000 / hiddenSize) ** exponent;
}
