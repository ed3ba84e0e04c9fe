"""Write a LoRA adapter as a PEFT folder (`adapter_model.safetensors` + `adapter_config.json`) that
`peft.PeftModel.from_pretrained` loads onto the transformers model of the same base.

Key names are PEFT's saved form, `base_model.model.<module_path>.lora_{A,B}.weight`; our scale
alpha/r with alpha = LORA_ALPHA is PEFT's default (non-rslora) scaling, so the numbers carry over
unchanged. `target_modules` lists the short module names ("q_proj", ..., "lm_head"), which PEFT
matches by suffix; that is exact because our adapters always target a module kind in every layer.

An 'lm_head' LoRA on a model with tied embeddings is supported: PEFT wraps the output `lm_head`
Linear only (the input embedding is untouched), which is exactly our semantics. PEFT logs a warning
for that case, which is only about merging the adapter into tied weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import UserError
from .lora import ATTN_TARGETS, LORA_ALPHA, MLP_TARGETS, UNEMBED_TARGET, LoraAdapter
from .models.config import ModelConfig

_KNOWN = (*ATTN_TARGETS, *MLP_TARGETS, UNEMBED_TARGET)


def peft_state_dict(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    out = {}
    for path, a, b in adapter.named_factors():
        out[f"base_model.model.{path}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        out[f"base_model.model.{path}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    return out


def export_peft(adapter: LoraAdapter, base_model_name: str, config: ModelConfig, folder: Path) -> None:
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
    save_file(peft_state_dict(adapter), folder / "adapter_model.safetensors", metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name,
        "r": adapter.config.rank,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "target_modules": [t for t in _KNOWN if t in leaves],  # stable order
        "modules_to_save": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
