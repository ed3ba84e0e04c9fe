"""Write a LoRA adapter as a PEFT-style folder (`adapter_model.safetensors` + `adapter_config.json`),
under one of two namings (`NAMINGS`) that differ only in the LM head's LoRA:

- "tinker" (the checkpoint archive): Tinker's archive names, `base_model.model.model.unembed_tokens.
  lora_{A,B}.weight` for the LM head, which the Tinker cookbook's merge (`weights.build_hf_model`) and
  adapter conversion expect: it maps `model.unembed_tokens` to `lm_head`, or to `model.embed_tokens`
  when the base ties its embeddings and so has no `lm_head.weight` (the old `lm_head` name failed there).
- "peft": `base_model.model.lm_head.lora_{A,B}.weight`, which `peft.PeftModel.from_pretrained` loads onto
  the transformers model of the same base (PEFT finds no module for `model.unembed_tokens`).

Other keys are PEFT's saved form in both, `base_model.model.<module_path>.lora_{A,B}.weight`; our scale
alpha/r (the adapter's own alpha, written as `lora_alpha`) is PEFT's default (non-rslora) scaling, so
the numbers carry over unchanged. `target_modules` lists the short module names ("q_proj", ..., "lm_head" or
"unembed_tokens"), which PEFT matches by suffix; that is exact because our adapters always target a
module kind in every layer.

Our LM-head LoRA acts on the output side only, also when the embeddings are tied. PEFT's 'lm_head' LoRA
is exactly that (PEFT logs a warning for the tied case, which is only about merging). A merge into the
tied matrix, as the cookbook does for tied bases, also moves the input embeddings by the same delta."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import UserError
from .lora import ATTN_TARGETS, MLP_TARGETS, UNEMBED_TARGET, LoraAdapter
from .models.config import ModelConfig

_KNOWN = (*ATTN_TARGETS, *MLP_TARGETS, UNEMBED_TARGET)
NAMINGS = ("tinker", "peft")
# The LM head's module path in Tinker's archives.
TINKER_UNEMBED = "model.unembed_tokens"


def _module_path(path: str, naming: str) -> str:
    return TINKER_UNEMBED if naming == "tinker" and path == UNEMBED_TARGET else path


def peft_state_dict(adapter: LoraAdapter, naming: str = "tinker") -> dict[str, torch.Tensor]:
    out = {}
    for path, a, b in adapter.named_factors():
        stem = f"base_model.model.{_module_path(path, naming)}"
        out[f"{stem}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        out[f"{stem}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    return out


def export_peft(adapter: LoraAdapter, base_model_name: str, config: ModelConfig, folder: Path,
                naming: str = "tinker") -> None:
    """Write `adapter` to `folder` under `naming` ("tinker": the archive; "peft": for PEFT).

    Example: `export_peft(adapter, "Qwen/Qwen3-0.6B", model.config, Path("out"), naming="peft")`
    """
    if naming not in NAMINGS:
        raise UserError("invalid_field", f"naming must be one of {list(NAMINGS)}, got {naming!r}")
    leaves = {path.rsplit(".", 1)[-1] for path, _, _ in adapter.named_factors()}
    if not leaves or not leaves <= set(_KNOWN):
        raise UserError("peft_export_unsupported",
                        f"cannot express LoRA targets {sorted(leaves)} as PEFT target_modules")
    # Suffix matching applies a name to every layer; refuse adapters that cover only some layers.
    per_leaf = {leaf: 0 for leaf in leaves}
    for path, _, _ in adapter.named_factors():
        per_leaf[path.rsplit(".", 1)[-1]] += 1
    partial = [leaf for leaf, n in per_leaf.items() if leaf != UNEMBED_TARGET and n != config.num_hidden_layers]
    if partial:
        raise UserError("peft_export_unsupported", f"LoRA on {partial} does not cover every layer")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(peft_state_dict(adapter, naming), folder / "adapter_model.safetensors", metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name,
        "r": adapter.config.rank,
        "lora_alpha": adapter.config.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "target_modules": [_module_path(t, naming).rsplit(".", 1)[-1] for t in _KNOWN if t in leaves],  # stable order
        "modules_to_save": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
