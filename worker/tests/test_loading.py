"""HF-folder loading/saving, the built-in tiny models and the model registry."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from lathe_worker.errors import ModelNotFoundError, UserError
from lathe_worker.models import (TINY_MODELS, ModelConfig, ModelRegistry, Transformer, causal_padding_mask,
                                 load_model, materialize_tiny, save_model)
from lathe_worker.models.tiny import init_weights


def small(arch="llama", tie=False) -> Transformer:
    cfg = ModelConfig(architecture=arch, vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=8, rms_norm_eps=1e-5,
                      rope_theta=10000.0, rope_scaling=None, max_position_embeddings=64,
                      tie_word_embeddings=tie, qk_norm=arch == "qwen3", attention_bias=arch == "llama")
    m = Transformer(cfg)
    init_weights(m, seed=3)
    return m


def assert_same_weights(a: Transformer, b: Transformer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("arch,tie", [("llama", False), ("qwen3", True)])
def test_sharded_roundtrip(tmp_path, arch, tie):
    model = small(arch, tie)
    save_model(model, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(model.state_dict())
    assert ("lm_head.weight" in index["weight_map"]) != tie
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    assert_same_weights(model, loaded)
    assert all(not p.requires_grad for p in loaded.parameters())
    bf16 = load_model(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    ids = torch.randint(0, 50, (1, 4))
    out = bf16.lm_head_logits(bf16(ids, torch.arange(4)[None], causal_padding_mask(torch.tensor([4]), 4)))
    assert out.dtype == torch.bfloat16 and out.isfinite().all()


def test_single_file_roundtrip(tmp_path):
    model = small()
    save_model(model, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "model.safetensors.index.json").exists()
    assert_same_weights(model, load_model(tmp_path))


def test_missing_and_misshapen_tensors(tmp_path):
    save_model(small(), tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    name = "model.layers.1.mlp.up_proj.weight"

    save_file({k: v for k, v in tensors.items() if k != name}, path)
    with pytest.raises(UserError) as e:
        load_model(tmp_path)
    assert e.value.code == "model_tensor_missing" and name in e.value.message

    save_file(tensors | {name: torch.zeros(3, 3)}, path)
    with pytest.raises(UserError) as e:
        load_model(tmp_path)
    assert e.value.code == "model_tensor_shape" and name in e.value.message and "(3, 3)" in e.value.message

    save_file(tensors | {"model.layers.9.mlp.up_proj.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(UserError, match="model.layers.9.mlp.up_proj.weight"):
        load_model(tmp_path)

    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_model(tmp_path)

    path.unlink()
    with pytest.raises(UserError, match="model.safetensors"):
        load_model(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(UserError, match="config.json"):
        load_model(tmp_path)


def test_sharded_missing_tensor_names_it(tmp_path):
    save_model(small(), tmp_path, max_shard_bytes=20_000)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.norm.weight"
    shard = tmp_path / index["weight_map"][name]
    save_file({k: v for k, v in load_file(shard).items() if k != name}, shard)  # index still lists it
    with pytest.raises(UserError, match="model.norm.weight"):
        load_model(tmp_path)
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(UserError, match="model.norm.weight"):
        load_model(tmp_path)


def test_tiny_models_deterministic_and_loadable(tmp_path, models_dir):
    for name, vocab, tie in [("lathe/tiny-qwen3", 151936, True), ("lathe/tiny-llama3", 128256, False)]:
        a = materialize_tiny(name, models_dir)
        b = materialize_tiny(name, tmp_path / "other")
        assert a.name == b.name == name.replace("/", "__")
        files = sorted(p.name for p in a.iterdir())
        assert files == sorted(p.name for p in b.iterdir()) and "config.json" in files
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
        mtime = (a / "config.json").stat().st_mtime_ns
        assert materialize_tiny(name, models_dir) == a and (a / "config.json").stat().st_mtime_ns == mtime
        assert not [p for p in models_dir.iterdir() if p.name.startswith(".")]  # no temp dirs left

        model = load_model(ModelRegistry(models_dir, hf_cache=tmp_path / "hf").resolve(name))
        assert model.config == TINY_MODELS[name]
        assert model.config.vocab_size == vocab and model.config.tie_word_embeddings == tie
        ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
        with torch.no_grad():
            logits = model.lm_head_logits(model(ids, torch.arange(4)[None].expand(2, 4),
                                                causal_padding_mask(torch.tensor([4, 4]), 4)))
        assert logits.shape == (2, 4, vocab) and logits.isfinite().all()
        # Not degenerate: peaked, context-dependent next-token distributions.
        entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        assert (entropy < 0.7 * torch.log(torch.tensor(float(vocab)))).all()
        assert not torch.allclose(logits[0], logits[1], atol=1e-2)
    assert TINY_MODELS["lathe/tiny-llama3"].rope_scaling["rope_type"] == "llama3"


def test_registry_lookup(tmp_path):
    models, hf = tmp_path / "models", tmp_path / "hf"
    model = small()
    save_model(model, models / "org__flat")
    save_model(model, models / "org" / "nested")
    snap = hf / "models--org--cached" / "snapshots" / "abc123"
    save_model(model, snap)
    (hf / "models--org--cached" / "refs").mkdir()
    (hf / "models--org--cached" / "refs" / "main").write_text("abc123")
    save_model(model, tmp_path / "plain")

    reg = ModelRegistry(models, hf_cache=hf)
    assert reg.resolve("org/flat") == models / "org__flat"
    assert reg.resolve("org/nested") == models / "org" / "nested"
    assert reg.resolve("org/cached") == snap
    assert reg.resolve(str(tmp_path / "plain")) == tmp_path / "plain"
    assert_same_weights(model, load_model(reg.resolve("org/cached")))
    assert reg.list_local() == sorted(["org/flat", "org/nested", "org/cached", *TINY_MODELS])

    with pytest.raises(ModelNotFoundError) as e:
        reg.resolve("nobody/nothing")
    msg = e.value.message
    assert e.value.code == "unknown_model" and "nobody/nothing" in msg
    for place in [models / "nobody__nothing", models / "nobody" / "nothing", hf / "models--nobody--nothing"]:
        assert str(place) in msg


def test_registry_hub_layout_in_models_dir_and_described_folders(tmp_path):
    models, hf = tmp_path / "models", tmp_path / "hf"
    model = small()
    snap = models / "models--org--copied" / "snapshots" / "rev1"
    save_model(model, snap)
    save_model(model, tmp_path / "elsewhere")
    reg = ModelRegistry(models, hf_cache=hf)
    assert reg.resolve("org/copied") == snap
    assert "org/copied" in reg.list_local()
    # Extra names are described as given; ones that are not models are left out.
    names = [e["model_name"] for e in reg.catalogue([str(tmp_path / "elsewhere"), str(tmp_path / "nothing"), "org/copied"])]
    assert names.count("org/copied") == 1 and str(tmp_path / "elsewhere") in names
    assert str(tmp_path / "nothing") not in names


def test_default_hf_cache(monkeypatch, tmp_path):
    from lathe_worker.models.registry import default_hf_cache

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert str(default_hf_cache()).endswith(os.path.join(".cache", "huggingface", "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert default_hf_cache() == tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "x"))
    assert default_hf_cache() == tmp_path / "x"
    assert ModelRegistry(tmp_path).hf_cache == tmp_path / "x"
