/**
 * @module The SDK's data types: model inputs, training data, sampling and optimizer parameters,
 * and the results of every call. Option and field names are camelCase; the wire stays snake_case
 * (loss-input keys such as `target_tokens` keep their wire names). Results are plain objects.
 */
export * from './types/model-input.js';
export * from './types/training.js';
export * from './types/sampling.js';
export * from './types/service.js';
export * from './types/rest.js';
