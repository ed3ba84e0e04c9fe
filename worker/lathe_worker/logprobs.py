"""Chunked LM head: log-probs of target tokens without materialising tokens × vocabulary logits.

With a 150k vocabulary, full logits for a few thousand tokens take gigabytes (plus as much again for
log_softmax and its gradient). Here the head runs on `chunk_tokens` rows at a time; in training every
chunk is wrapped in a non-reentrant activation checkpoint, so backward recomputes that chunk's logits
instead of keeping them. Peak memory is therefore O(chunk_tokens × V), independent of N.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Head = Callable[[Tensor], Tensor]


class _GatherLogprob(torch.autograd.Function):
    """`log_softmax(logits)[targets]` in float32, saving only `logits` and the log-sum-exp.

    The autograd version of log_softmax + gather keeps the [n, V] log_softmax output and builds two more
    [n, V] gradients; this keeps the logits (needed anyway) and builds one float32 [n, V] gradient in place.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        lse = torch.logsumexp(logits.float(), dim=-1, keepdim=True)  # [n, 1]
        out = logits.gather(-1, targets).float() - lse  # [n, K]
        ctx.save_for_backward(logits, targets, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        logits, targets, lse = ctx.saved_tensors
        # d/dlogits sum_k g_k (logits[t_k] - lse) = scatter(g) - softmax * sum_k g_k
        grad = logits.float().sub(lse).exp_()  # .float() copies only for non-float32 logits
        grad.mul_(-grad_out.sum(-1, keepdim=True))
        grad.scatter_add_(-1, targets, grad_out.to(grad.dtype))
        return grad.to(logits.dtype), None


def _chunk_logprobs(head: Head, h: Tensor, t: Tensor) -> Tensor:
    return _GatherLogprob.apply(head(h), t)


def target_logprobs(hidden: Tensor, head: Head, targets: Tensor, chunk_tokens: int = 1024) -> Tensor:
    """log_softmax(head(hidden)) at `targets`: hidden [N, D], targets int64 [N] or [N, K] -> float32 of
    the targets' shape. Gradients flow to `hidden` and to any parameters inside `head`."""
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
    elif not torch.is_grad_enabled():
        out = torch.cat([_chunk_logprobs(head, hidden[s : s + chunk_tokens], t2[s : s + chunk_tokens])
                         for s in range(0, n, chunk_tokens)])
    else:
        # Non-reentrant checkpoint: forward keeps no chunk activations; backward reruns head on the chunk,
        # so gradients reach LoRA parameters inside `head` as well as `hidden`.
        out = torch.cat([
            checkpoint(_chunk_logprobs, head, hidden[s : s + chunk_tokens], t2[s : s + chunk_tokens],
                       use_reentrant=False, preserve_rng_state=False)
            for s in range(0, n, chunk_tokens)
        ])
    return out.squeeze(-1) if one_d else out


@torch.no_grad()
def topk_logprobs(hidden: Tensor, head: Head, k: int, chunk_tokens: int = 1024) -> tuple[Tensor, Tensor]:
    """Top-k log-probs per row (for prompt top-k logprobs): (values [N, k] float32, ids [N, k] int64),
    sorted by descending log-prob."""
    if hidden.dim() != 2 or chunk_tokens < 1 or k < 1:
        raise ValueError(f"bad arguments: hidden {tuple(hidden.shape)}, k={k}, chunk_tokens={chunk_tokens}")
    values, ids = [], []
    for s in range(0, hidden.shape[0], chunk_tokens):
        logits = head(hidden[s : s + chunk_tokens]).float()
        top = logits.topk(min(k, logits.shape[-1]), dim=-1)  # ranking by logit == ranking by log-prob
        values.append(top.values - torch.logsumexp(logits, dim=-1, keepdim=True))
        ids.append(top.indices)
    if not values:
        return hidden.new_zeros((0, k), dtype=torch.float32), torch.zeros((0, k), dtype=torch.int64, device=hidden.device)
    return torch.cat(values), torch.cat(ids).to(torch.int64)
