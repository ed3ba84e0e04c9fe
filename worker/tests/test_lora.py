"""LoRA adapters: initialisation, validation, targets, and the multi-adapter batch."""

from __future__ import annotations

import math

import pytest
import torch

from lathe_worker.errors import UserError
from lathe_worker.lora import ATTN_TARGETS, MLP_TARGETS, LoraAdapter, LoraBatch, LoraConfig
from lathe_worker.models import ModelConfig, Transformer, causal_padding_mask
from lathe_worker.models.tiny import init_weights

from tolerance import assert_close_rel

V = 97


def small_model(arch: str = "qwen3") -> Transformer:
    cfg = ModelConfig(architecture=arch, vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                      rope_theta=10000.0, rope_scaling=None, max_position_embeddings=256,
                      tie_word_embeddings=arch == "qwen3", qk_norm=arch == "qwen3", attention_bias=False)
    model = Transformer(cfg)
    init_weights(model, seed=7)
    return model


def perturbed(model: Transformer, cfg: LoraConfig) -> LoraAdapter:
    adapter = LoraAdapter.create(model, cfg)
    gen = torch.Generator().manual_seed(100 + cfg.rank)
    with torch.no_grad():
        for _, _, b in adapter.named_factors():
            b.copy_(torch.randn(b.shape, generator=gen) * 0.05)
    return adapter


def row_losses(model: Transformer, ids, lengths, lora: LoraBatch) -> torch.Tensor:
    """Per-row sum of next-token log-probs over real positions (right-padded batch)."""
    B, T = ids.shape
    hidden = model(ids, torch.arange(T)[None].expand(B, T), causal_padding_mask(lengths, T), lora=lora)
    out = []
    for adapter, s, e in lora.groups:  # the LM head's LoRA is per adapter
        lp = model.lm_head_logits(hidden[s:e, :-1], adapter).log_softmax(-1)
        tok = lp.gather(-1, ids[s:e, 1:, None])[..., 0]
        real = torch.arange(1, T)[None] < lengths[s:e, None]
        out.append((tok * real).sum(-1))
    return torch.cat(out)


def batch_logits(model, ids, lora):
    B, T = ids.shape
    h = model(ids, torch.arange(T)[None].expand(B, T), causal_padding_mask(torch.full((B,), T), T), lora=lora)
    return model.lm_head_logits(h, lora.groups[0][0] if lora else None)


def test_fresh_adapter_is_noop():
    model = small_model()
    adapter = LoraAdapter.create(model, LoraConfig(rank=8, seed=3))
    ids = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        base = batch_logits(model, ids, None)
        with_lora = batch_logits(model, ids, LoraBatch.single(adapter, 2))
    assert torch.equal(base, with_lora)
    assert all(a.abs().sum() > 0 for _, a, _ in adapter.named_factors())  # A is initialised, B is zero


@pytest.mark.parametrize("rank", [0, 3, -4, 6, 2.0])
def test_rank_validation(rank):
    with pytest.raises(UserError) as e:
        LoraConfig(rank=rank).validate()
    assert e.value.code == "invalid_lora_rank"
    assert e.value.message == f"LoRA rank must be a positive power of 2, got {rank}"


@pytest.mark.parametrize("alpha", [0, -8, float("nan"), float("inf"), True, "32"])
def test_alpha_validation(alpha):
    with pytest.raises(UserError) as e:
        LoraConfig(rank=8, alpha=alpha).validate()
    assert e.value.code == "invalid_lora_alpha" and e.value.message.startswith("LoRA alpha must be")


def test_needs_a_target():
    with pytest.raises(UserError):
        LoraConfig(train_attn=False, train_mlp=False, train_unembed=False).validate()
    for r in (1, 2, 64):
        LoraConfig(rank=r).validate()


def test_seed_determinism_and_init():
    model = small_model()
    a1 = LoraAdapter.create(model, LoraConfig(rank=4, seed=11))
    a2 = LoraAdapter.create(model, LoraConfig(rank=4, seed=11))
    a3 = LoraAdapter.create(model, LoraConfig(rank=4, seed=12))
    default = LoraAdapter.create(model, LoraConfig(rank=4))
    zero = LoraAdapter.create(model, LoraConfig(rank=4, seed=0))
    for (p, a, b), (_, a_2, _), (_, a_3, _), (_, d, _), (_, z, _) in zip(
            a1.named_factors(), a2.named_factors(), a3.named_factors(), default.named_factors(), zero.named_factors()):
        assert torch.equal(a, a_2) and not torch.equal(a, a_3) and torch.equal(d, z)
        assert a.dtype == b.dtype == torch.float32 and a.requires_grad and b.requires_grad
        assert a.abs().max() <= 1 / math.sqrt(a.shape[1]) and not b.any()  # kaiming_uniform(a=sqrt(5)) bound
    assert a1.scale == 32 / 4


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("attn,mlp,unembed", [(True, False, False), (False, True, False), (False, False, True),
                                              (True, True, True)])
def test_targets(arch, attn, mlp, unembed):
    model = small_model(arch)
    adapter = LoraAdapter.create(model, LoraConfig(rank=2, train_attn=attn, train_mlp=mlp, train_unembed=unembed))
    want = [(p, i, o) for p, i, o in model.lora_targets()
            if (attn and p.split(".")[-1] in ATTN_TARGETS) or (mlp and p.split(".")[-1] in MLP_TARGETS)
            or (unembed and p == "lm_head")]
    assert [p for p, _, _ in adapter.named_factors()] == [p for p, _, _ in want]
    for p, i, o in want:
        a, b = adapter.factors(p)
        assert a.shape == (2, i) and b.shape == (o, 2)
    assert len(list(adapter.parameters())) == 2 * len(want)
    assert (adapter.factors("lm_head") is not None) == unembed
    assert adapter.factors("model.layers.0.mlp.up_proj") is None or mlp
    assert model.lora_targets()[-1] == ("lm_head", 32, V)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_mixed_batch_matches_separate_batches(arch):
    model = small_model(arch)
    adapters = [
        perturbed(model, LoraConfig(rank=4, seed=1, train_mlp=False, train_unembed=False)),
        perturbed(model, LoraConfig(rank=8, seed=2, train_attn=False)),
        perturbed(model, LoraConfig(rank=16, seed=3)),
    ]
    torch.manual_seed(0)
    row_lengths = [[5, 9], [3], [10, 2, 7]]  # + one base-model row in the mixed batch
    T = 10
    ids = torch.randint(0, V, (7, T))
    lengths = torch.tensor([5, 9, 3, 10, 2, 7, 6])

    # Separate: one batch per adapter (each padded only to its own longest row).
    sep_loss, sep_grads, start = [], [], 0
    for adapter, ls in zip(adapters, row_lengths):
        n, t = len(ls), max(ls)
        loss = row_losses(model, ids[start:start + n, :t], lengths[start:start + n], LoraBatch.single(adapter, n))
        grads = torch.autograd.grad(-loss.sum(), list(adapter.parameters()))
        sep_loss.append(loss.detach())
        sep_grads.append(grads)
        start += n

    # Mixed: every row in one batch, plus a base-model row at the end.
    groups = LoraBatch([(adapters[0], 0, 2), (adapters[1], 2, 3), (adapters[2], 3, 6), (None, 6, 7)])
    loss = row_losses(model, ids, lengths, groups)
    (-loss.sum()).backward()

    assert_close_rel(loss[:6].detach(), torch.cat(sep_loss), rel=1e-5)
    for adapter, grads in zip(adapters, sep_grads):
        for p, g in zip(adapter.parameters(), grads):
            assert p.grad is not None and p.grad.abs().sum() > 0
            assert_close_rel(p.grad, g, rel=1e-5)
    with torch.no_grad():
        base_only = row_losses(model, ids[6:], lengths[6:], LoraBatch.single(None, 1))
    assert_close_rel(loss[6].detach(), base_only[0], rel=1e-5)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("alpha", [32, 6.0])
def test_lora_forward_equals_merged_weights(alpha):
    """y = W x + (alpha/r) B A x, checked against a model with the merged weights, for the default alpha
    and an adapter's own."""
    model, merged = small_model("llama"), small_model("llama")
    adapter = perturbed(model, LoraConfig(rank=4, seed=5, alpha=alpha))
    assert adapter.scale == alpha / 4
    with torch.no_grad():
        for path, a, b in adapter.named_factors():
            merged.get_submodule(path).weight += adapter.scale * b @ a
        ids = torch.randint(0, V, (2, 6))
        got = batch_logits(model, ids, LoraBatch.single(adapter, 2))
        want = batch_logits(merged, ids, None)
    assert_close_rel(got, want, rel=1e-4)  # different summation order


def test_bfloat16_activations_cast_factors():
    model = small_model().to(torch.bfloat16)
    adapter = perturbed(model, LoraConfig(rank=4, seed=5))
    ids = torch.randint(0, V, (2, 5))
    logits = batch_logits(model, ids, LoraBatch.single(adapter, 2))
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapter.parameters())


def lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """The plain reference: scale * B (A x), factors cast to x's dtype (the cast is differentiable)."""
    return torch.nn.functional.linear(torch.nn.functional.linear(x, a.to(x.dtype)) * scale, b.to(x.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_linear_matches_per_group_deltas(dtype):
    """linear_with_lora (one base matmul + in-place grouped deltas, custom backward) against the plain
    per-group `W x + lora_delta(x)` with autograd: outputs and gradients of x, A and B, for a batch mixing
    two adapters, a base-model group and an empty group, 3-D input, with and without grad."""
    from lathe_worker.lora import linear_with_lora

    model = small_model()
    path = "model.layers.1.mlp.up_proj"
    a1 = perturbed(model, LoraConfig(rank=4, seed=1))
    a2 = perturbed(model, LoraConfig(rank=8, seed=2))
    weight = model.get_submodule(path).weight.to(dtype)
    groups = [(a1, 0, 2), (None, 2, 3), (a2, 3, 3), (a2, 3, 5)]
    x = torch.randn(5, 3, 32, generator=torch.Generator().manual_seed(4)).to(dtype)
    gy = torch.randn(5, 3, 64, generator=torch.Generator().manual_seed(5)).to(dtype)

    def reference(x):
        parts = []
        for adapter, s, e in groups:
            y = torch.nn.functional.linear(x[s:e], weight)
            if adapter is not None and e > s:
                a, b = adapter.factors(path)
                y = y + lora_delta(x[s:e], a, b, adapter.scale)
            parts.append(y)
        return torch.cat(parts)

    results = []
    for fn in (reference, lambda x: linear_with_lora(x, weight, None, path, LoraBatch(groups))):
        for adapter in (a1, a2):
            adapter.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        y = fn(xx)
        (y.float() * gy.float()).sum().backward()
        results.append((y.detach(), xx.grad, [p.grad.clone() for ad in (a1, a2) for p in ad.parameters()
                                               if p.grad is not None]))
        with torch.no_grad():
            results[-1] += (fn(x),)
    (ref_y, ref_gx, ref_gp, ref_nograd), (y, gx, gp, nograd) = results
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    assert y.dtype == dtype and y.shape == (5, 3, 64)
    torch.testing.assert_close(y, ref_y, **tol)
    torch.testing.assert_close(nograd, ref_nograd, **tol)
    torch.testing.assert_close(nograd, y, **tol)
    torch.testing.assert_close(gx, ref_gx, **tol)
    assert gx[2].abs().sum() > 0  # the base-model row still gets the base matmul's gradient
    assert len(gp) == len(ref_gp) == 4
    for got, want in zip(gp, ref_gp):
        assert got.dtype == torch.float32
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= (1e-5 if dtype == torch.float32 else 3e-2) * max(1.0, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_lora_is_bit_identical_to_the_live_adapters(dtype):
    """The decoding view (factors cast once, scale folded into A) gives exactly the same logits as the
    live adapters, for scales above, at and below 1 (ranks 4, 32, 64) in one mixed batch."""
    model = small_model().to(dtype)
    adapters = [perturbed(model, LoraConfig(rank=r, seed=r)) for r in (4, 32, 64)]
    assert [a.scale for a in adapters] == [8.0, 1.0, 0.5]
    lora = LoraBatch([(adapters[0], 0, 2), (None, 2, 3), (adapters[1], 3, 4), (adapters[2], 4, 6)])
    frozen = lora.frozen(dtype)
    ids = torch.randint(0, V, (6, 7), generator=torch.Generator().manual_seed(9))
    pos, mask = torch.arange(7)[None].expand(6, 7), causal_padding_mask(torch.full((6,), 7), 7)
    with torch.no_grad():
        live = model.lm_head_logits(model(ids, pos, mask, lora=lora), lora=lora)
        fast = model.lm_head_logits(model(ids, pos, mask, lora=frozen), lora=frozen)
    assert torch.equal(live, fast)
    view = frozen.groups[0][0]
    a, b = view.factors("lm_head")
    assert view.scale == 1.0 and a.dtype == b.dtype == dtype and not a.requires_grad
    assert view.factors("not.a.module") is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_lora_keeps_a_scale_that_is_not_a_power_of_two(dtype):
    """A custom alpha (6 / rank 4 = 1.5) cannot be folded into A exactly, so the decoding view keeps it
    apart and still gives the live adapter's logits bit for bit."""
    model = small_model().to(dtype)
    adapter = perturbed(model, LoraConfig(rank=4, seed=4, alpha=6))
    lora = LoraBatch([(adapter, 0, 2), (None, 2, 3)])
    frozen = lora.frozen(dtype)
    assert frozen.groups[0][0].scale == 1.5
    ids = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(3))
    pos, mask = torch.arange(5)[None].expand(3, 5), causal_padding_mask(torch.full((3,), 5), 5)
    with torch.no_grad():
        live = model.lm_head_logits(model(ids, pos, mask, lora=lora), lora=lora)
        fast = model.lm_head_logits(model(ids, pos, mask, lora=frozen), lora=frozen)
    assert torch.equal(live, fast)


def test_grouped_linear_leaves_no_full_size_gradient_copies():
    """The point of the custom backward: no CopySlices (which clones the whole output gradient per group)."""
    from lathe_worker.lora import linear_with_lora

    model = small_model()
    path = "model.layers.0.mlp.up_proj"
    adapters = [perturbed(model, LoraConfig(rank=4, seed=s)) for s in (1, 2, 3)]
    x = torch.randn(6, 32, requires_grad=True)
    y = linear_with_lora(x, model.get_submodule(path).weight, None, path,
                         LoraBatch([(adapters[0], 0, 2), (adapters[1], 2, 4), (adapters[2], 4, 6)]))
    names, stack = set(), [y.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and type(fn).__name__ not in names:
            names.add(type(fn).__name__)
            stack += [f for f, _ in fn.next_functions]
    assert not any("CopySlices" in n for n in names), names
