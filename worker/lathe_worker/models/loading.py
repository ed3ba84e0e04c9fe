"""Load and save a Hugging Face model folder: `config.json` plus either `model.safetensors` or shards
`model-0000N-of-0000M.safetensors` listed in `model.safetensors.index.json`.

Loading builds the model on the meta device and assigns tensors read straight onto the target device,
so a large bf16 checkpoint never takes two copies of memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UserError
from .config import ModelConfig
from .transformer import Transformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("model_files_missing", f"model folder {path.parent} has no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError("invalid_model_files", f"{path} is not valid JSON: {e}") from None


def load_config(folder: Path) -> ModelConfig:
    return ModelConfig.from_hf_dict(read_json(Path(folder) / "config.json"))


def _open(path: Path, device: str = "cpu"):
    try:
        return safe_open(path, framework="pt", device=device)
    except SafetensorError as e:
        raise UserError("invalid_model_files", f"{path} is not a valid safetensors file: {e}") from None


def weight_map_of(folder: Path) -> dict[str, str]:
    """tensor name -> file name, for a single-file or a sharded checkpoint."""
    if (folder / SINGLE_FILE).is_file():
        with _open(folder / SINGLE_FILE) as f:
            return dict.fromkeys(f.keys(), SINGLE_FILE)
    if (folder / INDEX_FILE).is_file():
        index = read_json(folder / INDEX_FILE)
        if not isinstance(index.get("weight_map"), dict):
            raise UserError("invalid_model_files", f"{folder / INDEX_FILE} has no weight_map")
        return index["weight_map"]
    raise UserError(
        "model_files_missing",
        f"model folder {folder} has neither {SINGLE_FILE} nor {INDEX_FILE} (only safetensors weights are supported)",
    )


def _ignorable(name: str, config: ModelConfig) -> bool:
    # Old Llama exports carry RoPE buffers; tied checkpoints sometimes still store lm_head.weight.
    return name.endswith("rotary_emb.inv_freq") or (config.tie_word_embeddings and name == "lm_head.weight")


class ModelSharding(Protocol):
    """How a model is split over several processes (`parallel.TensorParallel`)."""

    def check(self, model: Transformer) -> None:
        """Raise a `UserError` when `model` cannot be split this way."""

    def read(self, name: str, tensor_slice: Any) -> torch.Tensor:
        """This process's part of checkpoint tensor `name`, from its safetensors slice."""

    def apply(self, model: Transformer) -> None:
        """Turn the full model (on the meta device) into this process's part, in place."""


def load_model(folder: Path, dtype=torch.float32, device=None, sharding: ModelSharding | None = None) -> Transformer:
    """Load an HF folder; with `sharding`, only this process's part of each tensor is read."""
    folder = Path(folder)
    config = load_config(folder)
    device = torch.device(device or "cpu")
    model = Transformer(config, dtype=dtype, device="meta")
    if sharding is not None:
        sharding.check(model)  # before reading anything
    expected = {k: v.shape for k, v in model.state_dict().items()}
    weight_map = weight_map_of(folder)

    missing = sorted(set(expected) - set(weight_map))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError("model_tensor_missing", f"checkpoint in {folder} is missing tensor {missing[0]!r}{more}")
    unexpected = sorted(k for k in weight_map if k not in expected and not _ignorable(k, config))
    if unexpected:
        raise UserError("model_tensor_unexpected",
                        f"checkpoint in {folder} has unexpected tensor {unexpected[0]!r} for this config")

    state: dict[str, torch.Tensor] = {}
    by_file: dict[str, list[str]] = {}
    for name in expected:
        by_file.setdefault(weight_map[name], []).append(name)
    for file, names in by_file.items():
        if not (folder / file).is_file():
            raise UserError("model_files_missing", f"model folder {folder} has no shard {file}")
        with _open(folder / file, str(device)) as f:
            keys = set(f.keys())
            for name in names:
                if name not in keys:
                    raise UserError("model_tensor_missing", f"shard {file} is missing tensor {name!r}")
                shape = tuple(f.get_slice(name).get_shape())  # checked before reading the data
                if shape != tuple(expected[name]):
                    raise UserError(
                        "model_tensor_shape",
                        f"tensor {name!r} has shape {shape}, expected {tuple(expected[name])} from config.json",
                    )
                tensor = f.get_tensor(name) if sharding is None else sharding.read(name, f.get_slice(name))
                # On CPU, safetensors hands out tensors that live in the file's (private) mmap: 4 KiB page-
                # cache pages, not 64-byte aligned, and still tied to the file. Decoding streams every weight
                # once per step, and from such pages the same matmuls ran measurably slower (TLB misses;
                # `bench/RESULTS.md`, "Weights out of the safetensors mmap") than from malloc'd memory, which the worker asks to back with huge pages (malloc_env.py).
                state[name] = tensor.to(dtype, copy=True) if device.type == "cpu" else tensor.to(dtype)
    if sharding is not None:
        sharding.apply(model)
    model.load_state_dict(state, strict=True, assign=True)  # assign keeps requires_grad=False
    return model


def save_model(model: Transformer, folder: Path, max_shard_bytes: int | None = None) -> None:
    """Write config.json + safetensors; sharded (with an index) when over `max_shard_bytes`.
    Output is byte-for-byte deterministic for the same weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = model.config.to_hf_dict() | {"torch_dtype": str(model.dtype).removeprefix("torch.")}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}  # transformers expects this safetensors metadata
    if len(shards) == 1:
        save_file(shards[0], folder / SINGLE_FILE, metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata=meta)
        weight_map |= dict.fromkeys(shard, file)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
