/**
 * @module `@lathe/protocol`: Tinker's wire protocol as the Lathe SDK and server both speak it. No
 * dependencies; runs in Node and browsers. The schema is `tinker_public.proto` beside this file.
 *
 * @example
 * import { encodeForwardBackwardRequest, decodeForwardBackwardOutput } from '@lathe/protocol';
 * const body = encodeForwardBackwardRequest({ modelId: 'S:train:0', seqId: 1, lossFn: 'cross_entropy',
 *   lossFnConfig: {}, forwardOnly: false, data: [{ modelInput: [1, 2], lossFnInputs: {} }] });
 */
export { ProtoDecodeError, leBytes, int32Tokens } from './wire.js';
export {
  DType,
  KEY_DTYPES,
  MAX_DENSE_ELEMENTS,
  checkCsr,
  checkShape,
  denseTensor,
  denseWithFill,
  densifyCsr,
  inLayout,
  lossInputDtype,
  type CsrIndex,
  type Dtype,
  type LaidOutTensor,
  type TensorData,
  type TensorIn,
} from './tensor.js';
export {
  decodeForwardBackwardEnvelope,
  decodeForwardBackwardOutput,
  decodeForwardBackwardRequest,
  encodeForwardBackwardOutput,
  encodeForwardBackwardRequest,
  type ChunkIn,
  type DatumIn,
  type DecodedForwardBackwardOutput,
  type ForwardBackwardEnvelope,
  type ForwardBackwardOutputMsg,
  type ForwardBackwardRequestIn,
  type ForwardBackwardRequestMsg,
  type WireDatum,
} from './forward-backward.js';
export { decodeSampleResponse, encodeSampleResponse, type SampledSequenceMsg, type SampleResponseMsg, type TopkRows } from './sample-response.js';
export { formatTinkerPath, parseTinkerPath, TinkerPathError, type CheckpointKind, type TinkerPath } from './tinker-path.js';
export { isLossFn, LOSS_FUNCTIONS, type LossFnType } from './loss-functions.js';
export { errorCodeInfo, SERVER_ERROR_CODES, WORKER_ERROR_CODES, type ErrorCodeInfo, type ErrorKind, type ServerErrorCode, type WorkerErrorCode } from './error-codes.js';
