"""PEFT export: the "peft" folder, loaded by `peft.PeftModel` onto the transformers model of the same
base folder, gives the same logits as our model with the adapter; the "tinker" folder (the archive)
merged into the base by the Tinker cookbook's rule does too."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from lathe_worker.errors import UserError
from lathe_worker.lora import LoraAdapter, LoraBatch, LoraConfig
from lathe_worker.models import ModelConfig, Transformer, causal_padding_mask, load_model, save_model
from lathe_worker.models.tiny import init_weights
from lathe_worker.peft_export import export_peft

from tolerance import assert_close_rel

V = 89


def base_folder(tmp_path, arch: str):
    cfg = ModelConfig(architecture=arch, vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                      rope_theta=10000.0 if arch == "qwen3" else 500000.0,
                      rope_scaling=None if arch == "qwen3" else {
                          "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64},
                      max_position_embeddings=256, tie_word_embeddings=arch == "qwen3",
                      qk_norm=arch == "qwen3", attention_bias=False)
    model = Transformer(cfg)
    init_weights(model, seed=5)
    save_model(model, tmp_path / "base")
    return tmp_path / "base"


def random_adapter(model: Transformer, cfg: LoraConfig) -> LoraAdapter:
    adapter = LoraAdapter.create(model, cfg)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for _, a, b in adapter.named_factors():
            a.copy_(torch.randn(a.shape, generator=gen) * 0.1)
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return adapter


# PEFT warns when a LoRA sits on an lm_head tied to the embeddings; that only matters for merging.
@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
@pytest.mark.parametrize("arch,attn,mlp,unembed,alpha", [
    ("qwen3", True, True, False, 32),
    ("qwen3", True, True, True, 32),  # tied embeddings + lm_head LoRA
    ("llama", True, True, True, 32),
    ("llama", False, False, True, 32),
    ("llama", True, True, True, 12),  # an adapter's own alpha is what PEFT gets
])
def test_peft_logits_match(tmp_path, arch, attn, mlp, unembed, alpha):
    folder = base_folder(tmp_path, arch)
    ours = load_model(folder)
    adapter = random_adapter(ours, LoraConfig(rank=8, seed=1, train_attn=attn, train_mlp=mlp, train_unembed=unembed,
                                              alpha=alpha))
    export_peft(adapter, "org/base-model", ours.config, tmp_path / "peft", naming="peft")

    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 8
    assert cfg["lora_alpha"] == alpha and cfg["lora_dropout"] == 0 and cfg["bias"] == "none"
    assert cfg["base_model_name_or_path"] == "org/base-model" and cfg["fan_in_fan_out"] is False
    assert ("lm_head" in cfg["target_modules"]) == unembed and ("q_proj" in cfg["target_modules"]) == attn
    keys = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert len(keys) == 2 * len(list(adapter.named_factors()))
    assert ("base_model.model.lm_head.lora_B.weight" in keys) == unembed

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    n_lora = sum(1 for n, _ in peft_model.named_parameters() if "lora_" in n)
    assert n_lora == len(keys)  # every exported tensor landed on a module

    ids = torch.randint(0, V, (2, 7))
    pos = torch.arange(7)[None].expand(2, 7)
    with torch.no_grad():
        ref = peft_model(input_ids=ids, position_ids=pos).logits
        got = ours.lm_head_logits(ours(ids, pos, causal_padding_mask(torch.tensor([7, 7]), 7),
                                       lora=LoraBatch.single(adapter, 2)), adapter)
        plain = ours.lm_head_logits(ours(ids, pos, causal_padding_mask(torch.tensor([7, 7]), 7)))
    assert_close_rel(got, ref, rel=1e-5)
    assert (got - plain).abs().max() > 0.05  # the adapter matters, so the comparison means something


def cookbook_merge(base_state: dict[str, torch.Tensor], folder) -> dict[str, torch.Tensor]:
    """The merge of the Tinker cookbook (`weights.build_hf_model`), as we read it: keys lose their
    `base_model.model.` prefix, `model.unembed_tokens` becomes `lm_head` when the base has an
    `lm_head.weight` and `model.embed_tokens` when it does not (tied embeddings), and each target
    weight gains (lora_alpha / r) * B @ A. A key that names no base weight is an error."""
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    head = "lm_head" if "lm_head.weight" in base_state else "model.embed_tokens"
    merged = {k: v.clone() for k, v in base_state.items()}
    for name, a in tensors.items():
        if not name.endswith(".lora_A.weight"):
            continue
        b = tensors[name.replace(".lora_A.", ".lora_B.")]
        stem = name.removesuffix(".lora_A.weight").removeprefix("base_model.model.").replace("model.unembed_tokens", head)
        target = f"{stem}.weight"
        if target not in merged:
            raise KeyError(f"adapter weight {name} maps to {target}, which the base does not have")
        merged[target] += (config["lora_alpha"] / config["r"]) * (b.double() @ a.double()).float()
    return merged


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # untied, tied embeddings
def test_archive_merged_by_the_cookbook_rule_matches_the_engine(tmp_path, arch):
    folder = base_folder(tmp_path, arch)
    ours = load_model(folder)
    adapter = random_adapter(ours, LoraConfig(rank=8, seed=3))
    export_peft(adapter, "org/base-model", ours.config, tmp_path / "archive")
    keys = load_file(tmp_path / "archive" / "adapter_model.safetensors")
    assert {"base_model.model.model.unembed_tokens.lora_A.weight", "base_model.model.model.unembed_tokens.lora_B.weight"} <= set(keys)
    assert not any("lm_head" in k for k in keys)
    assert "unembed_tokens" in json.loads((tmp_path / "archive" / "adapter_config.json").read_text())["target_modules"]

    base_state = load_file(folder / "model.safetensors")
    assert ("lm_head.weight" in base_state) == (arch == "llama")
    (tmp_path / "merged").mkdir()
    shutil.copy(folder / "config.json", tmp_path / "merged" / "config.json")
    save_file(cookbook_merge(base_state, tmp_path / "archive"), tmp_path / "merged" / "model.safetensors")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32, attn_implementation="eager").eval()

    ids = torch.randint(0, V, (2, 7))
    pos = torch.arange(7)[None].expand(2, 7)
    with torch.no_grad():
        got = ours.lm_head_logits(ours(ids, pos, causal_padding_mask(torch.tensor([7, 7]), 7),
                                       lora=LoraBatch.single(adapter, 2)), adapter)
        plain = ours.lm_head_logits(ours(ids, pos, causal_padding_mask(torch.tensor([7, 7]), 7)))
        assert (got - plain).abs().max() > 0.05  # the adapter matters
        if arch == "qwen3":
            # Tied: the cookbook adds the LM head's delta to the one shared matrix, so the input
            # embeddings move too; our LoRA acts on the output side only. With the input embeddings
            # put back, the merged model is ours.
            assert (merged(input_ids=ids, position_ids=pos).logits - got).abs().max() > 1e-3
            merged.model.embed_tokens.weight = torch.nn.Parameter(base_state["model.embed_tokens.weight"].clone())
        ref = merged(input_ids=ids, position_ids=pos).logits
    assert_close_rel(got, ref, rel=1e-5)


def test_partial_layers_refused(tmp_path):
    folder = base_folder(tmp_path, "llama")
    model = load_model(folder)
    adapter = LoraAdapter(LoraConfig(rank=2), {"model.layers.0.self_attn.q_proj": (32, 32)})
    with pytest.raises(UserError, match="every layer"):
        export_peft(adapter, "x", model.config, tmp_path / "out")
