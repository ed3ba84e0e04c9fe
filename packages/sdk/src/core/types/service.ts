/**
 * @module SDK data types: what the service reports: supported models, capabilities, weights info and URLs.
 */
import type { OptimizerConfig } from './training.js';

/**
 * A model the server can train or sample.
 *
 * @example
 * const { supportedModels } = await service.getServerCapabilities();
 * supportedModels.map((m) => m.modelName);
 */
export interface SupportedModel {
  modelName: string | undefined;
  maxContextLength: number | undefined;
  trainable: boolean | undefined;
  sampleable: boolean | undefined;
}

/**
 * The result of `getServerCapabilities`.
 *
 * @example
 * (await service.getServerCapabilities()).supportedModels[0]?.maxContextLength;
 */
export interface GetServerCapabilitiesResponse {
  supportedModels: SupportedModel[];
}

/**
 * What a `tinker://` checkpoint holds (`weights_info`).
 *
 * @example
 * const info = await rest.getWeightsInfoByTinkerPath(path);
 * info.loraRank;
 */
export interface WeightsInfoResponse {
  baseModel: string;
  isLora: boolean;
  loraRank: number | undefined;
  trainUnembed: boolean | undefined;
  trainMlp: boolean | undefined;
  trainAttn: boolean | undefined;
  /** The optimizer of the run it was saved from (`{ type: 'adamw' }` when the server names none). */
  optimizerConfig: OptimizerConfig;
}

/**
 * The result of `saveWeightsExternal`: the external checkpoint's path and size.
 *
 * @example
 * const { path, sizeBytes } = await training.saveWeightsExternal('hf');
 */
export interface SaveWeightsExternalResponse {
  /** `tinker://{run}/external_weights/{name}`. */
  path: string;
  sizeBytes: number | undefined;
}

/**
 * Signed, expiring download links of an external checkpoint's files (a Hugging Face PEFT adapter).
 *
 * @example
 * const { urls } = await rest.getExternalWeightsUrls(path);
 * await fetch(urls['adapter_model.safetensors']!);
 */
export interface ExternalWeightsUrlsResponse {
  /** File path within the checkpoint folder → URL. */
  urls: Record<string, string>;
  /** ISO-8601. */
  expires: string;
}

/**
 * What this key's checkpoints hold now (`billing/usage/checkpoints/current`).
 *
 * @example
 * const { checkpointCount, sizeBytes } = await rest.getCurrentCheckpointStorageUsage();
 */
export interface CheckpointStorageUsage {
  checkpointCount: number;
  sizeBytes: number;
}
