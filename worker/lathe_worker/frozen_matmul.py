"""`x W^T` for a frozen base weight W, on the fastest kernel the device offers.

On CPUs `F.linear` goes to MKL's sgemm, which on some CPUs (AMD's, where it skips its AVX-512 path) is
much slower than oneDNN on the same float32 shapes, most of all for the few-row products of
decoding (figures: `bench/RESULTS.md`, "base matmuls through oneDNN"). Base weights never change while adapters
train, so each is reordered once into oneDNN's blocked layout, and W^T likewise on the first backward
pass (the input gradient is `gy W`); the products then run through `mkldnn._linear_pointwise`.
Elsewhere (CUDA, a bias, other dtypes, a build without oneDNN, or `LATHE_CPU_ONEDNN=0`) it is plain
`F.linear`. The price is memory: one packed copy of the base weights, two once a backward pass has run
(a 100M-parameter float32 model: +400 MB, +800 MB). Set `LATHE_CPU_ONEDNN=0` where that does not fit.

Example::

    matmul = FrozenMatmul()
    y = matmul(x, layer.weight)  # == F.linear(x, layer.weight) up to float rounding
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows oneDNN is told to expect when it picks the packed layout; one layout for decoding (few rows) and
# training micro-batches (about 1024) alike, measured in `bench/RESULTS.md`.
_BATCH_HINT = 1024


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's packed linear ops and the user has not turned them off."""
    if os.environ.get("LATHE_CPU_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 - resolving the op is the check
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _onednn_dtypes() -> tuple[torch.dtype, ...]:
    """float32 always; bfloat16 only where oneDNN has a bf16 kernel for this CPU (AVX-512 BW/VL/DQ),
    since packing a bf16 weight fails on other CPUs."""
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    return (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)


def _packed_product(x: Tensor, packed: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [None], "")


class FrozenMatmul:
    """The matmul of one frozen weight, with its packed copies cached (rebuilt when the weight's
    storage, version or dtype changes, e.g. after a checkpoint is loaded into it). Writes that bypass
    autograd's version counter (`param.data.copy_(...)`) are not seen: change base weights through the
    Parameter itself (`with torch.no_grad(): param.copy_(...)`) or assign a new one."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._packed: Tensor | None = None
        self._packed_t: Tensor | None = None
        self._weight: Tensor | None = None
        self._dtypes: tuple[torch.dtype, ...] | None = None  # what oneDNN takes here; () when it is off

    def __deepcopy__(self, memo: dict) -> FrozenMatmul:
        return FrozenMatmul()  # packed copies belong to one weight; a copied module packs its own

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if not self._usable(x, weight, bias):
            return F.linear(x, weight, bias)
        key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
        if key != self._key:
            self._key, self._weight, self._packed_t = key, weight, None
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _BATCH_HINT)
        if torch.is_grad_enabled() and x.requires_grad:
            return _PackedLinear.apply(x, self)
        return _packed_product(x, self._packed)

    def packed(self) -> Tensor:
        assert self._packed is not None
        return self._packed

    def packed_transposed(self) -> Tensor:
        if self._packed_t is None:
            assert self._weight is not None
            w_t = self._weight.detach().t().contiguous()  # [in, out]: the input gradient is gy @ W
            self._packed_t = torch.ops.mkldnn._reorder_linear_weight(w_t, _BATCH_HINT)
        return self._packed_t

    def _usable(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
        if self._dtypes is None:
            self._dtypes = _onednn_dtypes() if onednn_available() else ()
        return (
            bias is None
            and weight.device.type == "cpu"
            and x.device.type == "cpu"
            and weight.dtype in self._dtypes
            and x.dtype == weight.dtype
            and not weight.requires_grad
            and weight.dim() == 2
            and x.dim() >= 2
            and x.shape[-1] == weight.shape[1]
            and x.numel() > 0
        )


class _PackedLinear(torch.autograd.Function):
    """y = x W^T with the packed W; backward gives x's gradient through the packed W^T (W is frozen)."""

    @staticmethod
    def forward(ctx, x: Tensor, matmul: FrozenMatmul) -> Tensor:  # type: ignore[override]
        ctx.matmul = matmul
        return _packed_product(x, matmul.packed())

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        return _packed_product(gy, ctx.matmul.packed_transposed()), None
