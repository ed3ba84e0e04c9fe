"""Engine-level behaviour: batching many callers' items, gradient accumulation, isolation, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from lathe_worker.micro_batches import Datum, WorkItem
from lathe_worker.errors import UserError
from lathe_worker.lora import LoraConfig
from lathe_worker.optim import AdamParams

from small_model import make_engine, random_tokens, sft_item, write_small_model

from tolerance import assert_close_rel


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_small_model(tmp_path_factory.mktemp("small") / "model")


def perturb(engine, adapter_id: str, seed: int) -> None:
    """Give B non-zero values so adapters differ from the base model and from each other."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, b in engine.adapters[adapter_id].adapter.named_factors():
            b.copy_(torch.randn(b.shape, generator=gen) * 0.05)


def assert_grads_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Within 1e-5 relative to the tensor's largest entry: padding changes float32 summation order."""
    assert_close_rel(a, b, rel=1e-5)


def grads(engine, adapter_id: str) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else None for p in engine.adapters[adapter_id].adapter.parameters()]


def test_loss_falls_when_training(folder):
    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=8, seed=0))
    item = sft_item("a", random_tokens(20, 1))
    losses = []
    for _ in range(8):
        losses.append(engine.forward_backward([item], backward=True)[0]["metrics"]["loss:sum"])
        engine.optim_step("a", AdamParams(learning_rate=5e-3))
    assert losses[-1] < 0.5 * losses[0]


def test_mixed_batch_equals_separate_batches(folder):
    engine = make_engine(folder)
    configs = {"a": LoraConfig(rank=4, seed=1), "b": LoraConfig(rank=8, seed=2, train_mlp=False), "c": LoraConfig(rank=16, seed=3, train_attn=False)}
    for name, config in configs.items():
        engine.create_adapter(name, config)
        perturb(engine, name, seed=ord(name))
    # Interleaved on purpose: the engine must regroup rows by adapter.
    items = [sft_item(name, random_tokens(5 + 3 * i, i)) for i, name in enumerate(["c", "a", "b", "a"])]
    mixed = engine.forward_backward(items, backward=True)
    mixed_grads = {name: grads(engine, name) for name in configs}
    for name in configs:
        for p in engine.adapters[name].adapter.parameters():
            p.grad = None
    for i, item in enumerate(items):
        alone = engine.forward_backward([item], backward=True)[0]
        assert alone["metrics"]["loss:sum"] == pytest.approx(mixed[i]["metrics"]["loss:sum"], rel=1e-5)
        assert_close_rel(alone["loss_fn_outputs"][0]["logprobs"], mixed[i]["loss_fn_outputs"][0]["logprobs"], rel=1e-5)
    for name in configs:
        for separate, together in zip(grads(engine, name), mixed_grads[name]):
            assert_grads_close(separate, together)


def test_gradients_accumulate_until_optim_step(folder):
    one, two = make_engine(folder), make_engine(folder)
    for engine in (one, two):
        engine.create_adapter("a", LoraConfig(rank=4, seed=5))
    x, y = random_tokens(12, 10), random_tokens(9, 11)
    both = WorkItem("a", "cross_entropy", None, sft_item("a", x).data + sft_item("a", y).data)
    one.forward_backward([both], backward=True)
    two.forward_backward([sft_item("a", x)], backward=True)
    two.forward_backward([sft_item("a", y)], backward=True)
    for engine in (one, two):
        engine.optim_step("a", AdamParams(learning_rate=1e-2))
    for p, q in zip(one.adapters["a"].adapter.parameters(), two.adapters["a"].adapter.parameters()):
        assert_close_rel(p, q, rel=1e-5)


def test_micro_batches_give_the_same_gradients(folder):
    big, small = make_engine(folder), make_engine(folder, max_batch_tokens=16)
    items = [sft_item("a", random_tokens(10 + i, 20 + i)) for i in range(4)]
    for engine in (big, small):
        engine.create_adapter("a", LoraConfig(rank=4, seed=5))
        perturb(engine, "a", 3)
        engine.forward_backward(items, backward=True)
    for g, h in zip(grads(big, "a"), grads(small, "a")):
        assert_grads_close(g, h)


def test_an_item_is_cut_into_chunks_whose_logits_the_head_budget_keeps_with_the_same_gradients(folder):
    big = make_engine(folder)
    vocab = big.model.config.vocab_size
    # Logits of 40 tokens fit: four 19-token datums go two per chunk, each chunk keeping its logits.
    tight = make_engine(folder, head_logits_budget=40 * vocab * 4)
    items = [WorkItem("a", "cross_entropy", None, [d for k in range(4) for d in sft_item("a", random_tokens(20, 30 + k)).data])]
    assert [[len(c.datums) for c in micro] for micro in big._plan(items, [0])] == [[4]]
    plan = tight._plan(items, [0])
    assert [[len(c.datums) for c in micro] for micro in plan] == [[2], [2]]
    assert all(keep for micro in plan for chunk in micro for _, _, keep in chunk.runs)
    for engine in (big, tight):
        engine.create_adapter("a", LoraConfig(rank=4, seed=7))
        perturb(engine, "a", 3)
        engine.forward_backward(items, backward=True)
    for g, h in zip(grads(big, "a"), grads(tight, "a")):
        assert_grads_close(g, h)


def test_forward_touches_no_gradient(folder):
    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=4))
    out = engine.forward_backward([sft_item("a", random_tokens(8, 3))], backward=False)
    assert out[0]["loss_fn_outputs"][0]["logprobs"].shape == (7,)
    assert all(p.grad is None for p in engine.adapters["a"].adapter.parameters())
    assert not engine.adapters["a"].pending_grad


def test_optim_step_never_touches_another_adapter(folder):
    engine = make_engine(folder)
    for name in ("a", "b"):
        engine.create_adapter(name, LoraConfig(rank=4, seed=1))
        perturb(engine, name, 9)
    engine.forward_backward([sft_item("a", random_tokens(8, 1)), sft_item("b", random_tokens(8, 2))], backward=True)
    before = copy.deepcopy(list(engine.adapters["b"].adapter.parameters()))
    b_grads = grads(engine, "b")
    engine.optim_step("a", AdamParams(learning_rate=1e-1))
    for p, q in zip(engine.adapters["b"].adapter.parameters(), before):
        assert torch.equal(p, q)
    for g, h in zip(grads(engine, "b"), b_grads):
        assert torch.equal(g, h)  # b's pending gradient survives a's step


def test_base_model_rows_need_no_adapter(folder):
    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=4))
    base, fresh = engine.forward_backward([sft_item(None, random_tokens(8, 4)), sft_item("a", random_tokens(8, 4))], backward=False)
    # A fresh adapter (B = 0) is the base model.
    assert_close_rel(base["loss_fn_outputs"][0]["logprobs"], fresh["loss_fn_outputs"][0]["logprobs"], rel=1e-5)


def test_every_loss_runs_and_reports_the_forward_logprobs(folder):
    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=4))
    tokens = random_tokens(10, 6)
    reference = engine.forward_backward([sft_item("a", tokens)], backward=False)[0]["loss_fn_outputs"][0]["logprobs"]
    rl_inputs = {"logprobs": reference - 0.1, "advantages": torch.linspace(-1, 1, 9)}
    for loss_fn in ("importance_sampling", "ppo", "cispo", "dro"):
        out = engine.forward_backward([sft_item("a", tokens, loss_fn, **rl_inputs)], backward=True)[0]
        assert set(out) == {"loss_fn_outputs", "metrics"}, out
        assert_close_rel(out["loss_fn_outputs"][0]["logprobs"], reference, rel=1e-5)
        assert "loss:sum" in out["metrics"]


def test_soft_targets_return_n_by_k_logprobs(folder):
    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=4))
    tokens = torch.tensor(random_tokens(6, 8))
    targets = torch.tensor(random_tokens(15, 9)).reshape(5, 3)
    item = WorkItem("a", "cross_entropy", None, [Datum(tokens[:-1], {"target_tokens": targets, "weights": torch.full((5, 3), 1 / 3)})])
    out = engine.forward_backward([item], backward=True)[0]
    assert out["loss_fn_outputs"][0]["logprobs"].shape == (5, 3)


@pytest.mark.parametrize(
    "make_item, code",
    [
        (lambda: sft_item("nope", [1, 2, 3]), "unknown_adapter"),
        (lambda: sft_item("a", [512, 2, 3]), "token_out_of_vocab"),
        (lambda: sft_item("a", [1, 2, 512]), "invalid_loss_fn_input"),
        (lambda: sft_item("a", [1, -1, 3]), "token_out_of_vocab"),
        (lambda: sft_item("a", list(range(66))), "context_too_long"),
        (lambda: sft_item("a", [1, 2, 3], weights=torch.tensor([1.0, float("nan")])), None),
        (lambda: sft_item("a", [1, 2, 3], weights=torch.ones(3)), None),
        (lambda: sft_item("a", [1, 2, 3], "no_such_loss"), None),
        (lambda: WorkItem("a", "cross_entropy", None, []), "empty_batch"),
        (lambda: WorkItem("a", "cross_entropy", None, [Datum(torch.ones(2, 2, dtype=torch.long), {"target_tokens": torch.ones(2, dtype=torch.long)})]), "invalid_shape"),
    ],
)
def test_bad_items_fail_alone(folder, make_item, code):
    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=4))
    good = sft_item("a", random_tokens(8, 2))
    expected = engine.forward_backward([good], backward=False)[0]
    bad_result, good_result = engine.forward_backward([make_item(), good], backward=True)
    assert isinstance(bad_result, UserError)
    if code is not None:
        assert bad_result.code == code, bad_result.message
    assert bad_result.message
    assert_close_rel(good_result["loss_fn_outputs"][0]["logprobs"], expected["loss_fn_outputs"][0]["logprobs"], rel=1e-5)


def test_adapter_lifecycle_errors(folder):
    engine = make_engine(folder)
    engine.create_adapter("a", LoraConfig(rank=4))
    with pytest.raises(UserError, match="already exists"):
        engine.create_adapter("a", LoraConfig(rank=4))
    with pytest.raises(UserError, match="power of 2"):
        engine.create_adapter("b", LoraConfig(rank=3))
    engine.drop_adapter("a")
    with pytest.raises(UserError, match="unknown adapter"):
        engine.optim_step("a", AdamParams())
    with pytest.raises(UserError, match="holds"):
        engine.load_model("lathe/tiny-llama3")


def test_mixed_target_shapes_and_head_recompute_give_the_same_results(folder):
    """Datums of one item share LM-head passes when their targets have the same trailing shape; outputs
    are split back per datum. Keeping the logits (default budget) and recomputing them (budget 0) must
    give the same logprobs and gradients, equal to one call per datum."""
    items = []
    for n, k in ((7, None), (9, 3), (5, 3), (11, None), (6, None)):
        tokens = torch.tensor(random_tokens(n + 1, 40 + n))
        shape = (n,) if k is None else (n, k)
        targets = torch.randint(0, 512, shape, generator=torch.Generator().manual_seed(n))
        items.append(Datum(tokens[:-1], {"target_tokens": targets, "weights": torch.rand(shape, generator=torch.Generator().manual_seed(k or 0))}))
    runs = {}
    for name, kwargs in (("keep", {}), ("recompute", {"head_logits_budget": 0}), ("alone", {})):
        engine = make_engine(folder, **kwargs)
        engine.create_adapter("a", LoraConfig(rank=4, seed=5))
        perturb(engine, "a", 3)
        if name == "alone":
            outs = [engine.forward_backward([WorkItem("a", "cross_entropy", None, [d])], backward=True)[0] for d in items]
            lps = [o["loss_fn_outputs"][0]["logprobs"] for o in outs]
        else:
            out = engine.forward_backward([WorkItem("a", "cross_entropy", None, items)], backward=True)[0]
            lps = [o["logprobs"] for o in out["loss_fn_outputs"]]
        runs[name] = (lps, grads(engine, "a"))
    for name in ("recompute", "alone"):
        for got, want, d in zip(runs[name][0], runs["keep"][0], items):
            assert got.shape == d.inputs["target_tokens"].shape
            assert_close_rel(got, want, rel=1e-5)
        for g, h in zip(runs[name][1], runs["keep"][1]):
            assert_grads_close(g, h)


def test_a_call_that_fails_half_way_leaves_no_gradients_behind(folder, monkeypatch):
    """Micro-batch 2 of 2 fails (as on running out of memory): the gradients pending from the earlier call
    are exactly as before, and an adapter with none pending has none."""
    engine = make_engine(folder, max_batch_tokens=16)
    engine.create_adapter("a", LoraConfig(rank=4, seed=1))
    engine.create_adapter("b", LoraConfig(rank=4, seed=2))
    engine.forward_backward([sft_item("a", random_tokens(9, 1))], backward=True)
    pending = grads(engine, "a")
    real_run = engine._run_micro_batch
    calls = []

    def failing_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(engine, "_run_micro_batch", failing_run)
    items = [sft_item("a", random_tokens(12, 2)), sft_item("b", random_tokens(12, 3))]
    with pytest.raises(RuntimeError, match="simulated"):
        engine.forward_backward(items, backward=True)
    assert len(calls) == 2  # the first micro-batch did run its backward
    for got, want in zip(grads(engine, "a"), pending):
        assert torch.equal(got, want)
    assert all(g is None for g in grads(engine, "b"))


def test_an_unreadable_tokenizer_is_a_user_error_and_loads_nothing(folder, tmp_path):
    import shutil

    from lathe_worker.engine import Engine
    from lathe_worker.models.registry import ModelRegistry

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "tokenizer.json").write_text("{not json")
    engine = Engine(ModelRegistry(tmp_path / "models"))
    with pytest.raises(UserError) as info:
        engine.load_model(str(broken))
    assert info.value.code == "invalid_model_files" and "tokenizer.json" in info.value.message
    assert engine.model is None and engine.model_name is None


def rl_item(adapter: str, tokens: list[int], loss_fn: str, sampler_logprob: float) -> WorkItem:
    """An RL datum whose sampler log-probs are all `sampler_logprob` (advantage 1 on every token)."""
    full = torch.tensor(tokens)
    n = len(tokens) - 1
    inputs = {"target_tokens": full[1:], "logprobs": torch.full((n,), sampler_logprob), "advantages": torch.ones(n)}
    return WorkItem(adapter, loss_fn, None, [Datum(full[:-1], inputs)])


def test_an_item_packed_with_others_gets_the_bits_it_gets_alone(folder):
    """Bitwise: recovery replays each request alone, and must retrace the weights of the packed run."""
    def items():
        return [
            WorkItem("a", "cross_entropy", None, [sft_item("a", random_tokens(n, n)).data[0] for n in (9, 4, 12)]),
            sft_item("b", random_tokens(30, 5)),
            WorkItem("c", "cross_entropy", None, [sft_item("c", random_tokens(n, n)).data[0] for n in (12, 3)]),
        ]

    def fresh(**kwargs):
        engine = make_engine(folder, **kwargs)
        for seed, name in enumerate("abc"):
            engine.create_adapter(name, LoraConfig(rank=4, seed=seed))
        return engine

    # One micro-batch for all (widths differ); chunks cut by the token limit; head logits partly recomputed.
    for kwargs in ({}, {"max_batch_tokens": 24}, {"head_logits_budget": 20 * 512 * 4}):
        packed = fresh(**kwargs)
        together = packed.forward_backward(items(), backward=True)
        for index, name in enumerate("abc"):
            alone_engine = fresh(**kwargs)
            alone = alone_engine.forward_backward([items()[index]], backward=True)[0]
            assert alone["metrics"] == together[index]["metrics"]
            for x, y in zip(alone["loss_fn_outputs"], together[index]["loss_fn_outputs"]):
                assert torch.equal(x["logprobs"], y["logprobs"])
            for x, y in zip(grads(alone_engine, name), grads(packed, name)):
                assert torch.equal(x, y), name


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo"])
def test_a_non_finite_loss_fails_that_item_alone_and_leaves_every_gradient_as_it_was(folder, loss_fn):
    """A sampler log-prob of -3e38 passes validation (it is finite) but makes exp(lp - q) overflow."""
    engine = make_engine(folder)
    for name in ("a", "b"):
        engine.create_adapter(name, LoraConfig(rank=4, seed=ord(name)))
    engine.forward_backward([sft_item("a", random_tokens(6, 1))], backward=True)  # a holds a pending gradient
    pending = grads(engine, "a")
    good = sft_item("b", random_tokens(8, 2))
    poisoned, healthy = engine.forward_backward([rl_item("a", random_tokens(8, 3), loss_fn, -3e38), good], backward=True)
    assert isinstance(poisoned, UserError) and poisoned.code == "non_finite_loss", poisoned
    assert poisoned.category == "user"
    for x, y in zip(grads(engine, "a"), pending):
        assert torch.equal(x, y)
    reference = make_engine(folder)
    reference.create_adapter("b", LoraConfig(rank=4, seed=ord("b")))
    expected = reference.forward_backward([good], backward=True)[0]
    assert healthy["metrics"] == expected["metrics"]
    for x, y in zip(grads(engine, "b"), grads(reference, "b")):
        assert torch.equal(x, y)
    # The poisoned adapter trains on: its next step uses only the gradient it held before.
    engine.optim_step("a", AdamParams(learning_rate=1e-3))
    assert all(bool(p.isfinite().all()) for p in engine.adapters["a"].adapter.parameters())
