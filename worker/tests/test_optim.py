"""AdapterOptimizer against plain torch.optim.AdamW (+ clip_grad_norm_), isolation, state round trip."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch
from torch import nn

from lathe_worker.errors import UserError
from lathe_worker.optim import AdamParams, AdapterOptimizer

SCHEDULE = [  # hyperparameters change between steps; clipping both binding and not
    AdamParams(learning_rate=1e-2),
    AdamParams(learning_rate=5e-3, beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=0.1, grad_clip_norm=0.5),
    AdamParams(learning_rate=2e-2, weight_decay=0.01, grad_clip_norm=100.0),
    AdamParams(learning_rate=0.0, beta1=0.5),
    AdamParams(learning_rate=1e-3, beta2=0.9, grad_clip_norm=0.1),
]


def _params(seed: int) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(4, 3, generator=g)), nn.Parameter(torch.randn(3, generator=g))]


def _accumulate(params, step: int, micro: int = 3) -> None:
    """Several backward passes into .grad, like forward_backward calls before one optim_step."""
    for m in range(micro):
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(100 * step + m))
        ((x @ params[0].T).tanh().sum() * (step + 1) + (params[1] ** 3).sum()).backward()


def _reference_step(opt: torch.optim.AdamW, params, hp: AdamParams) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, hp.grad_clip_norm if hp.grad_clip_norm > 0 else math.inf)
    opt.param_groups[0].update(lr=hp.learning_rate, betas=(hp.beta1, hp.beta2), eps=hp.eps,
                               weight_decay=hp.weight_decay)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


def _run(params, opt, steps):
    metrics = []
    for i, hp in steps:
        _accumulate(params, i)
        metrics.append(opt.step(hp))
        assert all(p.grad is None for p in params)
    return metrics


def test_matches_torch_adamw_with_clipping_and_changing_hparams():
    ours, ref = _params(0), _params(0)
    opt = AdapterOptimizer(ours)
    ref_opt = torch.optim.AdamW(ref, lr=1.0)
    for i, hp in enumerate(SCHEDULE):
        _accumulate(ours, i)
        _accumulate(ref, i)
        m = opt.step(hp)
        ref_norm = _reference_step(ref_opt, ref, hp)
        assert m["grad_norm:mean"] == pytest.approx(ref_norm, rel=1e-6)
        assert m["learning_rate:mean"] == hp.learning_rate and all(k.count(":") == 1 for k in m)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(ours, _params(0)))  # it did train


def test_two_adapters_are_independent():
    pa, pb = _params(1), _params(2)
    oa, ob = AdapterOptimizer(pa), AdapterOptimizer(pb)
    b_before = [p.detach().clone() for p in pb]
    _run(pa, oa, enumerate(SCHEDULE[:2]))
    assert all(torch.equal(p, q) for p, q in zip(pb, b_before)) and ob.state_dict() == {}
    # b's own steps equal a fresh optimizer on the same data: a's state never leaked in
    solo = _params(2)
    _run(pb, ob, enumerate(SCHEDULE))
    _run(solo, AdapterOptimizer(solo), enumerate(SCHEDULE))
    for a, b in zip(pb, solo):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert float(sa["state.0.step"]) == 2 and float(sb["state.0.step"]) == len(SCHEDULE)


def test_state_dict_round_trip_resumes_identically(tmp_path):
    from safetensors.torch import load_file, save_file

    full = _params(3)
    _run(full, AdapterOptimizer(full), enumerate(SCHEDULE))

    first = _params(3)
    opt = AdapterOptimizer(first)
    _run(first, opt, list(enumerate(SCHEDULE))[:3])
    save_file(opt.state_dict(), tmp_path / "optim.safetensors")
    assert set(opt.state_dict()) == {f"state.{i}.{k}" for i in (0, 1) for k in ("exp_avg", "exp_avg_sq", "step")}
    resumed = [nn.Parameter(p.detach().clone()) for p in first]
    opt2 = AdapterOptimizer(resumed)
    opt2.load_state_dict(load_file(tmp_path / "optim.safetensors"))
    _run(resumed, opt2, list(enumerate(SCHEDULE))[3:])
    for a, b in zip(resumed, full):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_load_state_dict_rejects_mismatch():
    p = _params(4)
    opt = AdapterOptimizer(p)
    _run(p, opt, [(0, SCHEDULE[0])])
    state = opt.state_dict()
    small = AdapterOptimizer([nn.Parameter(torch.zeros(2, 3)), nn.Parameter(torch.zeros(3))])
    with pytest.raises(UserError, match=r"state.0.exp_avg.*shape \[4, 3\], expected \[2, 3\]"):
        small.load_state_dict(state)
    with pytest.raises(UserError, match="unexpected optimizer state key 'state.2.exp_avg'"):
        opt.load_state_dict({**state, "state.2.exp_avg": torch.zeros(3)})
    with pytest.raises(UserError, match="incomplete"):
        opt.load_state_dict({k: v for k, v in state.items() if k != "state.1.step"})


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_gradient_refused_without_changes(bad):
    p = _params(5)
    opt = AdapterOptimizer(p)
    _run(p, opt, [(0, SCHEDULE[0])])
    weights, state = [q.detach().clone() for q in p], opt.state_dict()
    _accumulate(p, 1)
    p[1].grad[0] = bad
    with pytest.raises(UserError) as e:
        opt.step(SCHEDULE[1])
    assert e.value.code == "non_finite_gradient" and e.value.category == "user"
    assert all(torch.equal(a, b) for a, b in zip(p, weights))
    new_state = opt.state_dict()
    assert new_state.keys() == state.keys() and all(torch.equal(new_state[k], state[k]) for k in state)
    assert all(q.grad is None for q in p)  # poisoned gradients are dropped; the next step works
    _run(p, opt, [(2, SCHEDULE[2])])


def test_no_gradients_skips_step():
    p = _params(6)
    opt = AdapterOptimizer(p)
    before = [q.detach().clone() for q in p]
    m = opt.step(AdamParams(weight_decay=0.5))
    assert m["step_skipped:max"] == 1.0 and opt.state_dict() == {}
    assert all(torch.equal(a, b) for a, b in zip(p, before))


def test_from_wire():
    assert AdamParams.from_wire({}) == AdamParams()
    assert AdamParams() == AdamParams(1e-4, 0.9, 0.95, 1e-12, 0.0, 0.0)  # Tinker SDK defaults
    hp = AdamParams.from_wire({"learning_rate": 3e-4, "beta1": 0, "beta2": 0.999, "eps": 1e-8,
                               "weight_decay": 0.01, "grad_clip_norm": 1})
    assert hp == AdamParams(3e-4, 0.0, 0.999, 1e-8, 0.01, 1.0) and isinstance(hp.beta1, float)
    for field, value in [("learning_rate", -1e-4), ("beta1", 1.0), ("beta2", -0.1), ("eps", 0.0),
                         ("weight_decay", -0.1), ("grad_clip_norm", -1.0), ("learning_rate", math.nan),
                         ("eps", math.inf), ("beta1", "0.9"), ("beta2", None), ("eps", True)]:
        with pytest.raises(UserError, match=f"adam_params.{field}"):
            AdamParams.from_wire({field: value})
    with pytest.raises(UserError, match="unknown adam_params field 'momentum'"):
        AdamParams.from_wire({"momentum": 0.9})
