"""AdapterOptimizer against plain torch.optim.AdamW (+ clip_grad_norm_), DimuonOptimizer against a from-scratch
Muon-style reference, isolation, state round trip, wire parsing."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch
from torch import nn

from lathe_worker.errors import UserError
from lathe_worker.optim import (AdamParams, AdapterOptimizer, DimuonOptimizer, DimuonParams, optim_params_from_wire,
                                optimizer_config_from_wire, orthogonalize)

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


# ---- Dimuon ------------------------------------------------------------------------------------------

DIMUON_SCHEDULE = [  # clipping binding and not, beta1 and the (SDK 0.29) rank correction changing between steps
    DimuonParams(learning_rate=1e-2),
    DimuonParams(learning_rate=5e-3, beta1=0.5, grad_clip_norm=0.5),
    DimuonParams(learning_rate=2e-2, grad_clip_norm=100.0, rank_lr_correction_exponent=0.175),
    DimuonParams(learning_rate=0.0, beta1=0.0),
    DimuonParams(learning_rate=1e-3, grad_clip_norm=-1.0, damping=0.5),  # <= 0: no clipping
]


def _lora_factors(seed: int, rank: int = 8) -> list[nn.Parameter]:
    """An A-like [rank, in] and a B-like [out, rank] matrix."""
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(rank, 48, generator=g)), nn.Parameter(torch.randn(80, rank, generator=g))]


def _accumulate_matrices(params, step: int, micro: int = 2) -> None:
    for m in range(micro):
        g = torch.Generator().manual_seed(100 * step + m)
        x = torch.randn(5, params[0].shape[1], generator=g)
        ((x @ params[0].T @ params[1].T).tanh().sum() * (step + 1)).backward()


def _reference_dimuon(params, grads_per_step, schedule, rank: int = 8):
    """Muon-style reference written out: EMA momentum, quintic Newton-Schulz on M / |M|_F (transposed when
    tall), no shape scale, lr * (32 / rank)^e, global-norm clipping as torch's clip_grad_norm_ does it."""
    weights = [p.detach().clone() for p in params]
    momenta = [torch.zeros_like(w) for w in weights]
    for grads, hp in zip(grads_per_step, schedule):
        total = math.sqrt(sum(float((g * g).sum()) for g in grads))
        if hp.grad_clip_norm > 0:
            grads = [g * min(1.0, hp.grad_clip_norm / (total + 1e-6)) for g in grads]
        lr = hp.learning_rate * (32 / rank) ** hp.rank_lr_correction_exponent
        for i, g in enumerate(grads):
            momenta[i] = hp.beta1 * momenta[i] + (1 - hp.beta1) * g
            x = momenta[i].T if momenta[i].shape[0] > momenta[i].shape[1] else momenta[i]
            x = x / (torch.linalg.matrix_norm(x) + 1e-7)
            for _ in range(5):
                a = x @ x.T
                x = 3.4445 * x - 4.7750 * a @ x + 2.0315 * a @ a @ x
            weights[i] = weights[i] - lr * (x.T if momenta[i].shape[0] > momenta[i].shape[1] else x)
    return weights


def test_dimuon_matches_a_from_scratch_reference():
    ours = _lora_factors(0)
    opt = DimuonOptimizer(ours, rank=8)
    grads_per_step = []
    for i, hp in enumerate(DIMUON_SCHEDULE):
        _accumulate_matrices(ours, i)
        grads_per_step.append([p.grad.clone() for p in ours])
        m = opt.step(hp)
        assert m["learning_rate:mean"] == hp.learning_rate
        assert m["grad_norm:mean"] == pytest.approx(math.sqrt(sum(float((g * g).sum()) for g in grads_per_step[-1])),
                                                    rel=1e-5)
        assert all(p.grad is None for p in ours)
    expected = _reference_dimuon(_lora_factors(0), grads_per_step, DIMUON_SCHEDULE)
    start = [p.detach() for p in _lora_factors(0)]
    for got, want, before in zip(ours, expected, start):
        # relative to the size of the change, not just of the weights
        assert float((got - want).detach().norm()) <= 1e-4 * float((want - before).norm())
    assert float(opt.state_dict()["state.1.step"]) == len(DIMUON_SCHEDULE)


def test_orthogonalize_is_close_to_the_polar_factor_with_norm_sqrt_rank():
    g = torch.Generator().manual_seed(1)
    for shape in [(8, 300), (300, 8), (32, 128)]:  # LoRA factors are far from square
        m = torch.randn(shape, generator=g) * 1e3
        q = orthogonalize(m)
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        polar = u @ vh
        cosine = float((q * polar).sum() / (q.norm() * polar.norm()))
        assert cosine > 0.97, (shape, cosine)  # the quintic iteration leaves singular values in ~[0.7, 1.2]
        singular = torch.linalg.svdvals(q)
        assert float(singular.min()) > 0.5 and float(singular.max()) < 1.3, singular
        # The scale rule: a direction with Frobenius norm about sqrt(rank), rank = the small side.
        assert float(q.norm()) == pytest.approx(math.sqrt(min(shape)), rel=0.2)
    assert torch.equal(orthogonalize(torch.zeros(4, 6)), torch.zeros(4, 6))


def test_dimuon_state_round_trip_resumes_identically(tmp_path):
    from safetensors.torch import load_file, save_file

    full = _lora_factors(3)
    _run_matrices(full, DimuonOptimizer(full, rank=8), enumerate(DIMUON_SCHEDULE))
    first = _lora_factors(3)
    opt = DimuonOptimizer(first, rank=8)
    _run_matrices(first, opt, list(enumerate(DIMUON_SCHEDULE))[:2])
    assert set(opt.state_dict()) == {f"state.{i}.{k}" for i in (0, 1) for k in ("momentum_buffer", "step")}
    save_file(opt.state_dict(), tmp_path / "optim.safetensors")
    resumed = [nn.Parameter(p.detach().clone()) for p in first]
    opt2 = DimuonOptimizer(resumed, rank=8)
    opt2.load_state_dict(load_file(tmp_path / "optim.safetensors"))
    _run_matrices(resumed, opt2, list(enumerate(DIMUON_SCHEDULE))[2:])
    for a, b in zip(resumed, full):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # AdamW state does not fit a Dimuon slot (nor the other way round)
    adam = AdapterOptimizer(_lora_factors(3))
    _run_matrices(adam.params, adam, [(0, AdamParams())])
    with pytest.raises(UserError, match="unexpected optimizer state key 'state.0.exp_avg' for dimuon"):
        opt2.load_state_dict(adam.state_dict())
    with pytest.raises(UserError, match="unexpected optimizer state key 'state.0.momentum_buffer' for adamw"):
        adam.load_state_dict(opt2.state_dict())


def _run_matrices(params, opt, steps):
    for i, hp in steps:
        _accumulate_matrices(params, i)
        opt.step(hp)


def test_step_hyperparameters_must_match_the_slots_optimizer():
    p = _lora_factors(4)
    dimuon, adam = DimuonOptimizer(p, rank=8), AdapterOptimizer(_lora_factors(4))
    for opt, hp, message in ((dimuon, AdamParams(), "adam_params: this adapter uses the dimuon optimizer"),
                             (adam, DimuonParams(learning_rate=1e-3), "optimizer_params: this adapter uses the adamw")):
        _accumulate_matrices(opt.params, 0)
        with pytest.raises(UserError, match=message) as e:
            opt.step(hp)
        assert e.value.code == "optimizer_mismatch" and all(q.grad is not None for q in opt.params)


def test_dimuon_non_finite_gradient_refused_without_changes():
    p = _lora_factors(5)
    opt = DimuonOptimizer(p, rank=8)
    _run_matrices(p, opt, [(0, DIMUON_SCHEDULE[0])])
    weights, state = [q.detach().clone() for q in p], opt.state_dict()
    _accumulate_matrices(p, 1)
    p[0].grad[0, 0] = math.inf
    with pytest.raises(UserError, match="non_finite|gradient norm is inf"):
        opt.step(DIMUON_SCHEDULE[1])
    assert all(torch.equal(a, b) for a, b in zip(p, weights))
    assert all(torch.equal(opt.state_dict()[k], state[k]) for k in state) and all(q.grad is None for q in p)


def test_optim_params_and_optimizer_config_from_wire():
    assert optim_params_from_wire({"adam_params": {"learning_rate": 1e-3}}) == AdamParams(learning_rate=1e-3)
    assert optim_params_from_wire({"optimizer_params": {"type": "dimuon", "learning_rate": 2e-3}}) == \
        DimuonParams(learning_rate=2e-3, grad_clip_norm=0.0, beta1=0.9, damping=1e-4, rank_lr_correction_exponent=0.0)
    sdk_029 = {"type": "dimuon", "learning_rate": 1e-3, "grad_clip_norm": 1.0, "beta1": 0.95, "damping": 1e-4,
               "rank_lr_correction_exponent": 0.175}
    assert optim_params_from_wire({"optimizer_params": sdk_029}).rank_lr_correction_exponent == 0.175
    for request, message in [
        ({}, "exactly one of adam_params, optimizer_params"),
        ({"adam_params": {}, "optimizer_params": {"type": "dimuon", "learning_rate": 1.0}}, "exactly one of"),
        ({"optimizer_params": {"type": "lion", "learning_rate": 1.0}}, "optimizer_params.type must be 'dimuon'"),
        ({"optimizer_params": {"learning_rate": 1.0}}, "optimizer_params.type must be 'dimuon'"),
        ({"optimizer_params": {"type": "dimuon"}}, "optimizer_params.learning_rate is required"),
        ({"optimizer_params": {"type": "dimuon", "learning_rate": -1.0}}, r"optimizer_params.learning_rate must be >= 0"),
        ({"optimizer_params": {"type": "dimuon", "learning_rate": 1.0, "beta1": 1.0}}, r"optimizer_params.beta1 must be in"),
        ({"optimizer_params": {"type": "dimuon", "learning_rate": 1.0, "damping": 0}}, r"optimizer_params.damping must be > 0"),
        ({"optimizer_params": {"type": "dimuon", "learning_rate": math.nan}}, "optimizer_params.learning_rate must be a finite"),
        ({"optimizer_params": {"type": "dimuon", "learning_rate": 1.0, "beta2": 0.9}}, "unknown optimizer_params field 'beta2'"),
        ({"optimizer_params": "dimuon"}, "optimizer_params must be a map"),
    ]:
        with pytest.raises(UserError, match=message):
            optim_params_from_wire(request)

    assert optimizer_config_from_wire(None) == optimizer_config_from_wire({"type": "adamw"}) == {"type": "adamw"}
    assert optimizer_config_from_wire({"type": "dimuon"}) == {"type": "dimuon", "version": 1}
    assert optimizer_config_from_wire({"type": "dimuon", "version": 1}) == {"type": "dimuon", "version": 1}
    for value, message in [({"type": "sgd"}, r"optimizer.type must be one of \['adamw', 'dimuon'\], got 'sgd'"),
                           ({}, "optimizer.type must be one of"),
                           ({"type": "dimuon", "version": 2}, "optimizer.version must be 1"),
                           ({"type": "adamw", "version": 1}, r"unknown optimizer keys for adamw: \['version'\]"),
                           ("adamw", "optimizer must be a map")]:
        with pytest.raises(UserError, match=message):
            optimizer_config_from_wire(value)
