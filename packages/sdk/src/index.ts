/**
 * @module @lathe/sdk: the Tinker client API in TypeScript. Runs on `fetch` alone (Node 20+,
 * browsers, Deno, Bun) and speaks Tinker's wire protocol, so the same code works against a Lathe
 * server and any other Tinker-compatible one.
 *
 * @example
 * import { ServiceClient, ModelInput } from '@lathe/sdk';
 *
 * const service = new ServiceClient({ baseUrl: 'http://127.0.0.1:8000', apiKey: 'tml-…' });
 * const training = await service.createLoraTrainingClient({ baseModel: 'lathe/tiny-qwen3', rank: 8 });
 * const tokens = [9707, 1879, 11, 1246, 525];
 * const datum = { modelInput: ModelInput.fromInts(tokens.slice(0, -1)), lossFnInputs: { target_tokens: tokens.slice(1), weights: [1, 1, 1, 1] } };
 * const out = await training.forwardBackward([datum], 'cross_entropy');
 * await training.optimStep({ learningRate: 1e-3 });
 * console.log(out.metrics['loss:sum']);
 * await service.close();
 */
export { SDK_VERSION, SDK_VERSION as VERSION, WIRE_SDK_VERSION } from './version.js';
export { APIFuture, type ResultOptions } from './core/api-future.js';
export {
  APIConnectionError,
  APIError,
  APIResponseValidationError,
  APITimeoutError,
  APIUserAbortError,
  AuthenticationError,
  BadRequestError,
  ConflictError,
  FutureExpiredError,
  InternalServerError,
  InvalidArgumentError,
  LatheError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
  RequestFailedError,
  TinkerError,
  UnprocessableEntityError,
  type RequestErrorCategory,
} from './core/errors.js';
export { LatheExtensions, type LatheExtensionsOptions, type MetricPoint, type MetricsRow, type RunStatus, type RunSummary, type ServiceStatus } from './core/lathe-extensions.js';
export type { Logger } from './core/logger.js';
export type { RequestOptions } from './core/request-options.js';
export { RestClient, type ListTrainingRunsOptions, type PageOptions } from './core/rest-client.js';
export { SamplingClient, type SamplingClientTarget } from './core/sampling-client.js';
export { ServiceClient, type ClientOptions, type CopyWeightsOptions, type FromStateOptions, type LoraTrainingClientArgs, type SessionFinishReason } from './core/service-client.js';
export { TensorData, toTensorData, type LossFnInput, type NumericArray, type TensorDtype, type TypedArrayFor } from './core/tensor.js';
export { TrainingClient } from './core/training-client.js';
export type { LoadStateOptions, SaveStateOptions, SaveWeightsExternalOptions, SaveWeightsForSamplerOptions } from './core/checkpoint-options.js';
export {
  ModelInput,
  type AccessScope,
  type AdamParams,
  type Checkpoint,
  type CheckpointArchiveUrlResponse,
  type CheckpointsListResponse,
  type CheckpointStorageUsage,
  type Cursor,
  type CustomLossFn,
  type CustomLossResult,
  type Datum,
  type DimuonParams,
  type EncodedTextChunk,
  type ExternalWeightsUrlsResponse,
  type ForwardBackwardOutput,
  type GetInfoResponse,
  type GetSamplerResponse,
  type GetServerCapabilitiesResponse,
  type GetSessionResponse,
  type ImageChunk,
  type ListSessionsResponse,
  type LoadWeightsResponse,
  type LossFnConfig,
  type LossFnType,
  type ModelInputChunk,
  type OptimizerConfig,
  type OptimStepResponse,
  type SampleArgs,
  type SampledSequence,
  type PromptAltTokens,
  type SampleResponse,
  type SamplingParams,
  type SaveWeightsExternalResponse,
  type SaveWeightsResponse,
  type StopReason,
  type SupportedModel,
  type TrainingRun,
  type TrainingRunsResponse,
  type WeightsInfoResponse,
} from './core/types.js';
