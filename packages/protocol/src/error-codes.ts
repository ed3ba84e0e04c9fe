/**
 * @module Error codes: the `type` of a server error reply (`{error: {type, message, category}}`)
 * and the `code` of a worker error reply, each with its HTTP status and whose fault it is
 * (`user`: the caller sent something wrong, retrying the same request fails again; `server`: we
 * failed). The worker's Python table (`lathe_worker.error_codes`) lists the same worker codes.
 * Tests keep both tables true: `packages/server/test/worker-tables.test.ts` compares the worker
 * codes with the Python table, `server-error-codes.test.ts` the server codes with the server's
 * raise sites.
 */

/** Whose fault an error is. */
export type ErrorKind = 'user' | 'server';

/** An error code's HTTP status and kind. */
export interface ErrorCodeInfo {
  status: number;
  kind: ErrorKind;
}

const user = (status = 400): ErrorCodeInfo => ({ status, kind: 'user' });
const server = (status = 500): ErrorCodeInfo => ({ status, kind: 'server' });

/** The `type` of each error reply the HTTP server sends. */
export const SERVER_ERROR_CODES = {
  bad_request: user(),
  invalid_body: user(),
  invalid_request: user(),
  invalid_protobuf: user(),
  invalid_seq_id: user(),
  invalid_model_seq_id: user(),
  stale_seq_id: user(),
  invalid_datum: user(),
  missing_input: user(),
  shape_mismatch: user(),
  token_out_of_vocab: user(),
  non_finite: user(),
  context_too_long: user(),
  empty_batch: user(),
  empty_input: user(),
  unknown_loss_fn: user(),
  unknown_model: user(),
  invalid_adam_params: user(),
  invalid_optim_params: user(),
  invalid_optimizer_config: user(),
  invalid_optimizer_params: user(),
  optimizer_mismatch: user(),
  no_optimizer_state: user(),
  invalid_lora_config: user(),
  invalid_prompt: user(),
  invalid_target_prompt_logprobs: user(),
  invalid_user_metadata: user(),
  invalid_checkpoint_id: user(),
  base_model_mismatch: user(),
  already_exists: user(),
  not_loadable: user(),
  not_cancellable: user(),
  model_unloaded: user(),
  unauthorized: user(401),
  not_found: user(404),
  run_on_other_server: user(409),
  gone: user(410),
  payload_too_large: user(413),
  too_many_requests: user(429),
  internal_error: server(),
  unavailable: server(503),
} as const satisfies Record<string, ErrorCodeInfo>;

/**
 * The `code` of each error reply the compute worker sends. A user error fails the request with a
 * 400-class answer; `internal` is the worker's own failure.
 */
export const WORKER_ERROR_CODES = {
  adapter_exists: user(409),
  adapter_unavailable: user(),
  checkpoint_corrupt: user(),
  checkpoint_mismatch: user(),
  checkpoint_model_mismatch: user(),
  checkpoint_not_found: user(404),
  context_too_long: user(),
  empty_batch: user(),
  empty_input: user(),
  frame_too_large: user(413),
  internal: server(),
  invalid_adam_params: user(),
  invalid_dtype: user(),
  invalid_field: user(),
  invalid_first_sample_index: user(),
  invalid_lora_alpha: user(),
  invalid_lora_rank: user(),
  invalid_lora_targets: user(),
  invalid_loss_fn_config: user(),
  invalid_loss_fn_input: user(),
  invalid_model_config: user(),
  invalid_model_files: user(),
  invalid_num_samples: user(),
  invalid_optimizer: user(),
  invalid_optimizer_params: user(),
  invalid_optimizer_state: user(),
  invalid_prompt_alt_tokens_k: user(),
  invalid_prompt_logprobs_last_n: user(),
  invalid_sampling_params: user(),
  invalid_shape: user(),
  invalid_target_prompt_logprobs: user(),
  invalid_tensor: user(),
  invalid_topk_prompt_logprobs: user(),
  invalid_topk_sample_logprobs: user(),
  malformed_frame: user(),
  missing_field: user(),
  missing_loss_fn_input: user(),
  model_already_loaded: user(409),
  model_files_missing: user(),
  model_tensor_missing: user(),
  model_tensor_shape: user(),
  model_tensor_unexpected: user(),
  no_model: user(),
  no_optimizer_state: user(),
  non_finite_gradient: user(),
  non_finite_loss: user(),
  non_finite_loss_fn_input: user(),
  optimizer_mismatch: user(),
  peft_export_unsupported: user(),
  stop_strings_unsupported: user(),
  token_out_of_vocab: user(),
  unauthorized: user(401),
  unknown_adapter: user(404),
  unknown_loss_fn: user(),
  unknown_model: user(),
  unknown_op: user(),
  unshardable_model: user(),
  unsupported_architecture: user(),
} as const satisfies Record<string, ErrorCodeInfo>;

/** A server error reply's `type`. */
export type ServerErrorCode = keyof typeof SERVER_ERROR_CODES;
/** A worker error reply's `code`. */
export type WorkerErrorCode = keyof typeof WORKER_ERROR_CODES;

/**
 * The status and kind of a server or worker error code; an unknown code is a server error (500),
 * as an unexpected failure is.
 *
 * @example
 * errorCodeInfo('token_out_of_vocab'); // { status: 400, kind: 'user' }
 * errorCodeInfo('unavailable');        // { status: 503, kind: 'server' }
 */
export function errorCodeInfo(code: string): ErrorCodeInfo {
  const table: Record<string, ErrorCodeInfo> = { ...WORKER_ERROR_CODES, ...SERVER_ERROR_CODES };
  return Object.hasOwn(table, code) ? table[code]! : server();
}
