"""Protocol ops: turn a decoded request map into engine calls and engine results into a reply map.

Everything the caller sent is checked here or in the engine before it reaches the model; the
reply names the field that was wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from .devices import describe_device
from .engine import Engine
from .micro_batches import Datum, WorkItem
from .errors import UserError
from .lora import LoraConfig
from .optim import optim_params_from_wire, optimizer_config_from_wire
from .protocol import decode_tensor, encode_tensor
from .sample_request import SampleRequest, SamplingParams

INT_INPUTS = {"target_tokens"}


def _field(request: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if name not in request:
        raise UserError("missing_field", f"{where}{name} is required")
    value = request[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise UserError("invalid_field", f"{where}{name} has the wrong type ({type(value).__name__})")
    return value


def _adapter_id(request: dict[str, Any], where: str = "", optional: bool = False) -> str | None:
    if optional and request.get("adapter") is None:
        return None
    return _field(request, "adapter", str, where)


def _path(request: dict[str, Any]) -> Path:
    return Path(_field(request, "path", str))


def _tokens(value: Any, name: str) -> torch.Tensor:
    t = decode_tensor(value, name)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise UserError("invalid_dtype", f"{name}: token ids must be integers, got {t.dtype}")
    return t.to(torch.int64)


def _loss_input(key: str, value: Any, where: str) -> torch.Tensor:
    name = f"{where}loss_fn_inputs.{key}"
    t = decode_tensor(value, name)
    if key in INT_INPUTS:
        if t.dtype.is_floating_point:
            raise UserError("invalid_dtype", f"{name} must be int64 token ids, got {t.dtype}")
        return t.to(torch.int64)
    return t.to(torch.float32) if t.dtype != torch.float32 else t


def parse_work_item(raw: Any, index: int) -> WorkItem:
    where = f"items[{index}]."
    if not isinstance(raw, dict):
        raise UserError("invalid_field", f"items[{index}] must be a map")
    data = _field(raw, "data", list, where)
    datums = []
    for j, d in enumerate(data):
        w = f"{where}data[{j}]."
        if not isinstance(d, dict):
            raise UserError("invalid_field", f"{where}data[{j}] must be a map")
        inputs = _field(d, "loss_fn_inputs", dict, w)
        datums.append(
            Datum(
                tokens=_tokens(_field(d, "tokens", (dict, list), w), f"{w}tokens"),
                inputs={k: _loss_input(k, v, w) for k, v in inputs.items()},
            )
        )
    config = raw.get("loss_fn_config")
    if config is not None and not isinstance(config, dict):
        raise UserError("invalid_field", f"{where}loss_fn_config must be a map")
    return WorkItem(
        adapter_id=_adapter_id(raw, where, optional=True),
        loss_fn=_field(raw, "loss_fn", str, where),
        loss_config=config,
        data=datums,
    )


def parse_sample_request(raw: Any, index: int) -> SampleRequest:
    where = f"items[{index}]."
    if not isinstance(raw, dict):
        raise UserError("invalid_field", f"items[{index}] must be a map")
    request = SampleRequest(
        adapter_id=_adapter_id(raw, where, optional=True),
        prompt=_tokens(_field(raw, "prompt", (dict, list), where), f"{where}prompt"),
        num_samples=raw.get("num_samples", 1),
        params=SamplingParams.from_wire(raw.get("sampling_params")),
        prompt_logprobs=bool(raw.get("prompt_logprobs", False)),
        topk_prompt_logprobs=raw.get("topk_prompt_logprobs", 0) or 0,
        topk_sample_logprobs=raw.get("topk_sample_logprobs", 0) or 0,
        prompt_alt_tokens_k=raw.get("prompt_alt_tokens_k", 0) or 0,
        target_prompt_logprobs=(None if raw.get("target_prompt_logprobs") is None else
                                _tokens(raw["target_prompt_logprobs"], f"{where}target_prompt_logprobs")),
        prompt_logprobs_last_n=raw.get("prompt_logprobs_last_n"),
        first_sample_index=raw.get("first_sample_index", 0),
    )
    request.validate_counts()
    return request


def _per_item(
    items: Any, parse: Callable[[Any, int], Any], run: Callable[[list[Any]], list[Any]], encode: Callable[[Any], dict]
) -> dict[str, Any]:
    """Parse each item on its own so one malformed item fails alone, run the rest as one batch."""
    if not isinstance(items, list) or not items:
        raise UserError("invalid_field", "items must be a non-empty list")
    parsed: list[Any] = []
    for index, raw in enumerate(items):
        try:
            parsed.append(parse(raw, index))
        except UserError as exc:
            parsed.append(exc)
    good = [p for p in parsed if not isinstance(p, UserError)]
    outcomes = iter(run(good) if good else [])
    results = []
    for p in parsed:
        outcome = p if isinstance(p, UserError) else next(outcomes)
        results.append(
            {"ok": False, "error": outcome.to_reply()} if isinstance(outcome, UserError) else {"ok": True, **encode(outcome)}
        )
    return {"results": results}


def _encode_fb(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "loss_fn_outputs": [{k: encode_tensor(v) for k, v in out.items()} for out in result["loss_fn_outputs"]],
        "metrics": result["metrics"],
    }


def _encode_sample(result: dict[str, Any]) -> dict[str, Any]:
    sequences = [
        {
            "tokens": encode_tensor(torch.tensor(seq["tokens"], dtype=torch.int64)),
            "logprobs": encode_tensor(torch.tensor(seq["logprobs"], dtype=torch.float32)),
            "stop_reason": seq["stop_reason"],
            **({"topk_logprobs": {k: encode_tensor(v) for k, v in seq["topk_logprobs"].items()}}
               if "topk_logprobs" in seq else {}),
        }
        for seq in result["sequences"]
    ]
    encoded: dict[str, Any] = {**result, "sequences": sequences}
    if "target_prompt_logprobs" in result:
        encoded["target_prompt_logprobs"] = encode_tensor(result["target_prompt_logprobs"])
    if "prompt_alt_tokens" in result:
        encoded["prompt_alt_tokens"] = {k: encode_tensor(v) for k, v in result["prompt_alt_tokens"].items()}
    return encoded


class Handlers:
    """Maps op names to engine calls."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "hello": lambda r: {"protocol": 1, "model": engine.model_name, "pid": os.getpid(), "devices": [describe_device(engine.device)]},
            "load_model": lambda r: engine.load_model(_field(r, "model", str)),
            "create_adapter": self.create_adapter,
            "drop_adapter": lambda r: engine.drop_adapter(_adapter_id(r)),
            "forward_backward": lambda r: self.forward(r, backward=True),
            "forward": lambda r: self.forward(r, backward=False),
            "optim_step": lambda r: engine.optim_step(_adapter_id(r), optim_params_from_wire(r)),
            "sample": self.sample,
            "save_adapter": lambda r: engine.save_adapter(
                _adapter_id(r), _path(r), bool(r.get("include_optimizer", True))
            ),
            "snapshot": lambda r: engine.save_adapter(_adapter_id(r), _path(r), include_optimizer=True),
            "load_adapter": lambda r: engine.load_adapter(
                _adapter_id(r), _path(r), bool(r.get("include_optimizer", False)),
                optimizer_config_from_wire(r["optimizer"]) if r.get("optimizer") is not None else None,
            ),
            "export_peft": lambda r: engine.export_peft(
                _adapter_id(r, optional=True), _path(r), Path(r["source"]) if isinstance(r.get("source"), str) else None,
                _field(r, "naming", str) if "naming" in r else "tinker",
            ),
            "stats": lambda r: engine.stats(),
            "shutdown": lambda r: {},  # the server stops after replying
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            raise UserError("unknown_op", f"unknown op {op!r}; known ops: {sorted(self.ops)}")
        self.engine.op_counts[op] = self.engine.op_counts.get(op, 0) + 1
        return handler(request)

    def create_adapter(self, request: dict[str, Any]) -> dict[str, Any]:
        lora = request.get("lora") or {}
        if not isinstance(lora, dict):
            raise UserError("invalid_field", "lora must be a map")
        known = {"rank", "seed", "train_attn", "train_mlp", "train_unembed"}
        if set(lora) - known:
            raise UserError("invalid_field", f"unknown lora keys: {sorted(set(lora) - known)}")
        try:
            config = LoraConfig(**{k: v for k, v in lora.items() if v is not None})
        except TypeError as exc:
            raise UserError("invalid_field", f"lora: {exc}") from None
        return self.engine.create_adapter(_adapter_id(request), config, optimizer_config_from_wire(request.get("optimizer")))

    def forward(self, request: dict[str, Any], backward: bool) -> dict[str, Any]:
        return _per_item(
            request.get("items"),
            parse_work_item,
            lambda items: self.engine.forward_backward(items, backward=backward),
            _encode_fb,
        )

    def sample(self, request: dict[str, Any]) -> dict[str, Any]:
        return _per_item(request.get("items"), parse_sample_request, self.engine.sample, _encode_sample)
