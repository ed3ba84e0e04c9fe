"""Adapter checkpoints: exact resume with optimizer state, and clear errors."""

from __future__ import annotations

import pytest
import torch

from lathe_worker.adapter_slot import AdapterSlot
from lathe_worker.errors import UserError
from lathe_worker.lora import LoraAdapter, LoraConfig
from lathe_worker.optim import AdamParams, DimuonParams

from small_model import make_engine, random_tokens, sft_item, write_small_model

from tolerance import assert_close_rel


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_small_model(tmp_path_factory.mktemp("small") / "model")


def train(engine, adapter, steps, seed=0, params=AdamParams(learning_rate=1e-2, grad_clip_norm=1.0)):
    losses = []
    for step in range(steps):
        item = sft_item(adapter, random_tokens(12, seed + step))
        losses.append(engine.forward_backward([item], backward=True)[0]["metrics"]["loss:sum"])
        engine.optim_step(adapter, params)
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
    assert losses == pytest.approx(expected, rel=1e-5)
    for p, q in zip(straight.adapters["a"].adapter.parameters(), second.adapters["resumed"].adapter.parameters()):
        assert_close_rel(p, q, rel=1e-5)


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


def _rewrite(path, drop: str | None = None, metadata: dict | None = None) -> None:
    """Rewrite a saved adapter file without tensor `drop`, or with other metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    file = path / "adapter.safetensors"
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
    tensors = {k: v for k, v in load_file(str(file)).items() if k != drop}
    save_file(tensors, str(file), metadata=meta if metadata is None else metadata)


def test_damaged_checkpoints_are_user_errors_and_leave_the_slot_alone(folder, tmp_path):
    import shutil

    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=4, seed=1))
    train(engine, "a", 1)
    engine.save_adapter("a", tmp_path / "good", include_optimizer=True)
    train(engine, "a", 1, seed=5)  # the live slot now differs from every checkpoint below
    before = [p.detach().clone() for p in engine.adapters["a"].adapter.parameters()]

    cases = {}
    for name in ("no_config", "bad_config", "no_lora_b", "bad_optimizer", "wrong_optimizer"):
        shutil.copytree(tmp_path / "good", tmp_path / name)
        cases[name] = tmp_path / name
    _rewrite(cases["no_config"], metadata={"format": "pt"})
    _rewrite(cases["bad_config"], metadata={"lora_config": '{"rank": 4, "colour": "red"}'})
    _rewrite(cases["no_lora_b"], drop="lm_head.lora_B")
    (cases["bad_optimizer"] / "optimizer.safetensors").write_bytes(b"garbage")
    other = make_engine(folder)
    other.create_adapter("b", LoraConfig(rank=8))
    train(other, "b", 1)
    other.save_adapter("b", tmp_path / "rank8", include_optimizer=True)
    shutil.copy(tmp_path / "rank8" / "optimizer.safetensors", cases["wrong_optimizer"] / "optimizer.safetensors")

    expected = {"no_config": "checkpoint_corrupt", "bad_config": "checkpoint_corrupt", "no_lora_b": "checkpoint_mismatch",
                "bad_optimizer": "checkpoint_corrupt", "wrong_optimizer": None}
    for name, code in expected.items():
        with pytest.raises(UserError) as info:
            engine.load_adapter("a", cases[name], include_optimizer=True)
        assert code is None or info.value.code == code, (name, info.value)
        after = [p.detach() for p in engine.adapters["a"].adapter.parameters()]
        assert all(torch.equal(x, y) for x, y in zip(before, after)), name  # the live slot is untouched


DIMUON = {"type": "dimuon", "version": 1}
DIMUON_STEP = DimuonParams(learning_rate=2e-2, grad_clip_norm=1.0)


def test_dimuon_adapter_trains(folder):
    engine = make_engine(folder)
    reply = engine.create_adapter("d", LoraConfig(rank=8, seed=2), optimizer=DIMUON)
    assert reply["optimizer"] == DIMUON
    assert [a["optimizer"] for a in engine.stats()["adapters"]] == [DIMUON]
    tokens = random_tokens(16, 40)
    losses = []
    for _ in range(8):  # one fixed batch: an SFT loop must drive its loss down
        losses.append(engine.forward_backward([sft_item("d", tokens)], backward=True)[0]["metrics"]["loss:sum"])
        metrics = engine.optim_step("d", DIMUON_STEP)["metrics"]
        assert metrics["grad_norm:mean"] > 0
    assert losses[-1] < 0.7 * losses[0], losses
    with pytest.raises(UserError, match="adam_params: this adapter uses the dimuon optimizer") as info:
        engine.optim_step("d", AdamParams())
    assert info.value.code == "optimizer_mismatch"


def test_dimuon_resume_with_optimizer_matches_an_uninterrupted_run(folder, tmp_path):
    straight = make_engine(folder)
    straight.create_adapter("a", LoraConfig(rank=8, seed=3), optimizer=DIMUON)
    expected = train(straight, "a", 3, params=DIMUON_STEP) + train(straight, "a", 3, seed=3, params=DIMUON_STEP)

    first = make_engine(folder)
    first.create_adapter("a", LoraConfig(rank=8, seed=3), optimizer=DIMUON)
    losses = train(first, "a", 3, params=DIMUON_STEP)
    first.save_adapter("a", tmp_path / "ckpt", include_optimizer=True)

    second = make_engine(folder)
    info = second.load_adapter("resumed", tmp_path / "ckpt", include_optimizer=True)  # the kind comes from the file
    assert info["optimizer"] == DIMUON
    losses += train(second, "resumed", 3, seed=3, params=DIMUON_STEP)
    assert losses == pytest.approx(expected, rel=1e-5)
    for p, q in zip(straight.adapters["a"].adapter.parameters(), second.adapters["resumed"].adapter.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_optimizer_kind_on_load(folder, tmp_path):
    engine = make_engine(folder)
    engine.create_adapter("adam", LoraConfig(rank=4))
    engine.create_adapter("dimuon", LoraConfig(rank=4), optimizer=DIMUON)
    train(engine, "adam", 1)
    train(engine, "dimuon", 1, params=DIMUON_STEP)
    engine.save_adapter("adam", tmp_path / "adam", include_optimizer=True)
    engine.save_adapter("dimuon", tmp_path / "dimuon", include_optimizer=True)

    # AdamW state into a Dimuon adapter: a new slot asked to be Dimuon, or an existing Dimuon slot.
    for target, requested in (("new", DIMUON), ("dimuon", None)):
        with pytest.raises(UserError, match=r"holds adamw optimizer state, which cannot be loaded into an adapter that uses dimuon") as e:
            engine.load_adapter(target, tmp_path / "adam", include_optimizer=True, optimizer=requested)
        assert e.value.code == "optimizer_mismatch" and "optimizer: " in e.value.message
    assert "new" not in engine.adapters and engine.adapters["dimuon"].optimizer.kind == "dimuon"
    # An existing slot keeps its kind, even for a weights-only load.
    with pytest.raises(UserError, match="adapter 'adam' uses the adamw optimizer, which cannot change"):
        engine.load_adapter("adam", tmp_path / "dimuon", include_optimizer=False, optimizer=DIMUON)
    assert engine.load_adapter("adam", tmp_path / "dimuon", include_optimizer=False)["optimizer"] == {"type": "adamw"}
    # Weights only into a new slot: the requested kind with fresh state, AdamW by default.
    assert engine.load_adapter("fresh", tmp_path / "adam", include_optimizer=False, optimizer=DIMUON)["optimizer"] == DIMUON
    assert engine.adapters["fresh"].optimizer.state_dict() == {}
    train(engine, "fresh", 1, params=DIMUON_STEP)
    assert engine.load_adapter("plain", tmp_path / "dimuon", include_optimizer=False)["optimizer"] == {"type": "adamw"}


def test_optimizer_state_saved_before_dimuon_loads_as_adamw(folder, tmp_path):
    """A state file without the optimizer entry (written before Dimuon existed) is AdamW's."""
    from safetensors.torch import load_file, save_file

    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=4))
    train(engine, "a", 1)
    engine.save_adapter("a", tmp_path / "old", include_optimizer=True)
    file = tmp_path / "old" / "optimizer.safetensors"
    save_file(load_file(str(file)), str(file), metadata={"format_version": "1"})
    assert engine.load_adapter("b", tmp_path / "old", include_optimizer=True)["optimizer"] == {"type": "adamw"}
    with pytest.raises(UserError, match="adamw optimizer state"):
        engine.load_adapter("c", tmp_path / "old", include_optimizer=True, optimizer=DIMUON)


def test_adapter_alpha_round_trips_and_old_checkpoints_keep_the_default(folder, tmp_path):
    """A checkpoint records its adapter's alpha in a metadata key of its own; one written before that
    key existed loads with the default alpha (32), the only one there was."""
    from safetensors import safe_open

    engine = make_engine(folder)
    engine.adapters["a"] = AdapterSlot.fresh(LoraAdapter.create(engine.model, LoraConfig(rank=4, seed=2, alpha=6.0)))
    train(engine, "a", 1)
    engine.save_adapter("a", tmp_path / "custom", include_optimizer=False)
    info = engine.load_adapter("b", tmp_path / "custom", include_optimizer=False)
    assert "alpha" not in info["lora"]  # the wire form stays Tinker's LoraConfig
    assert engine.adapters["b"].adapter.config.alpha == 6.0 and engine.adapters["b"].adapter.scale == 1.5
    for p, q in zip(engine.adapters["a"].adapter.parameters(), engine.adapters["b"].adapter.parameters()):
        assert torch.equal(p, q)

    engine.create_adapter("plain", LoraConfig(rank=4, seed=2))
    engine.save_adapter("plain", tmp_path / "old", include_optimizer=False)
    with safe_open(str(tmp_path / "old" / "adapter.safetensors"), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "lora_alpha"}
    _rewrite(tmp_path / "old", metadata=meta)
    engine.load_adapter("c", tmp_path / "old", include_optimizer=False)
    assert engine.adapters["c"].adapter.config.alpha == 32 and engine.adapters["c"].adapter.scale == 8.0

    _rewrite(tmp_path / "custom", metadata={**meta, "lora_alpha": "-1"})
    with pytest.raises(UserError) as bad:
        engine.load_adapter("d", tmp_path / "custom", include_optimizer=False)
    assert bad.value.code == "invalid_lora_alpha"
