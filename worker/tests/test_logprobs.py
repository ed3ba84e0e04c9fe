"""Chunked target/top-k log-probs against plain PyTorch on full logits."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch
from torch import nn

from lathe_worker.logprobs import target_logprobs, topk_logprobs

from tolerance import assert_close_rel

N, D, V, R = 37, 16, 101, 4


class LoraHead(nn.Module):
    """Frozen base projection + trainable low-rank update, like a LoRA'd lm_head."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(V, D, generator=g), requires_grad=False)
        self.A = nn.Parameter(torch.randn(R, D, generator=g) * 0.3)
        self.B = nn.Parameter(torch.randn(V, R, generator=g) * 0.3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(h.dtype)
        return h @ w.T + (h @ self.A.to(h.dtype).T) @ self.B.to(h.dtype).T


def _naive(hidden, head, targets):
    lsm = torch.log_softmax(head(hidden).float(), dim=-1)
    return lsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1) if targets.dim() == 1 else lsm.gather(-1, targets)


@pytest.mark.parametrize("shape", [(N,), (N, 3)])
@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 1024])
def test_values_and_grads_match_naive(shape, chunk):
    torch.manual_seed(1)
    head = LoraHead()
    targets = torch.randint(0, V, shape)
    if len(shape) == 2:
        targets[0, 1] = targets[0, 0]  # duplicate ids within a row must accumulate gradient
    grad_out = torch.randn(shape)  # arbitrary upstream gradient, like weights / advantages
    results = []
    for fn in (_naive, lambda h, hd, t: target_logprobs(h, hd, t, chunk_tokens=chunk)):
        head.zero_grad(set_to_none=True)
        hidden = torch.randn(N, D, generator=torch.Generator().manual_seed(2), requires_grad=True)
        out = fn(hidden, head, targets)
        (out * grad_out).sum().backward()
        results.append((out.detach(), hidden.grad.clone(), head.A.grad.clone(), head.B.grad.clone()))
        assert head.weight.grad is None
    (ref, *ref_grads), (got, *got_grads) = results
    assert got.shape == targets.shape and got.dtype == torch.float32
    assert_close_rel(got, ref, rel=1e-5)
    for a, b in zip(got_grads, ref_grads):
        assert_close_rel(a, b, rel=1e-5)


def test_no_grad_and_bf16():
    head = LoraHead()
    hidden = torch.randn(N, D)
    targets = torch.randint(0, V, (N,))
    with torch.no_grad():
        got = target_logprobs(hidden, head, targets, chunk_tokens=8)
        ref = _naive(hidden, head, targets)
    assert not got.requires_grad
    assert_close_rel(got, ref, rel=1e-5)
    hb = hidden.bfloat16().requires_grad_()
    out = target_logprobs(hb, head, targets, chunk_tokens=8)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert hb.grad is not None and hb.grad.dtype == torch.bfloat16
    with torch.no_grad():  # float32 log-softmax over bf16 logits
        torch.testing.assert_close(out.detach(), _naive(hidden.bfloat16(), head, targets), atol=1e-5, rtol=1e-5)


def test_empty_rows_still_backprop():
    head = LoraHead()
    hidden = torch.randn(0, D, requires_grad=True)
    out = target_logprobs(hidden, head, torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0,)
    out.sum().backward()
    assert target_logprobs(hidden, head, torch.zeros(0, 2, dtype=torch.int64)).shape == (0, 2)


def test_topk_matches_full_log_softmax():
    head = LoraHead()
    hidden = torch.randn(N, D, requires_grad=True)
    values, ids = topk_logprobs(hidden, head, k=5, chunk_tokens=6)
    ref = torch.log_softmax(head(hidden).float(), -1).topk(5, dim=-1)
    assert values.dtype == torch.float32 and ids.dtype == torch.int64 and values.shape == (N, 5)
    assert not values.requires_grad
    assert_close_rel(values, ref.values.detach(), rel=1e-5)
    assert torch.equal(ids, ref.indices)


def test_forward_keeps_no_logits_for_backward():
    """What autograd saves between forward and backward must not scale with N x V."""
    head = LoraHead()
    n = 600
    hidden = torch.randn(n, D, requires_grad=True)
    targets = torch.randint(0, V, (n,))
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = target_logprobs(hidden, head, targets, chunk_tokens=64)
    out.sum().backward()
    assert hidden.grad is not None and head.B.grad is not None
    assert max(saved, default=0) < 64 * V  # no chunk's logits survive the forward pass
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        _naive(hidden, head, targets)
    assert max(saved) >= n * V  # sanity: the naive version does keep [N, V]


@pytest.mark.parametrize("chunk", [7, 1024])
def test_without_recompute_values_grads_and_saved_logits(chunk):
    """recompute=False: same values and gradients; the forward keeps the logits (N x V) for backward."""
    head = LoraHead()
    n = 50
    targets = torch.randint(0, V, (n,))
    grads = []
    for recompute in (True, False):
        head.zero_grad(set_to_none=True)
        hidden = torch.randn(n, D, generator=torch.Generator().manual_seed(3), requires_grad=True)
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = target_logprobs(hidden, head, targets, chunk_tokens=chunk, recompute=recompute)
        out.sum().backward()
        grads.append((out.detach(), hidden.grad, head.A.grad, head.B.grad))
        kept = sum(s for s in saved if s % V == 0 and s >= V)
        assert (kept >= n * V) == (not recompute)
    for a, b in zip(*grads):
        assert_close_rel(a, b, rel=1e-5)
    ref = _naive(torch.randn(n, D, generator=torch.Generator().manual_seed(3)), head, targets)
    assert_close_rel(grads[1][0], ref.detach(), rel=1e-5)


def test_fast_logsumexp_matches_torch():
    from lathe_worker.logprobs import logsumexp

    x = torch.randn(6, 1000) * torch.tensor([0.1, 1.0, 10.0, 100.0, 1000.0, 1.0])[:, None]
    x[5, 3:] = float("-inf")  # masked-out entries
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, -1, keepdim=True), atol=1e-5, rtol=1e-6)
    assert torch.equal(logsumexp(torch.full((1, 4), float("-inf"))), torch.full((1, 1), float("-inf")))


def test_head_chunk_tokens(monkeypatch):
    from lathe_worker.logprobs import head_chunk_tokens

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert head_chunk_tokens(32000, "cpu") == (16 << 20) // (32000 * 4)  # one chunk's logits <= 16 MiB
    assert head_chunk_tokens(151936, "cpu") == 64  # never fewer rows than this
    assert head_chunk_tokens(100, "cpu") == 1024
    assert head_chunk_tokens(151936, "cuda") == 1024
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 30))  # malloc tuned: freed chunks are reused
    assert head_chunk_tokens(32000, "cpu") == 1024
