"""Chunked LM head: log-probs of target tokens without materialising tokens × vocabulary logits.

With a 150k vocabulary, full logits for a few thousand tokens take gigabytes (plus as much again for
log_softmax and its gradient). Here the head runs on `chunk_tokens` rows at a time; in training every
chunk is wrapped in a non-reentrant activation checkpoint, so backward recomputes that chunk's logits
instead of keeping them. Peak memory is therefore O(chunk_tokens × V), independent of N. Callers whose
N × V logits fit a memory budget pass `recompute=False` and save the second head matmul (see `Engine`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Head = Callable[[Tensor], Tensor]


class _GatherLogprob(torch.autograd.Function):
    """`log_softmax(logits)[targets]` in float32, saving only `logits` (needed anyway) for backward.

    The autograd version of log_softmax + gather keeps the [n, V] log_softmax output and builds two more
    [n, V] gradients; this builds one float32 [n, V] gradient and works on it in place.
    The fused (log_)softmax kernels are used rather than `logsumexp` / `exp(logits - lse)`: on CPU the
    vectorised `exp` takes a slow path for very negative arguments, which a peaked next-token
    distribution has in abundance (an order of magnitude slower; `bench/RESULTS.md`, "Training LM head").
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        out = torch.log_softmax(logits, dim=-1, dtype=torch.float32).gather(-1, targets)  # [n, K]
        ctx.save_for_backward(logits, targets)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        logits, targets = ctx.saved_tensors
        # d/dlogits sum_k g_k (logits[t_k] - lse) = scatter(g) - softmax * sum_k g_k
        grad = torch.softmax(logits, dim=-1, dtype=torch.float32)
        grad.mul_(-grad_out.sum(-1, keepdim=True))
        grad.scatter_add_(-1, targets, grad_out.to(grad.dtype))
        return grad.to(logits.dtype), None


def logsumexp(x: Tensor) -> Tensor:
    """logsumexp over the last dim (float32 x), keepdim. Terms below e^-80 of the largest are counted as
    e^-80 (relative error < V * 2e-35), which keeps the CPU `exp` off its slow path for very negative
    arguments: several times faster than `torch.logsumexp` on peaked logits."""
    m = x.amax(-1, keepdim=True)
    finite = torch.isfinite(m)
    m0 = torch.where(finite, m, torch.zeros_like(m))
    out = (x - m0).clamp_(min=-80.0).exp_().sum(-1, keepdim=True).log_().add_(m0)
    return torch.where(finite, out, m)  # rows whose largest entry is +-inf


def _chunk_logprobs(head: Head, h: Tensor, t: Tensor) -> Tensor:
    return _GatherLogprob.apply(head(h), t)


def head_chunk_tokens(vocab_size: int, device: torch.device | str, itemsize: int = 4) -> int:
    """Rows per LM-head chunk for the engine. On an accelerator: 1024 (memory is the limit; bigger chunks
    mean fewer launches). On CPU a chunk's logits stay within `cpu_chunk_bytes()`, and between
    MIN_CHUNK_TOKENS and 1024 rows: fewer, fuller chunks make fewer passes over the [V, D] weight, but with
    glibc's default malloc every block above ~32 MiB is a fresh mmap that is page-faulted in 4 KiB at a
    time (costly on a VM; `bench/RESULTS.md`, "Allocator")."""
    if torch.device(device).type != "cpu":
        return 1024
    return min(1024, max(MIN_CHUNK_TOKENS, cpu_chunk_bytes() // max(1, vocab_size * itemsize)))


MIN_CHUNK_TOKENS = 64


def cpu_chunk_bytes() -> int:
    """16 MiB, or 128 MiB when this process runs with a raised glibc mmap threshold (as `python -m
    lathe_worker` does, see malloc_env.py), so that freed chunks are reused from the heap."""
    try:
        threshold = int(os.environ.get("MALLOC_MMAP_THRESHOLD_", "0"))
    except ValueError:
        threshold = 0
    return 128 << 20 if threshold >= 128 << 20 else 16 << 20


def target_logprobs(hidden: Tensor, head: Head, targets: Tensor, chunk_tokens: int = 1024,
                    recompute: bool = True) -> Tensor:
    """log_softmax(head(hidden)) at `targets`: hidden [N, D], targets int64 [N] or [N, K] -> float32 of
    the targets' shape. Gradients flow to `hidden` and to any parameters inside `head`.

    With grad enabled and `recompute` (the default) every chunk runs under an activation checkpoint, so
    the forward keeps no logits and backward recomputes them: peak memory O(chunk_tokens x V) whatever N.
    `recompute=False` keeps every chunk's logits for backward (N x V in the logits' dtype) and saves one
    head matmul per chunk: for callers that know N x V fits their memory budget."""
    if hidden.dim() != 2 or targets.dim() not in (1, 2) or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"bad shapes: hidden {tuple(hidden.shape)}, targets {tuple(targets.shape)}")
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be >= 1")
    one_d = targets.dim() == 1
    t2 = targets.unsqueeze(-1) if one_d else targets
    n = hidden.shape[0]
    if n == 0:
        # Keep the result attached to the graph so that a sum over empty datums can still backward().
        out = hidden.float().sum(-1, keepdim=True).expand(0, t2.shape[1])
    elif not torch.is_grad_enabled() or not recompute:
        parts = [_chunk_logprobs(head, hidden[s : s + chunk_tokens], t2[s : s + chunk_tokens])
                 for s in range(0, n, chunk_tokens)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
    else:
        # Non-reentrant checkpoint: forward keeps no chunk activations; backward reruns head on the chunk,
        # so gradients reach LoRA parameters inside `head` as well as `hidden`.
        parts = [
            checkpoint(_chunk_logprobs, head, hidden[s : s + chunk_tokens], t2[s : s + chunk_tokens],
                       use_reentrant=False, preserve_rng_state=False)
            for s in range(0, n, chunk_tokens)
        ]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out.squeeze(-1) if one_d else out


@torch.no_grad()
def log_softmax_chunks(hidden: Tensor, head: Head, start: int = 0, chunk_tokens: int = 1024) -> Iterator[tuple[int, Tensor]]:
    """One no-grad LM-head pass over rows `start:` of hidden [N, D], `chunk_tokens` rows at a time: yields
    (first row of the chunk, float32 log_softmax(head(rows)) [rows, V]). At most one chunk's logits are
    alive at once, so a caller deriving several per-row outputs (top-k, gathers, draws) pays for one pass.

    >>> for s, lp in log_softmax_chunks(h, head, chunk_tokens=256): ...  # doctest: +SKIP
    """
    if hidden.dim() != 2 or chunk_tokens < 1:
        raise ValueError(f"bad arguments: hidden {tuple(hidden.shape)}, chunk_tokens={chunk_tokens}")
    for s in range(start, hidden.shape[0], chunk_tokens):
        yield s, torch.log_softmax(head(hidden[s : s + chunk_tokens]), dim=-1, dtype=torch.float32)


def topk_rows(logprobs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each row's k largest entries of logprobs [N, V]: (values [N, k], ids int64 [N, k]), descending."""
    top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return top.values, top.indices.to(torch.int64)


@torch.no_grad()
def topk_logprobs(hidden: Tensor, head: Head, k: int, chunk_tokens: int = 1024) -> tuple[Tensor, Tensor]:
    """Top-k log-probs per row (for prompt top-k logprobs): (values [N, k] float32, ids [N, k] int64),
    sorted by descending log-prob."""
    if k < 1:
        raise ValueError(f"bad arguments: k={k}")
    parts = [topk_rows(lp, k) for _, lp in log_softmax_chunks(hidden, head, chunk_tokens=chunk_tokens)]
    if not parts:
        return hidden.new_zeros((0, k), dtype=torch.float32), torch.zeros((0, k), dtype=torch.int64, device=hidden.device)
    return torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])
