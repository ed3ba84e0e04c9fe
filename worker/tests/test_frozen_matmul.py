"""FrozenMatmul (oneDNN with packed weights on CPU) against plain F.linear: values, input gradients,
repacking when the weight changes, copies, and the fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lathe_worker.frozen_matmul import FrozenMatmul, onednn_available

from tolerance import assert_close_rel

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear ops")


def _weight(out_f: int, in_f: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed)).to(dtype) * in_f**-0.5


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 64), (8, 64), (3, 5, 64), (300, 64)])
def test_values_and_input_gradient_match_f_linear_in_float32(shape):
    matmul, w = FrozenMatmul(), _weight(96, 64, seed=1)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    gy = torch.randn(*shape[:-1], 96, generator=torch.Generator().manual_seed(3))
    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = matmul(got_x, w), F.linear(want_x, w)
    got.backward(gy)
    want.backward(gy)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert_close_rel(got, want, rel=1e-5)
    assert_close_rel(got_x.grad, want_x.grad, rel=1e-5)
    with torch.no_grad():
        assert_close_rel(matmul(x, w), want.detach(), rel=1e-5)


@needs_onednn
def test_bfloat16_matches_f_linear():
    matmul, w = FrozenMatmul(), _weight(96, 64, seed=4, dtype=torch.bfloat16)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(5)).bfloat16()
    got = matmul(x, w)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), F.linear(x, w).float(), atol=2e-2, rtol=2e-2)


@needs_onednn
def test_repacks_when_the_weight_changes_in_place():
    """A checkpoint loaded into the model (copy_ into the parameter) must be seen at the next call."""
    matmul, w = FrozenMatmul(), _weight(32, 16, seed=6)
    x = torch.randn(4, 16)
    before = matmul(x, w)
    with torch.no_grad():
        w.copy_(_weight(32, 16, seed=7))
    after = matmul(x, w)
    assert_close_rel(after, F.linear(x, w), rel=1e-5)
    assert not torch.allclose(before, after)


@needs_onednn
def test_a_deep_copied_model_packs_its_own_weights():
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(_weight(32, 16, seed=8), requires_grad=False)
    layer.matmul = FrozenMatmul()
    x = torch.randn(4, 16)
    layer.matmul(x, layer.weight)
    twin = copy.deepcopy(layer).to(torch.bfloat16)
    torch.testing.assert_close(twin.matmul(x.bfloat16(), twin.weight).float(), layer.matmul(x, layer.weight),
                               atol=5e-2, rtol=5e-2)
    assert twin.matmul is not layer.matmul


def test_falls_back_to_f_linear_exactly(monkeypatch):
    """A bias, a weight that trains, mixed dtypes, and LATHE_CPU_ONEDNN=0 all take plain F.linear."""
    w, b = _weight(24, 8, seed=9), torch.randn(24)
    x = torch.randn(5, 8)
    assert torch.equal(FrozenMatmul()(x, w, b), F.linear(x, w, b))
    trainable = w.clone().requires_grad_()
    assert torch.equal(FrozenMatmul()(x, trainable), F.linear(x, trainable))
    with pytest.raises(RuntimeError):  # the error F.linear gives, not a oneDNN one
        FrozenMatmul()(x.double(), w)
    # A CPU without oneDNN's bf16 kernels (no AVX-512) keeps bf16 weights on F.linear; packing would fail.
    monkeypatch.setattr("lathe_worker.frozen_matmul._onednn_dtypes", lambda: (torch.float32,))
    wb, xb = w.bfloat16(), x.bfloat16()
    assert torch.equal(FrozenMatmul()(xb, wb), F.linear(xb, wb))
    monkeypatch.setenv("LATHE_CPU_ONEDNN", "0")
    assert not onednn_available()
    assert torch.equal(FrozenMatmul()(x, w), F.linear(x, w))


@needs_onednn
def test_the_model_runs_its_base_weights_through_onednn():
    """Guards the speed path: every base linear and the (tied) LM head of a CPU model use the packed kernel."""
    from torch.profiler import ProfilerActivity, profile

    from small_model import SMALL_CONFIG

    from lathe_worker.models import Transformer
    from lathe_worker.models.tiny import init_weights

    assert SMALL_CONFIG.tie_word_embeddings
    model = Transformer(SMALL_CONFIG)
    init_weights(model, seed=1)
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model.lm_head_logits(model(ids, torch.arange(6).expand(2, 6), None))
    calls = {e.key: e.count for e in prof.key_averages()}
    layers = model.config.num_hidden_layers
    assert calls.get("mkldnn::_linear_pointwise") == 7 * layers + 1
    assert "aten::mm" not in calls and "aten::addmm" not in calls
