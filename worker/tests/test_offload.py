"""Adapter placement under capacity limits: idle adapters move device -> host -> disk and come back
bit-identically (weights, pending gradients, optimizer state) on their next op."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lathe_worker.errors import UserError
from lathe_worker.lora import LoraConfig
from lathe_worker.optim import AdamParams, DimuonParams
from lathe_worker.placement import slot_tensors
from lathe_worker.sample_request import SampleRequest, SamplingParams

from small_model import make_engine, random_tokens, sft_item, write_small_model

OTHERS = ["y", "z", "w"]
STEP = {"adamw": AdamParams(learning_rate=1e-2), "dimuon": DimuonParams(learning_rate=1e-2)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_small_model(tmp_path_factory.mktemp("small") / "model")


def limited(folder, tmp_path, resident: int = 1, host: int = 1):
    return make_engine(folder, max_resident_adapters=resident, max_host_adapters=host, spill_dir=tmp_path / "spill")


def train_step(engine, adapter: str, seed: int, kind: str) -> float:
    loss = engine.forward_backward([sft_item(adapter, random_tokens(24, seed))], backward=True)[0]["metrics"]["loss:sum"]
    engine.optim_step(adapter, STEP[kind])
    return loss


def snapshot(engine, adapter: str) -> dict[str, torch.Tensor]:
    with engine.placement.using([adapter]):
        return {k: t.detach().cpu().clone() for k, t in slot_tensors(engine.adapters[adapter]).items()}


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kind", ["adamw", "dimuon"])
def test_evicted_adapter_trains_bit_identically(folder, tmp_path, kind):
    plain, tight = make_engine(folder), limited(folder, tmp_path)
    for engine in (plain, tight):
        for name in ["x", *OTHERS]:
            engine.create_adapter(name, LoraConfig(rank=4, seed=ord(name)), {"type": kind})
    losses: dict[int, list[float]] = {id(plain): [], id(tight): []}
    for step in range(3):
        for engine in (plain, tight):
            losses[id(engine)].append(train_step(engine, "x", step, kind))
            for i, other in enumerate(OTHERS):  # pushes x to host, then to disk
                train_step(engine, other, 100 + i, kind)
        assert tight.placement.tier("x") == "disk"
    assert losses[id(plain)] == losses[id(tight)]
    assert_bitwise(snapshot(plain, "x"), snapshot(tight, "x"))


def test_pending_gradients_survive_a_trip_to_disk(folder, tmp_path):
    plain, tight = make_engine(folder), limited(folder, tmp_path, host=0)
    for engine in (plain, tight):
        for name in ["x", "y"]:
            engine.create_adapter(name, LoraConfig(rank=4, seed=ord(name)))
        train_step(engine, "x", 0, "adamw")  # so that optimizer state exists too
        engine.forward_backward([sft_item("x", random_tokens(24, 1))], backward=True)
        engine.forward_backward([sft_item("y", random_tokens(24, 2))], backward=True)
    assert tight.placement.tier("x") == "disk" and tight.adapters["x"].pending_grad
    before = snapshot(tight, "x")
    assert any(k.startswith("grad.") for k in before)
    assert_bitwise(before, snapshot(plain, "x"))
    for engine in (plain, tight):
        engine.optim_step("x", STEP["adamw"])
    assert_bitwise(snapshot(plain, "x"), snapshot(tight, "x"))


def test_a_batch_may_use_more_adapters_than_the_limit(folder, tmp_path):
    plain, tight = make_engine(folder), limited(folder, tmp_path)
    names = ["x", *OTHERS]
    for engine in (plain, tight):
        for name in names:
            engine.create_adapter(name, LoraConfig(rank=4, seed=ord(name)))
    items = [sft_item(name, random_tokens(16, i)) for i, name in enumerate(names)]
    outcomes = [engine.forward_backward(items, backward=True) for engine in (plain, tight)]
    for a, b in zip(*outcomes):
        assert a["metrics"] == b["metrics"]
    stats = tight.stats()["placement"]
    assert (stats["device"]["adapters"], stats["host"]["adapters"], stats["disk"]["adapters"]) == (1, 1, 2)
    for name in names:
        assert_bitwise(snapshot(plain, name), snapshot(tight, name))


def test_sample_save_and_stats_of_a_spilled_adapter(folder, tmp_path):
    plain, tight = make_engine(folder), limited(folder, tmp_path, host=0)
    for engine in (plain, tight):
        for name in ["x", "y"]:
            engine.create_adapter(name, LoraConfig(rank=4, seed=ord(name)))
        train_step(engine, "x", 0, "adamw")
        train_step(engine, "y", 1, "adamw")
    stats = tight.stats()
    assert {a["adapter"]: a["tier"] for a in stats["adapters"]} == {"x": "disk", "y": "device"}
    assert stats["adapters"][0]["num_params"] == plain.stats()["adapters"][0]["num_params"] > 0
    size = sum(t.numel() * t.element_size() for t in snapshot(plain, "x").values())
    assert stats["placement"]["disk"] == {"adapters": 1, "bytes": size}
    assert stats["placement"]["limits"] == {"max_resident_adapters": 1, "max_host_adapters": 0}
    assert len(list((tmp_path / "spill").iterdir())) == 1

    def sample(engine):
        request = SampleRequest("x", torch.tensor(random_tokens(8, 3)), 2, SamplingParams(max_tokens=6, seed=5))
        return engine.sample([request])[0]["sequences"]

    assert sample(plain) == sample(tight)
    for engine in (plain, tight):
        train_step(engine, "y", 2, "adamw")  # x goes back to disk
    assert tight.placement.tier("x") == "disk"
    for engine, out in ((plain, tmp_path / "plain"), (tight, tmp_path / "tight")):
        engine.save_adapter("x", out, include_optimizer=True)
    for file in ("adapter.safetensors", "optimizer.safetensors"):  # (metadata order varies, so not the bytes)
        assert_bitwise(load_file(tmp_path / "plain" / file), load_file(tmp_path / "tight" / file))
    tight.drop_adapter("x")
    tight.drop_adapter("y")
    assert list((tmp_path / "spill").iterdir()) == []
    assert tight.stats()["placement"]["disk"] == {"adapters": 0, "bytes": 0}


def test_a_failed_spill_keeps_the_adapter_in_host_memory(folder, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    engine = make_engine(folder, max_resident_adapters=1, max_host_adapters=0, spill_dir=blocker)
    engine.create_adapter("x", LoraConfig(rank=4, seed=1))
    engine.create_adapter("y", LoraConfig(rank=4, seed=2))  # x cannot be written to disk
    assert engine.placement.tier("x") == "host"
    assert train_step(engine, "x", 0, "adamw") > 0


def test_unreadable_spill_file_is_a_clear_error(folder, tmp_path):
    engine = limited(folder, tmp_path, host=0)
    engine.create_adapter("x", LoraConfig(rank=4, seed=1))
    engine.create_adapter("y", LoraConfig(rank=4, seed=2))
    (spilled,) = (tmp_path / "spill").iterdir()
    spilled.write_bytes(b"garbage")
    with pytest.raises(UserError) as caught:
        engine.forward_backward([sft_item("x", random_tokens(8, 0))], backward=True)
    assert caught.value.code == "adapter_unavailable" and "'x'" in caught.value.message


def test_limits_are_validated(folder):
    with pytest.raises(ValueError, match="max_device must be at least 1"):
        make_engine(folder, max_resident_adapters=0)
    with pytest.raises(ValueError, match="max_host must be at least 0"):
        make_engine(folder, max_host_adapters=-1)


def test_close_removes_the_private_spill_folder(folder):
    engine = make_engine(folder, max_resident_adapters=1, max_host_adapters=0)
    engine.create_adapter("x", LoraConfig(rank=4, seed=1))
    engine.create_adapter("y", LoraConfig(rank=4, seed=2))
    spill_dir = engine.placement.spill_dir
    assert spill_dir is not None and len(list(spill_dir.iterdir())) == 1
    engine.placement.close()
    assert not spill_dir.exists()
