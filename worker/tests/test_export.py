"""Exports of a checkpoint archive: the PEFT renaming equals the worker's own PEFT export, and the merged
folder loads in transformers and gives our logits with the adapter (tied and untied bases)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from lathe_worker.errors import UserError
from lathe_worker.export import main, merge_into_base, to_peft
from lathe_worker.lora import LoraBatch, LoraConfig
from lathe_worker.models import causal_padding_mask, load_model
from lathe_worker.peft_export import export_peft

from test_peft_export import V, base_folder, random_adapter
from tolerance import assert_close_rel


def test_to_peft_equals_the_workers_peft_export(tmp_path):
    folder = base_folder(tmp_path, "qwen3")
    ours = load_model(folder)
    adapter = random_adapter(ours, LoraConfig(rank=4, seed=2))
    export_peft(adapter, "org/base", ours.config, tmp_path / "archive")
    export_peft(adapter, "org/base", ours.config, tmp_path / "direct", naming="peft")
    to_peft(tmp_path / "archive", tmp_path / "converted")
    got, want = load_file(tmp_path / "converted" / "adapter_model.safetensors"), load_file(tmp_path / "direct" / "adapter_model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((tmp_path / "converted" / "adapter_config.json").read_text()) == \
        json.loads((tmp_path / "direct" / "adapter_config.json").read_text())


@pytest.mark.parametrize("arch", ["qwen3", "llama"])  # tied embeddings, untied
def test_merged_folder_gives_our_logits_in_transformers(tmp_path, arch):
    folder = base_folder(tmp_path, arch)
    (folder / "tokenizer_config.json").write_text("{}\n")
    ours = load_model(folder)
    adapter = random_adapter(ours, LoraConfig(rank=8, seed=4))
    export_peft(adapter, "org/base", ours.config, tmp_path / "archive")
    assert main(["--adapter", str(tmp_path / "archive"), "--merged", str(tmp_path / "merged"), "--base", str(folder)]) == 0

    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False  # the LM-head LoRA must not move the input embeddings
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(9)[None].expand(2, 9)
    with torch.no_grad():
        ref = hf(input_ids=ids, position_ids=pos).logits
        mask = causal_padding_mask(torch.tensor([9, 9]), 9)
        got = ours.lm_head_logits(ours(ids, pos, mask, lora=LoraBatch.single(adapter, 2)), adapter)
        plain = ours.lm_head_logits(ours(ids, pos, mask))
    assert_close_rel(ref, got, rel=1e-5)
    assert (got - plain).abs().max() > 0.05  # the adapter matters, so the comparison means something
    # The input embeddings are the base's: only the output matrix moved.
    assert torch.equal(hf.model.embed_tokens.weight, load_file(folder / "model.safetensors")["model.embed_tokens.weight"])


def test_merge_refuses_a_non_empty_output_and_an_adapter_for_another_base(tmp_path):
    qwen = base_folder(tmp_path / "q", "qwen3")
    ours = load_model(qwen)
    export_peft(random_adapter(ours, LoraConfig(rank=2, seed=0)), "org/base", ours.config, tmp_path / "archive")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        merge_into_base(tmp_path / "archive", qwen, tmp_path / "busy")
    # An adapter with more layers than the base names the weights the base lacks.
    tensors = load_file(tmp_path / "archive" / "adapter_model.safetensors")
    extra = {k.replace("layers.1.", "layers.7."): v.clone() for k, v in tensors.items() if "layers.1." in k}
    save_file({**tensors, **extra}, tmp_path / "archive" / "adapter_model.safetensors")
    with pytest.raises(UserError, match=r"layers\.7"):
        merge_into_base(tmp_path / "archive", qwen, tmp_path / "out")
    assert not (tmp_path / "out").exists()
