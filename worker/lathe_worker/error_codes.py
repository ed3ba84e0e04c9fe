"""Every error code the worker replies with: code -> HTTP status and category ("user": the caller's
fault, `UserError`; "server": ours). The server keeps the same table in TypeScript
(`packages/protocol/src/error-codes.ts`); a test compares the two through this module's JSON form:

    python -m lathe_worker.error_codes --json   # {"adapter_exists": {"status": 409, "category": "user"}, ...}

A worker error reaches a client as a failed future carrying the category; the status is what an HTTP
reply for the same problem uses (400 unless a more specific one fits). Codes are string literals at
their raise sites (the first argument of an error class, or a `code=` argument), so that
`tests/test_error_codes.py` can check this table against the source in both directions.
"""

from __future__ import annotations

import sys
from typing import Literal, NamedTuple

from .table_cli import print_table

Category = Literal["user", "server"]


class ErrorCode(NamedTuple):
    status: int
    category: Category


_BAD_REQUEST = ErrorCode(400, "user")

ERROR_CODES: dict[str, ErrorCode] = {
    # The request itself.
    "malformed_frame": _BAD_REQUEST,
    "frame_too_large": ErrorCode(413, "user"),
    "unauthorized": ErrorCode(401, "user"),
    "unknown_op": _BAD_REQUEST,
    "missing_field": _BAD_REQUEST,
    "invalid_field": _BAD_REQUEST,
    "invalid_tensor": _BAD_REQUEST,
    "invalid_dtype": _BAD_REQUEST,
    "invalid_shape": _BAD_REQUEST,
    # Model loading.
    "unknown_model": _BAD_REQUEST,
    "model_already_loaded": ErrorCode(409, "user"),
    "no_model": _BAD_REQUEST,
    "unsupported_architecture": _BAD_REQUEST,
    "invalid_model_config": _BAD_REQUEST,
    "invalid_model_files": _BAD_REQUEST,
    "model_files_missing": _BAD_REQUEST,
    "model_tensor_missing": _BAD_REQUEST,
    "model_tensor_shape": _BAD_REQUEST,
    "model_tensor_unexpected": _BAD_REQUEST,
    "unshardable_model": _BAD_REQUEST,
    # Adapters.
    "adapter_exists": ErrorCode(409, "user"),
    "unknown_adapter": ErrorCode(404, "user"),
    "adapter_unavailable": _BAD_REQUEST,
    "invalid_lora_rank": _BAD_REQUEST,
    "invalid_lora_alpha": _BAD_REQUEST,
    "invalid_lora_targets": _BAD_REQUEST,
    # Training inputs and losses.
    "empty_batch": _BAD_REQUEST,
    "empty_input": _BAD_REQUEST,
    "token_out_of_vocab": _BAD_REQUEST,
    "context_too_long": _BAD_REQUEST,
    "unknown_loss_fn": _BAD_REQUEST,
    "invalid_loss_fn_config": _BAD_REQUEST,
    "missing_loss_fn_input": _BAD_REQUEST,
    "invalid_loss_fn_input": _BAD_REQUEST,
    "non_finite_loss_fn_input": _BAD_REQUEST,
    "non_finite_loss": _BAD_REQUEST,
    "non_finite_gradient": _BAD_REQUEST,
    # Optimizers.
    "invalid_optimizer": _BAD_REQUEST,
    "invalid_adam_params": _BAD_REQUEST,
    "invalid_optimizer_params": _BAD_REQUEST,
    "optimizer_mismatch": _BAD_REQUEST,
    "invalid_optimizer_state": _BAD_REQUEST,
    # Sampling.
    "invalid_sampling_params": _BAD_REQUEST,
    "invalid_num_samples": _BAD_REQUEST,
    "invalid_first_sample_index": _BAD_REQUEST,
    "invalid_topk_prompt_logprobs": _BAD_REQUEST,
    "invalid_topk_sample_logprobs": _BAD_REQUEST,
    "invalid_prompt_alt_tokens_k": _BAD_REQUEST,
    "invalid_prompt_logprobs_last_n": _BAD_REQUEST,
    "invalid_target_prompt_logprobs": _BAD_REQUEST,
    "stop_strings_unsupported": _BAD_REQUEST,
    # Checkpoints and export.
    "checkpoint_not_found": ErrorCode(404, "user"),
    "checkpoint_corrupt": _BAD_REQUEST,
    "checkpoint_mismatch": _BAD_REQUEST,
    "checkpoint_model_mismatch": _BAD_REQUEST,
    "no_optimizer_state": _BAD_REQUEST,
    "peft_export_unsupported": _BAD_REQUEST,
    # Anything unexpected (a bug, out of memory): the op failed, the worker keeps serving.
    "internal": ErrorCode(500, "server"),
}


def as_json() -> dict[str, dict[str, int | str]]:
    """The table as plain data, sorted by code: `{code: {"status": int, "category": "user" | "server"}}`.

    >>> as_json()["unknown_adapter"]
    {'status': 404, 'category': 'user'}
    """
    return {code: entry._asdict() for code, entry in sorted(ERROR_CODES.items())}


def main(argv: list[str] | None = None) -> int:
    return print_table(argv, "python -m lathe_worker.error_codes", "the worker's error codes", as_json(),
                       lambda code, entry: f"{code:34} {entry['status']}  {entry['category']}")


if __name__ == "__main__":
    sys.exit(main())
