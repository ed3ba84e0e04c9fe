"""Float comparisons with tolerances relative to the magnitude of the values compared.

Two code paths that compute the same number (a batch alone or mixed with others, a merged weight or a
LoRA added at run time) sum in different orders; their difference grows with the size of the values,
and how large it gets also depends on the CPU's kernels. A fixed absolute tolerance on a loss of ~130
fails on one machine and passes on another, so every comparison here scales with the values."""

from __future__ import annotations

import torch


def assert_close_rel(actual, expected, rel: float) -> None:
    """Each element within `rel` of the largest |expected| (so values near zero, computed from large
    terms, are not held to their own tiny size) plus `rel` of its own size.

    Example: `assert_close_rel(mixed_logprobs, alone_logprobs, rel=1e-5)`
    """
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)
