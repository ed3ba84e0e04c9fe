"""Adapter checkpoints: a folder with `adapter.safetensors` (LoRA A/B by module path, the LoRA config,
its alpha and the base model in its metadata) and, when saved with optimizer state,
`optimizer.safetensors` (its metadata names the optimizer, e.g. `{"type": "dimuon", "version": 1}`;
none means AdamW).

Writes go to a temporary sibling folder that is renamed into place, so a crash mid-save never
leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import UserError
from .lora import LORA_ALPHA, LoraAdapter, LoraConfig
from .models.transformer import Transformer
from .optim import SlotOptimizer, config_from_metadata, state_metadata

ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
FORMAT_VERSION = "1"


class SavedOptimizer(NamedTuple):
    config: dict[str, Any]  # which optimizer the state belongs to (`optimizer_config_from_wire` form)
    state: dict[str, torch.Tensor]  # `SlotOptimizer.state_dict()` layout


def lora_config_to_wire(config: LoraConfig) -> dict[str, Any]:
    """Tinker's `LoraConfig` fields (no alpha: the protocol has none; checkpoints keep it apart)."""
    return {
        "rank": config.rank,
        "seed": config.seed,
        "train_attn": config.train_attn,
        "train_mlp": config.train_mlp,
        "train_unembed": config.train_unembed,
    }


def save(path: Path, adapter: LoraAdapter, optimizer: SlotOptimizer | None, base_model: str | None) -> int:
    """Write the checkpoint folder at `path` (replacing any old one); returns its size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {}
        for module_path, a, b in adapter.named_factors():
            tensors[f"{module_path}.lora_A"] = a.detach().contiguous().cpu()
            tensors[f"{module_path}.lora_B"] = b.detach().contiguous().cpu()
        metadata = {
            "format": "lathe-adapter",
            "format_version": FORMAT_VERSION,
            "base_model": base_model or "",
            "lora_config": json.dumps(lora_config_to_wire(adapter.config)),
            # A key of its own, so workers that predate it still read the checkpoint.
            "lora_alpha": json.dumps(adapter.config.alpha),
        }
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata=metadata)
        if optimizer is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in optimizer.state_dict().items()}
            save_file(state, str(tmp / OPTIMIZER_FILE),
                      metadata={"format_version": FORMAT_VERSION, **state_metadata(optimizer)})
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sum(f.stat().st_size for f in path.iterdir())


def load(
    path: Path, model: Transformer, base_model: str | None, device: torch.device
) -> tuple[LoraAdapter, SavedOptimizer | None]:
    """Rebuild the adapter saved at `path`; also return its optimizer state if it has one."""
    path = Path(path)
    adapter_file = path / ADAPTER_FILE
    if not adapter_file.is_file():
        raise UserError("checkpoint_not_found", f"no adapter checkpoint at {path}")
    try:

        with safe_open(str(adapter_file), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(adapter_file))
    except (SafetensorError, OSError) as exc:
        raise UserError("checkpoint_corrupt", f"cannot read {adapter_file}: {exc}") from None
    saved_base = metadata.get("base_model", "")
    if base_model and saved_base and saved_base != base_model:
        raise UserError(
            "checkpoint_model_mismatch",
            f"checkpoint {path} was trained on {saved_base!r}, but this worker holds {base_model!r}",
        )
    try:
        # Checkpoints from before per-adapter alpha have no `lora_alpha`: theirs was the default.
        alpha = json.loads(metadata["lora_alpha"]) if "lora_alpha" in metadata else LORA_ALPHA
        config = LoraConfig(**json.loads(metadata["lora_config"]), alpha=alpha)
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError("checkpoint_corrupt", f"{adapter_file}: missing or invalid lora_config metadata ({exc})") from None
    config.validate()
    adapter = LoraAdapter.create(model, config, device=device)
    expected = {f"{name}.{factor}" for name, _, _ in adapter.named_factors() for factor in ("lora_A", "lora_B")}
    if expected != set(tensors):
        raise UserError(
            "checkpoint_mismatch",
            f"checkpoint {path} holds {len(tensors)} LoRA tensors, this model expects {len(expected)} for its LoRA config"
            + (f" (missing e.g. {min(expected - set(tensors))})" if expected - set(tensors) else ""),
        )
    with torch.no_grad():
        for module_path, a, b in adapter.named_factors():
            for name, param in (("lora_A", a), ("lora_B", b)):
                value = tensors[f"{module_path}.{name}"]
                if value.shape != param.shape:
                    raise UserError(
                        "checkpoint_mismatch",
                        f"{module_path}.{name}: checkpoint shape {list(value.shape)} != model shape {list(param.shape)}",
                    )
                param.copy_(value)
    optimizer_file = path / OPTIMIZER_FILE
    if not optimizer_file.is_file():
        return adapter, None
    try:
        with safe_open(str(optimizer_file), framework="pt") as f:
            optimizer_metadata = f.metadata() or {}
        optimizer_state = load_file(str(optimizer_file), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise UserError("checkpoint_corrupt", f"cannot read {optimizer_file}: {exc}") from None
    return adapter, SavedOptimizer(config_from_metadata(optimizer_metadata), optimizer_state)
