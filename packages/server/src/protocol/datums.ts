/**
 * @module Checks training data against the model before it is queued, so a bad request gets a 400
 * naming the problem at submit time, and converts it to the worker's tensor form.
 */
import { badRequest } from '../http/errors.js';
import type { WorkerDatum } from '../scheduler/lane.js';
import type { ModelEntry } from '../worker/catalogue.js';
import { toWire, tokensToWire } from '../worker/tensor.js';
import { isLossFn, LOSS_FUNCTIONS, type TensorData, type WireDatum } from '@lathe/protocol';

/** Fails with the hosted service's wording when a sequence cannot fit the context window. */
export function checkContext(promptLength: number, maxTokens: number, model: ModelEntry): void {
  if (promptLength + maxTokens > model.max_context_length) {
    throw badRequest(
      `Prompt length plus max_tokens exceeds the model's context window: ${promptLength} + ${maxTokens} > ${model.max_context_length}`,
      'context_too_long',
    );
  }
}

/** Fails unless every token id is an integer in the model's vocabulary. */
export function checkTokens(tokens: ArrayLike<number | bigint>, model: ModelEntry, where: string): void {
  for (let i = 0; i < tokens.length; i++) {
    const t = Number(tokens[i]);
    if (!Number.isInteger(t) || t < 0 || t >= model.vocab_size) {
      throw badRequest(`${where}: token id ${t} at position ${i} is outside the vocabulary [0, ${model.vocab_size}) of ${model.model_name}`, 'token_out_of_vocab');
    }
  }
}

function checkTensor(key: string, tensor: TensorData, length: number, where: string, model: ModelEntry): void {
  if (tensor.shape[0] !== length) {
    throw badRequest(`${where}.loss_fn_inputs.${key}: first dimension ${tensor.shape[0]} must equal the model_input length ${length}`, 'shape_mismatch');
  }
  if (key === 'target_tokens') {
    checkTokens(tensor.data, model, `${where}.loss_fn_inputs.target_tokens`);
  } else if (tensor.data instanceof Float32Array) {
    for (let i = 0; i < tensor.data.length; i++) {
      if (!Number.isFinite(tensor.data[i])) throw badRequest(`${where}.loss_fn_inputs.${key}: non-finite value ${tensor.data[i]} at flat index ${i}`, 'non_finite');
    }
  }
}

/** Validates `loss_fn` and every datum, returning the worker's form of the data. */
export function prepareData(lossFn: string, data: WireDatum[], model: ModelEntry): WorkerDatum[] {
  if (!isLossFn(lossFn)) {
    throw badRequest(`unknown loss_fn ${JSON.stringify(lossFn)}; expected one of ${LOSS_FUNCTIONS.join(', ')}`, 'unknown_loss_fn');
  }
  if (data.length === 0) throw badRequest('forward_backward needs at least one datum', 'empty_batch');
  return data.map((datum, i) => {
    const where = `data[${i}]`;
    const n = datum.modelInput.length;
    if (n === 0) throw badRequest(`${where}.model_input is empty`, 'empty_input');
    checkTokens(datum.modelInput, model, `${where}.model_input`);
    if (n > model.max_context_length) {
      throw badRequest(`${where}: ${n} tokens exceed the context length ${model.max_context_length} of ${model.model_name}`, 'context_too_long');
    }
    if (!datum.lossFnInputs['target_tokens']) throw badRequest(`${where}.loss_fn_inputs.target_tokens is required`, 'missing_input');
    const inputs: WorkerDatum['loss_fn_inputs'] = {};
    for (const [key, tensor] of Object.entries(datum.lossFnInputs)) {
      checkTensor(key, tensor, n, where, model);
      inputs[key] = toWire(tensor.data, tensor.shape);
    }
    return { tokens: tokensToWire(datum.modelInput), loss_fn_inputs: inputs };
  });
}
