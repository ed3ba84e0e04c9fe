"""Every loss against a plain-PyTorch reference formula (value and d loss / d lp), plus validation."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch

from lathe_worker.errors import UserError
from lathe_worker.losses import LOSS_FUNCTIONS, compute_loss, validate_loss_inputs

from tolerance import assert_close_rel

V = 50


def _datums(n_datums=3, two_d=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lps, inputs = [], []
    for i in range(n_datums):
        n = 5 + 3 * i
        shape = (n, 4) if two_d else (n,)
        q = -torch.rand(shape, generator=g) * 3
        # learner log-probs near q on odd tokens and far from it on even ones: ratios inside and outside
        # every clip range, on both sides
        scale = torch.where(torch.arange(n) % 2 == 1, 0.1, 1.5).reshape(n, *([1] * (len(shape) - 1)))
        lp = (q + torch.randn(shape, generator=g) * scale).clamp(max=0)
        adv = torch.randn(shape, generator=g)
        adv[0] = 0.0  # a prompt token
        inputs.append({"target_tokens": torch.randint(0, V, shape, generator=g), "logprobs": q,
                       "advantages": adv, "weights": torch.randn(shape, generator=g)})
        lps.append(lp)
    assert any((a > 0).any() for a in (d["advantages"] for d in inputs))
    assert any((a < 0).any() for a in (d["advantages"] for d in inputs))
    return lps, inputs


def _reference(loss_fn, lp, inp, cfg):
    q, a = inp["logprobs"], inp["advantages"]
    r = torch.exp(lp - q)
    if loss_fn == "cross_entropy":
        return (-lp * inp["weights"]).sum()
    if loss_fn == "importance_sampling":
        return -(r * a).sum()
    if loss_fn == "ppo":
        lo, hi = cfg.get("clip_low_threshold", 0.8), cfg.get("clip_high_threshold", 1.2)
        return -torch.min(r * a, torch.clamp(r, lo, hi) * a).sum()
    if loss_fn == "cispo":
        lo, hi = cfg.get("clip_low_threshold", 0.0), cfg.get("clip_high_threshold", 4.0)
        return -(torch.clamp(r, lo, hi).detach() * lp * a).sum()
    beta = cfg.get("beta", 0.05)
    return -(lp * a - 0.5 * beta * (lp - q) ** 2).sum()


CONFIGS = {
    "cross_entropy": [{}],
    "importance_sampling": [{}],
    "ppo": [{}, {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5}],
    "cispo": [{}, {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}],
    "dro": [{}, {"beta": 0.7}],
}
CASES = [(fn, cfg) for fn in LOSS_FUNCTIONS for cfg in CONFIGS[fn]]


@pytest.mark.parametrize("loss_fn,cfg", CASES)
def test_value_and_gradient_match_reference(loss_fn, cfg):
    lps, inputs = _datums()
    ours = [lp.clone().requires_grad_() for lp in lps]
    ref = [lp.clone().requires_grad_() for lp in lps]
    result = compute_loss(loss_fn, ours, inputs, cfg or None)
    expected = sum(_reference(loss_fn, lp, inp, cfg) for lp, inp in zip(ref, inputs))
    result.loss.backward()
    expected.backward()
    assert result.loss.shape == ()
    assert_close_rel(result.loss.detach(), expected.detach(), rel=1e-5)
    assert result.metrics["loss:sum"] == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-5)
    assert all(k.count(":") == 1 for k in result.metrics)
    for a, b in zip(ours, ref):
        assert_close_rel(a.grad, b.grad, rel=1e-5)
    if loss_fn in ("ppo", "cispo"):  # the data really exercises both sides of the clip
        lo = cfg.get("clip_low_threshold", 0.8 if loss_fn == "ppo" else 0.0)
        hi = cfg.get("clip_high_threshold", 1.2 if loss_fn == "ppo" else 4.0)
        r = torch.cat([torch.exp(lp - d["logprobs"]) for lp, d in zip(lps, inputs)])
        assert (r > hi).any() and (r < 1).any() and 0 < result.metrics["clip_fraction:mean"] < 1
        if lo > 0:
            assert (r < lo).any()


def test_defaults_equal_explicit_config():
    lps, inputs = _datums(seed=3)
    for loss_fn, explicit in [("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
                              ("cispo", {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0}),
                              ("dro", {"beta": 0.05})]:
        a = compute_loss(loss_fn, lps, inputs, None).loss
        b = compute_loss(loss_fn, lps, inputs, explicit).loss
        c = compute_loss(loss_fn, lps, inputs, {"beta": 0.5} if loss_fn == "dro" else {"clip_high_threshold": 1.01}).loss
        assert float(a) == float(b) and float(a) != float(c)


def test_cross_entropy_2d_soft_targets_and_default_weights():
    lps, inputs = _datums(two_d=True)
    ours = [lp.clone().requires_grad_() for lp in lps]
    res = compute_loss("cross_entropy", ours, inputs, {})
    res.loss.backward()
    expected = sum((-lp * d["weights"]).sum() for lp, d in zip(lps, inputs))
    assert_close_rel(res.loss.detach(), expected, rel=1e-5)
    for lp, d in zip(ours, inputs):
        torch.testing.assert_close(lp.grad, -d["weights"])
    no_w = [{"target_tokens": d["target_tokens"]} for d in inputs]
    assert float(compute_loss("cross_entropy", lps, no_w, None).loss) == pytest.approx(-sum(float(lp.sum()) for lp in lps), rel=1e-6)


def test_zero_advantage_tokens_cannot_produce_nan():
    lp = torch.tensor([-0.1, -0.2], requires_grad=True)
    inp = {"target_tokens": torch.tensor([1, 2]), "logprobs": torch.tensor([-200.0, -0.3]),
           "advantages": torch.tensor([0.0, 1.0])}
    for loss_fn in ("importance_sampling", "ppo", "cispo"):
        lp.grad = None
        res = compute_loss(loss_fn, [lp], [inp], None)
        res.loss.backward()
        assert math.isfinite(res.metrics["loss:sum"]) and torch.isfinite(lp.grad).all()
        assert lp.grad[0] == 0


def test_empty_call_is_zero():
    assert compute_loss("ppo", [], [], None).metrics == {"loss:sum": 0.0, "clip_fraction:mean": 0.0}


# ---- validation ---------------------------------------------------------------------------------

def _good(n=4, two_d=False):
    shape = (n, 2) if two_d else (n,)
    return {"target_tokens": torch.randint(0, V, shape), "weights": torch.ones(shape),
            "logprobs": -torch.rand(shape), "advantages": torch.randn(shape)}


def _raises(match, loss_fn="ppo", inputs=None, config=None, n=4):
    with pytest.raises(UserError, match=match) as e:
        validate_loss_inputs(loss_fn, n, _good() if inputs is None else inputs, config, V)
    assert e.value.category == "user"


def test_valid_inputs_pass():
    for loss_fn in LOSS_FUNCTIONS:
        validate_loss_inputs(loss_fn, 4, _good(), None, V)
    validate_loss_inputs("cross_entropy", 4, _good(two_d=True), {}, V)
    validate_loss_inputs("cross_entropy", 4, {"target_tokens": torch.zeros(4, dtype=torch.int64)}, None, V)
    validate_loss_inputs("ppo", 4, {**_good(), "mask": torch.ones(4)}, {"clip_low_threshold": 0.7}, V)


def test_validation_errors():
    _raises(r"unknown loss_fn 'kl'.*cross_entropy, importance_sampling, ppo, cispo, dro", loss_fn="kl")
    for key in ("target_tokens", "logprobs", "advantages"):
        inp = _good()
        del inp[key]
        _raises(f"missing '{key}'", inputs=inp)
    _raises("missing 'target_tokens'", loss_fn="cross_entropy", inputs={"weights": torch.ones(4)})
    _raises(r"'target_tokens'\] must be int64", inputs={**_good(), "target_tokens": torch.zeros(4, dtype=torch.int32)})
    _raises(r"'advantages'\] must be float32", inputs={**_good(), "advantages": torch.zeros(4, dtype=torch.float64)})
    _raises(r"'weights'\] must be float32", loss_fn="cross_entropy", inputs={**_good(), "weights": torch.ones(4, dtype=torch.int64)})
    _raises("first dimension 4 but model_input has length 5", n=5)
    _raises(r"'weights'\] has shape \[4, 2\]", loss_fn="cross_entropy", inputs={**_good(), "weights": torch.ones(4, 2)})
    _raises(r"'logprobs'\] has shape \[3\]", inputs={**_good(), "logprobs": torch.zeros(3)})
    _raises("must be 1-D for ppo", inputs=_good(two_d=True))
    _raises("must be 1-D or 2-D", loss_fn="cross_entropy", inputs={"target_tokens": torch.zeros(4, 1, 1, dtype=torch.int64)})
    _raises(f"token id {V} outside", inputs={**_good(), "target_tokens": torch.tensor([0, V, 1, 2])})
    _raises("token id -1 outside", loss_fn="cross_entropy", inputs={"target_tokens": torch.tensor([0, -1, 1, 2])})
    for bad in (math.nan, math.inf, -math.inf):
        _raises(r"'logprobs'\] contains NaN or inf", inputs={**_good(), "logprobs": torch.tensor([0.0, bad, 0, 0])})
        _raises(r"'weights'\] contains NaN or inf", loss_fn="cross_entropy",
                inputs={**_good(), "weights": torch.tensor([0.0, 0, 0, bad])})
        _raises(r"loss_fn_config\['beta'\] must be finite", loss_fn="dro", config={"beta": bad})
    _raises("unknown loss_fn_config key 'beta' for ppo", config={"beta": 1.0})
    _raises("unknown loss_fn_config key 'clip_low_threshold' for cross_entropy", loss_fn="cross_entropy",
            config={"clip_low_threshold": 0.5})
    _raises("must be a number", loss_fn="dro", config={"beta": "high"})
    _raises("exceeds clip_high_threshold", config={"clip_low_threshold": 2.0})
    with pytest.raises(UserError, match="unknown loss_fn"):
        compute_loss("nope", [], [], None)
