/**
 * @module Hyperparameter helpers (the cookbook's `hyperparam_utils.py`): a recommended learning rate
 * per model, the LoRA/full fine-tuning ratio from "LoRA Without Regret", and LoRA parameter counts.
 */

/**
 * The shapes LoRA adapts in a dense decoder: per layer q/k/v/o projections and the gate/up/down MLP,
 * plus the unembedding (hidden → vocab).
 */
export interface DenseModelDims {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  vocabSize: number;
}

const QWEN3_VOCAB = 151936;
const LLAMA3_VOCAB = 128256;

/** The built-in tiny models' dims (they differ in their vocabularies only). */
const TINY_DIMS = { hiddenSize: 64, intermediateSize: 128, numLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 16 };

/** A dense model of the table: every one has 8 KV heads and, but for Llama-3.2-1B, a head dim of 128. */
function dense(vocabSize: number, hiddenSize: number, intermediateSize: number, numLayers: number, numAttentionHeads: number, headDim = 128): DenseModelDims {
  return { hiddenSize, intermediateSize, numLayers, numAttentionHeads, numKeyValueHeads: 8, headDim, vocabSize };
}

const QWEN3_4B = dense(QWEN3_VOCAB, 2560, 9728, 36, 32);
const QWEN3_8B = dense(QWEN3_VOCAB, 4096, 12288, 36, 32);
const LLAMA3_8B = dense(LLAMA3_VOCAB, 4096, 14336, 32, 32);
const LLAMA3_70B = dense(LLAMA3_VOCAB, 8192, 28672, 80, 64);

/**
 * Dims from the models' Hugging Face configs (dense: vocabulary, hidden, intermediate, layers,
 * attention heads); MoE and hybrid models have their hidden size only.
 */
const MODEL_DIMS: Readonly<Record<string, DenseModelDims | { hiddenSize: number }>> = {
  'lathe/tiny-qwen3': { ...TINY_DIMS, vocabSize: QWEN3_VOCAB },
  'lathe/tiny-llama3': { ...TINY_DIMS, vocabSize: LLAMA3_VOCAB },
  'Qwen/Qwen3-0.6B': dense(QWEN3_VOCAB, 1024, 3072, 28, 16),
  'Qwen/Qwen3-1.7B': dense(QWEN3_VOCAB, 2048, 6144, 28, 16),
  'Qwen/Qwen3-4B': QWEN3_4B,
  'Qwen/Qwen3-4B-Instruct-2507': QWEN3_4B,
  'Qwen/Qwen3-8B': QWEN3_8B,
  'Qwen/Qwen3-8B-Base': QWEN3_8B,
  'Qwen/Qwen3-14B': dense(QWEN3_VOCAB, 5120, 17408, 40, 40),
  'Qwen/Qwen3-32B': dense(QWEN3_VOCAB, 5120, 25600, 64, 64),
  'Qwen/Qwen3-30B-A3B': { hiddenSize: 2048 },
  'Qwen/Qwen3-30B-A3B-Base': { hiddenSize: 2048 },
  'Qwen/Qwen3-30B-A3B-Instruct-2507': { hiddenSize: 2048 },
  'Qwen/Qwen3-235B-A22B-Instruct-2507': { hiddenSize: 4096 },
  'Qwen/Qwen3.5-4B': { hiddenSize: 2560 },
  'meta-llama/Llama-3.2-1B': dense(LLAMA3_VOCAB, 2048, 8192, 16, 32, 64),
  'meta-llama/Llama-3.2-3B': dense(LLAMA3_VOCAB, 3072, 8192, 28, 24),
  'meta-llama/Llama-3.1-8B': LLAMA3_8B,
  'meta-llama/Llama-3.1-8B-Instruct': LLAMA3_8B,
  'meta-llama/Llama-3.1-70B': LLAMA3_70B,
  'meta-llama/Llama-3.3-70B-Instruct': LLAMA3_70B,
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
  const hiddenSize = options.hiddenSize ?? MODEL_DIMS[modelName]?.hiddenSize;
  if (hiddenSize === undefined) throw new RangeError(`unknown hidden size of ${JSON.stringify(modelName)}; pass options.hiddenSize`);
  const loraFactor = (options.isLora ?? true) ? getLoraLrOverFullFinetuneLr() : 1;
  return 5e-5 * loraFactor * (2000 / hiddenSize) ** exponent;
}

/** Options of {@link getLoraParamCount}; the defaults are those of `createLoraTrainingClient`. */
export interface LoraShapeOptions {
  loraRank?: number;
  trainAttn?: boolean;
  trainMlp?: boolean;
  trainUnembed?: boolean;
}

/**
 * Trainable parameters of a LoRA adapter: rank × (in + out) for every adapted matrix. Takes a model
 * name from the built-in table or the dims of a dense model.
 *
 * @example
 * getLoraParamCount('lathe/tiny-qwen3', { loraRank: 8 }); // 1_232_384
 */
export function getLoraParamCount(model: string | DenseModelDims, options: LoraShapeOptions = {}): number {
  const dims = typeof model === 'string' ? MODEL_DIMS[model] : model;
  if (dims === undefined || !isDense(dims)) {
    throw new RangeError(`no dense-model dims for ${JSON.stringify(model)}; pass a DenseModelDims object`);
  }
  const { hiddenSize: h, intermediateSize: m, numAttentionHeads, numKeyValueHeads, headDim, vocabSize } = dims;
  const q = numAttentionHeads * headDim;
  const kv = numKeyValueHeads * headDim;
  const attn = h + q + 2 * (h + kv) + q + h; // q, k, v, o
  const mlp = 2 * (h + m) + (m + h); // gate, up, down
  const perLayer = (options.trainAttn ?? true ? attn : 0) + (options.trainMlp ?? true ? mlp : 0);
  const unembed = options.trainUnembed ?? true ? h + vocabSize : 0;
  return (options.loraRank ?? 32) * (dims.numLayers * perLayer + unembed);
}

function isDense(dims: DenseModelDims | { hiddenSize: number }): dims is DenseModelDims {
  return 'numLayers' in dims;
}
