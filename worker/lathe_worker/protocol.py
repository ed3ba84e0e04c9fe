"""Frame codec and tensor encoding for the worker protocol.

A frame is a big-endian u32 byte length followed by one msgpack map. Requests are
`{op, id, ...}`; replies are `{id, ok: True, ...}` or `{id, ok: False, error: {code, message,
category}}`. Tensors travel as `{dtype, shape, data}` with `data` little-endian raw bytes, never
as JSON-style number lists (small lists are still accepted for hand-written requests).

Ops (fields beyond `op`/`id`):
- `hello` -> `{protocol, model, pid, devices: [{type, name, memory_bytes}]}`
- `register {token, protocol, pid, hostname, devices, models, loaded}`: the first frame of a worker that
  dials the server (`--connect`, see connect.py); the *server* replies `{worker_id}` or `unauthorized`
- `load_model {model}` -> `{model, architecture, vocab_size, max_context_length, ...}`
- `create_adapter {adapter, lora: {rank, seed, train_attn, train_mlp, train_unembed}, optimizer?}`
  -> `{adapter, num_params, optimizer}`; optimizer `{"type": "adamw"}` (default) or `{"type": "dimuon", "version": 1}`
- `drop_adapter {adapter}`
- `forward_backward` / `forward {items: [{adapter, loss_fn, loss_fn_config?, data: [{tokens, loss_fn_inputs}]}]}`
  -> `{results: [{ok, loss_fn_outputs: [{logprobs}], metrics} | {ok: False, error}]}`; one bad item
  never fails the others.
- `optim_step {adapter, adam_params | optimizer_params: {type: "dimuon", learning_rate, ...}}` -> `{metrics}`
- `sample {items: [{adapter?, prompt, num_samples, sampling_params, prompt_logprobs?, topk_prompt_logprobs?,
  topk_sample_logprobs?, prompt_alt_tokens_k?, target_prompt_logprobs?, prompt_logprobs_last_n?,
  first_sample_index?}]}`
  -> `{results: [{ok, sequences: [{tokens, logprobs, stop_reason, topk_logprobs?}], prompt_logprobs?,
  topk_prompt_logprobs?, target_prompt_logprobs?, prompt_alt_tokens?}]}` (README.md: "Sampling extras");
  `first_sample_index` (default 0) numbers the item's samples from there, for the seeds: a seeded request
  split into pieces of fewer samples gives the same sequences as the whole.
- `save_adapter {adapter, path, include_optimizer}` / `snapshot {adapter, path}` (always with optimizer)
- `load_adapter {adapter, path, include_optimizer, optimizer?}` -> `{adapter, lora, optimizer}`
- `export_peft {adapter | source, path, naming?}` (source: a checkpoint folder; naming: "tinker", the
  default, with Tinker's archive names, or "peft" for `peft.PeftModel`; see `peft_export.py`)
- `stats` -> `{model, device, dtype, adapters: [{adapter, rank, num_params, pending_grad, steps, optimizer}], ops: {...}}`
- `shutdown`
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import numpy as np
import torch

from .errors import UserError

MAX_FRAME_BYTES = 1 << 30
HEADER = struct.Struct(">I")

_WIRE_TO_TORCH = {
    "int64": torch.int64,
    "int32": torch.int32,
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
}
_TORCH_TO_WIRE = {v: k for k, v in _WIRE_TO_TORCH.items()}


def pack_frame(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def unpack_body(body: bytes) -> dict[str, Any]:
    """Decode one frame body; a body that is not a msgpack map is the sender's error."""
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise UserError("malformed_frame", f"frame is not valid msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise UserError("malformed_frame", f"frame must be a msgpack map, got {type(message).__name__}")
    return message


def encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        data = t.view(torch.int16).numpy().astype("<i2").tobytes()
    else:
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
    return {"dtype": _TORCH_TO_WIRE[t.dtype], "shape": list(t.shape), "data": data}


def decode_tensor(value: Any, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode a wire tensor (or a plain number list). `name` appears in every error message."""
    if isinstance(value, (list, tuple)):
        try:
            t = torch.tensor(value, dtype=dtype) if dtype is not None else torch.tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UserError("invalid_tensor", f"{name}: not a rectangular number list ({exc})") from None
        return t
    if not isinstance(value, dict) or not {"dtype", "shape", "data"} <= value.keys():
        raise UserError("invalid_tensor", f"{name}: expected {{dtype, shape, data}} or a number list")
    wire_dtype = value["dtype"]
    if wire_dtype not in _WIRE_TO_TORCH:
        raise UserError("invalid_tensor", f"{name}: unsupported dtype {wire_dtype!r}; use one of {sorted(_WIRE_TO_TORCH)}")
    shape = value["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise UserError("invalid_tensor", f"{name}: shape must be a list of non-negative ints, got {shape!r}")
    data = value["data"]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UserError("invalid_tensor", f"{name}: data must be binary")
    torch_dtype = _WIRE_TO_TORCH[wire_dtype]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    count = int(np.prod(shape)) if shape else 1
    if len(data) != count * itemsize:
        raise UserError(
            "invalid_tensor",
            f"{name}: shape {shape} of {wire_dtype} needs {count * itemsize} bytes, got {len(data)}",
        )
    if torch_dtype == torch.bfloat16:
        array = np.frombuffer(data, dtype="<i2").copy()
        t = torch.from_numpy(array).view(torch.bfloat16).reshape(shape)
    else:
        np_dtype = np.dtype(wire_dtype).newbyteorder("<")
        t = torch.from_numpy(np.frombuffer(data, dtype=np_dtype).astype(np_dtype.newbyteorder("=")))
        t = t.reshape(shape)
    return t.to(dtype) if dtype is not None and t.dtype != dtype else t


def error_reply(request_id: Any, error: dict[str, str]) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": error}
