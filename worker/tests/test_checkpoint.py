"""Adapter checkpoints: exact resume with optimizer state, and clear errors."""

from __future__ import annotations

import pytest
import torch

from lathe_worker.errors import UserError
from lathe_worker.lora import LoraConfig
from lathe_worker.optim import AdamParams

from small_model import make_engine, random_tokens, sft_item, write_small_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_small_model(tmp_path_factory.mktemp("small") / "model")


def train(engine, adapter, steps, seed=0):
    losses = []
    for step in range(steps):
        item = sft_item(adapter, random_tokens(12, seed + step))
        losses.append(engine.forward_backward([item], backward=True)[0]["metrics"]["loss:sum"])
        engine.optim_step(adapter, AdamParams(learning_rate=1e-2, grad_clip_norm=1.0))
    return losses


def test_resume_with_optimizer_matches_an_uninterrupted_run(folder, tmp_path):
    straight = make_engine(folder)
    straight.create_adapter("a", LoraConfig(rank=8, seed=3, train_unembed=True))
    expected = train(straight, "a", 3) + train(straight, "a", 3, seed=3)

    first = make_engine(folder)
    first.create_adapter("a", LoraConfig(rank=8, seed=3, train_unembed=True))
    losses = train(first, "a", 3)
    first.save_adapter("a", tmp_path / "ckpt", include_optimizer=True)

    second = make_engine(folder)
    info = second.load_adapter("resumed", tmp_path / "ckpt", include_optimizer=True)
    assert info["lora"]["rank"] == 8
    losses += train(second, "resumed", 3, seed=3)
    assert losses == pytest.approx(expected, abs=1e-5)
    for p, q in zip(straight.adapters["a"].adapter.parameters(), second.adapters["resumed"].adapter.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


def test_weights_only_load_restarts_the_optimizer(folder, tmp_path):
    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=4))
    train(engine, "a", 2)
    engine.save_adapter("a", tmp_path / "weights", include_optimizer=False)
    with pytest.raises(UserError, match="without optimizer state"):
        engine.load_adapter("b", tmp_path / "weights", include_optimizer=True)
    engine.load_adapter("b", tmp_path / "weights", include_optimizer=False)
    for p, q in zip(engine.adapters["a"].adapter.parameters(), engine.adapters["b"].adapter.parameters()):
        assert torch.equal(p, q)
    train(engine, "b", 1)  # the fresh optimizer state works


def test_load_errors_name_the_problem(folder, tmp_path):
    engine = make_engine(folder)
    with pytest.raises(UserError, match="no adapter checkpoint"):
        engine.load_adapter("x", tmp_path / "missing", include_optimizer=False)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "adapter.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot read"):
        engine.load_adapter("x", tmp_path / "corrupt", include_optimizer=False)
    engine.create_adapter("a", LoraConfig(rank=4))
    engine.create_adapter("wrong_rank", LoraConfig(rank=8))
    engine.save_adapter("a", tmp_path / "ok", include_optimizer=True)
    # Loading into an existing slot replaces it (Tinker's load_state on a live training client).
    engine.load_adapter("wrong_rank", tmp_path / "ok", include_optimizer=True)
    assert engine.adapters["wrong_rank"].adapter.config.rank == 4
