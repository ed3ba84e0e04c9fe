/**
 * @module SDK data types: training data, losses, optimizer parameters and training results.
 */
import type { LossFnType as ProtocolLossFnType } from '@lathe/protocol';
import type { LossFnInput, TensorData } from '../tensor.js';
import type { ModelInput } from './model-input.js';

/**
 * The built-in loss functions (tinker-protocol.md §6.3). All are per token and summed.
 *
 * @example
 * const loss: LossFnType = 'importance_sampling';
 */
export type LossFnType = ProtocolLossFnType;

/**
 * One training example. Every loss input has first dimension `modelInput.length`; position `i`
 * predicts `target_tokens[i]`. Inputs may be `TensorData`, typed arrays or number lists (their
 * dtype is inferred from the key: `target_tokens` is int64, `weights`/`advantages`/`logprobs` float32).
 *
 * @example
 * const seq = [9707, 1879, 11, 1246];
 * const datum: Datum = {
 *   modelInput: ModelInput.fromInts(seq.slice(0, -1)),
 *   lossFnInputs: { target_tokens: seq.slice(1), weights: [0, 1, 1] },
 * };
 */
export interface Datum {
  readonly modelInput: ModelInput;
  readonly lossFnInputs: Readonly<Record<string, LossFnInput>>;
}

/**
 * Extra settings of a loss function, e.g. `{ clip_low_threshold: 0.8, clip_high_threshold: 1.2 }`
 * for `ppo`, `{ beta: 0.05 }` for `dro`. Keys are the wire names.
 *
 * @example
 * const config: LossFnConfig = { clip_low_threshold: 0.8, clip_high_threshold: 1.2 };
 */
export type LossFnConfig = Readonly<Record<string, number>>;

/**
 * The result of `forward` / `forwardBackward`: one output record per datum (usually
 * `{ logprobs }`, shaped like the datum's `target_tokens`) and metrics such as `'loss:sum'`.
 *
 * @example
 * const out = await training.forwardBackward(data, 'cross_entropy');
 * out.metrics['loss:sum'];
 * out.lossFnOutputs[0]?.['logprobs']?.data; // Float32Array
 */
export interface ForwardBackwardOutput {
  /** The output record class (`'ArrayRecord'`). */
  lossFnOutputType: string;
  /** Per datum, in input order: output name → tensor. */
  lossFnOutputs: Record<string, TensorData>[];
  /** Metrics named `name:reduction` (e.g. `'loss:sum'`). */
  metrics: Record<string, number>;
}

/**
 * What a custom loss function returns: the loss value, its gradient with respect to each datum's
 * logprobs (same shape), and optional metrics merged into the result.
 *
 * @example
 * const result: CustomLossResult = { loss: 1.5, gradients: [Float32Array.of(-1, -1)], metrics: { 'my_loss:sum': 1.5 } };
 */
export interface CustomLossResult {
  loss: number;
  gradients: readonly (Float32Array | readonly number[] | TensorData)[];
  metrics?: Record<string, number>;
}

/**
 * A loss computed on the client from per-datum logprobs (`forwardBackwardCustom`). It gets the
 * data and each datum's logprobs tensor and returns the loss and `dLoss/dLogprobs`.
 *
 * @example
 * // Mean negative log-likelihood over all tokens, by hand:
 * const nll: CustomLossFn = (data, logprobs) => {
 *   const n = logprobs.reduce((s, lp) => s + lp.size, 0);
 *   const loss = -logprobs.reduce((s, lp) => s + lp.data.reduce((a, b) => a + b, 0), 0) / n;
 *   return { loss, gradients: logprobs.map((lp) => new Float32Array(lp.size).fill(-1 / n)) };
 * };
 */
export type CustomLossFn = (data: readonly Datum[], logprobs: readonly TensorData<'float32'>[]) => CustomLossResult | Promise<CustomLossResult>;

/**
 * AdamW settings for one `optimStep` (decoupled weight decay, as `torch.optim.AdamW`).
 *
 * @example
 * const adam: AdamParams = { learningRate: 1e-4, weightDecay: 0.01 };
 */
export interface AdamParams {
  /** Default 1e-4. */
  learningRate?: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.95. */
  beta2?: number;
  /** Default 1e-12. */
  eps?: number;
  /** Decoupled weight decay; default 0. */
  weightDecay?: number;
  /** Global gradient-norm clipping; 0 (default) turns it off. */
  gradClipNorm?: number;
}

/**
 * Dimuon settings for one `optimStep` of a run created with `optimizerConfig: { type: 'dimuon' }`
 * (Tinker SDK >= 0.29): momentum, then an orthogonalised update of each LoRA factor. Unset
 * settings take the server's defaults on every step.
 *
 * @example
 * await training.optimStep({ type: 'dimuon', learningRate: 0.02, beta1: 0.9 });
 */
export interface DimuonParams {
  type: 'dimuon';
  learningRate: number;
  /** Global gradient-norm clipping; 0 (default) turns it off. */
  gradClipNorm?: number;
  /** Momentum; default 0.9, in [0, 1). */
  beta1?: number;
  /** SDK 0.29's damping (> 0); accepted, no effect on Lathe. */
  damping?: number;
  /** Scales the step by (32 / rank) ** exponent; default 0 (off). */
  rankLrCorrectionExponent?: number;
}

/**
 * A run's optimizer, chosen when it is created and fixed for its life (default AdamW).
 *
 * @example
 * await service.createLoraTrainingClient({ baseModel, optimizerConfig: { type: 'dimuon' } });
 */
export type OptimizerConfig = { type: 'adamw' } | { type: 'dimuon'; version?: 1 };

/**
 * The result of `optimStep`.
 *
 * @example
 * const { metrics } = await training.optimStep({ learningRate: 1e-4 });
 */
export interface OptimStepResponse {
  metrics: Record<string, number>;
}

/**
 * The result of `saveState` / `saveWeightsForSampler`: the checkpoint's `tinker://` path.
 *
 * @example
 * const { path } = await training.saveState('step-10'); // tinker://<run>/weights/step-10
 */
export interface SaveWeightsResponse {
  path: string;
}

/**
 * The result of `loadState` / `loadStateWithOptimizer`.
 *
 * @example
 * const { path } = await training.loadState('tinker://run/weights/step-10');
 */
export interface LoadWeightsResponse {
  path: string | undefined;
}

/**
 * What `getInfo` reports about a training run.
 *
 * @example
 * const info = await training.getInfo();
 * info.modelData.modelName; // 'lathe/tiny-qwen3'
 */
export interface GetInfoResponse {
  modelId: string;
  modelName: string | undefined;
  isLora: boolean | undefined;
  loraRank: number | undefined;
  modelData: { arch: string | undefined; modelName: string | undefined; tokenizerId: string | undefined };
}
