"""The ops `test_tensor_parallel.py` runs once in a single process and once on every rank of a
tensor-parallel gloo group, recording what each computed.

As a script (one process of the group): `python tp_scenario.py MODEL_FOLDER OUT_DIR STORE_FILE RANK WORLD`
joins the group through a file store (no port to race for), runs the scenario on a sharded engine and
writes `OUT_DIR/rank{RANK}.pt`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lathe_worker.engine import Engine  # noqa: E402
from lathe_worker.lora import LoraConfig  # noqa: E402
from lathe_worker.models.registry import ModelRegistry  # noqa: E402
from lathe_worker.optim import AdamParams  # noqa: E402
from lathe_worker.sample_request import SampleRequest, SamplingParams  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_model import random_tokens, sft_item  # noqa: E402

ADAPTERS = {"a": LoraConfig(rank=4, seed=1, train_unembed=True), "b": LoraConfig(rank=8, seed=2, train_mlp=False)}


def _grads(engine: Engine) -> dict[str, torch.Tensor]:
    return {f"{aid}.{name}": p.grad.detach().clone() for aid, slot in engine.adapters.items()
            for name, p in slot.adapter.named_parameters() if p.grad is not None}


def _weights(engine: Engine) -> dict[str, torch.Tensor]:
    return {f"{aid}.{name}": p.detach().clone() for aid, slot in engine.adapters.items()
            for name, p in slot.adapter.named_parameters()}


def _train_step(engine: Engine, step: int) -> dict[str, Any]:
    items = [sft_item("a", random_tokens(12, 10 * step + 1)), sft_item("a", random_tokens(7, 10 * step + 2)),
             sft_item("b", random_tokens(9, 10 * step + 3)), sft_item(None, random_tokens(5, 10 * step + 4))]
    results = engine.forward_backward(items, backward=True)
    out = {"loss": [r["metrics"]["loss:sum"] for r in results],
           "logprobs": [r["loss_fn_outputs"][0]["logprobs"] for r in results],
           "grads": _grads(engine)}
    for aid in ADAPTERS:
        engine.optim_step(aid, AdamParams(learning_rate=2e-2))
    out["weights"] = _weights(engine)
    return out


def run(engine: Engine) -> dict[str, Any]:
    """Two training steps on two adapters (and a base-model row), then greedy and seeded sampling."""
    for aid, config in ADAPTERS.items():
        engine.create_adapter(aid, config)
    record: dict[str, Any] = {"steps": [_train_step(engine, step) for step in range(2)]}
    requests = [
        SampleRequest("a", torch.tensor(random_tokens(6, 91)), 2, SamplingParams(max_tokens=8, temperature=0.0),
                      prompt_logprobs=True),
        SampleRequest("b", torch.tensor(random_tokens(4, 92)), 2, SamplingParams(max_tokens=8, seed=5)),
        SampleRequest(None, torch.tensor(random_tokens(3, 93)), 1, SamplingParams(max_tokens=6, seed=6, top_k=20)),
    ]
    results = engine.sample(requests)
    record["samples"] = [
        {"tokens": [s["tokens"] for s in r["sequences"]], "logprobs": [s["logprobs"] for s in r["sequences"]],
         "prompt_logprobs": r.get("prompt_logprobs")}
        for r in results
    ]
    return record


def main() -> None:
    folder, out_dir, store, rank, world = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    import torch.distributed as dist

    from lathe_worker.parallel import TensorParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        engine = Engine(ModelRegistry(Path(folder).parent / "models"), sharding=TensorParallel.from_default_group())
        engine.load_model(folder)
        shapes = {name: tuple(p.shape) for name, p in engine.model.named_parameters()}
        torch.save({"record": run(engine), "shapes": shapes}, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
