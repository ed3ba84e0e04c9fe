"""LoRA for many adapters at once.

`y = W x + (alpha / r) * B (A x)`, alpha per adapter (`LoraConfig.alpha`, default `LORA_ALPHA`). A batch
may mix rows of different adapters (and of the plain base model): `LoraBatch.groups` says which
contiguous row range uses which adapter.
`MultiLoraLinear` does the frozen base matmul once for the whole batch and adds each group's low-rank
delta on its row slice, so one forward/backward pass trains many adapters together.

Adapter factors live in float32 (optimizer precision) and are cast to the activation dtype in the
forward pass; the autograd graph reaches A and B through that cast, never the frozen base weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError
from .frozen_matmul import FrozenMatmul

LORA_ALPHA = 32
ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
UNEMBED_TARGET = "lm_head"


class HasLoraTargets(Protocol):
    """A model that adapters can be made for (e.g. `models.transformer.Transformer`); this module needs
    no more of it, so it does not import the model (which imports this module)."""

    def lora_targets(self) -> list[tuple[str, int, int]]:
        """(module_path, in_features, out_features) of every LoRA-able module, in a fixed order."""
        ...


@dataclass(frozen=True)
class LoraConfig:
    """Tinker's `LoraConfig` fields, plus `alpha`, which Tinker's create_model does not carry (so it is
    `LORA_ALPHA` for every adapter made over the wire; a checkpoint records its adapter's alpha).

    Example: `LoraAdapter.create(model, LoraConfig(rank=8, seed=1, alpha=16))` scales deltas by 16 / 8.
    """

    rank: int = 32
    seed: int | None = None
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True
    alpha: float = LORA_ALPHA

    def validate(self) -> None:
        r = self.rank
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0 or r & (r - 1):
            raise UserError("invalid_lora_rank", f"LoRA rank must be a positive power of 2, got {r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0:
            raise UserError("invalid_lora_alpha", f"LoRA alpha must be a finite number > 0, got {a!r}")
        if not (self.train_attn or self.train_mlp or self.train_unembed):
            raise UserError(
                "invalid_lora_targets",
                "at least one of train_attn, train_mlp, train_unembed must be true",
            )

    def targets(self, module_path: str) -> bool:
        """Whether this config puts a LoRA on the module at `module_path`."""
        leaf = module_path.rsplit(".", 1)[-1]
        return (
            (self.train_attn and leaf in ATTN_TARGETS)
            or (self.train_mlp and leaf in MLP_TARGETS)
            or (self.train_unembed and module_path == UNEMBED_TARGET)
        )


def _key(module_path: str) -> str:
    # ParameterDict keys may not contain '.'; module paths never contain '__'.
    return module_path.replace(".", "__")


class LoraAdapter(nn.Module):
    """A [r, in] and B [out, r] for every targeted module, float32, keyed by module path
    (e.g. 'model.layers.0.self_attn.q_proj', 'lm_head'). `parameters()` yields exactly these."""

    def __init__(self, config: LoraConfig, shapes: dict[str, tuple[int, int]], device=None) -> None:
        """Zero-filled factors for `shapes` = {module_path: (in_features, out_features)}; use
        `create` for a PEFT-style initialisation."""
        super().__init__()
        config.validate()
        self.config = config
        self.scale = config.alpha / config.rank
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for path, (n_in, n_out) in shapes.items():
            self.lora_A[_key(path)] = nn.Parameter(torch.zeros(config.rank, n_in, device=device))
            self.lora_B[_key(path)] = nn.Parameter(torch.zeros(n_out, config.rank, device=device))
        self._paths = list(shapes)

    @classmethod
    def create(cls, model: HasLoraTargets, config: LoraConfig, device=None) -> LoraAdapter:
        """A ~ kaiming_uniform(a=sqrt(5)) as PEFT does, B = 0, so a fresh adapter is a no-op.
        A is drawn on the CPU from a generator seeded by `config.seed` (0 if None), in the
        deterministic order of `model.lora_targets()`, so the same seed gives the same adapter on
        any device."""
        config.validate()
        shapes = {p: (i, o) for p, i, o in model.lora_targets() if config.targets(p)}
        adapter = cls(config, shapes, device="cpu")
        gen = torch.Generator().manual_seed(0 if config.seed is None else config.seed)
        with torch.no_grad():
            for path in shapes:
                nn.init.kaiming_uniform_(adapter.lora_A[_key(path)], a=math.sqrt(5), generator=gen)
        return adapter.to(device) if device is not None else adapter

    def factors(self, module_path: str) -> tuple[Tensor, Tensor] | None:
        k = _key(module_path)
        if k not in self.lora_A:
            return None
        return self.lora_A[k], self.lora_B[k]

    def named_factors(self) -> Iterator[tuple[str, Tensor, Tensor]]:
        for path in self._paths:
            k = _key(path)
            yield path, self.lora_A[k], self.lora_B[k]


def _scaled(t: Tensor, scale: float) -> Tensor:
    """t * scale in place; nothing at all for the usual scale 1 (rank 32), one kernel less per module."""
    return t if scale == 1.0 else t.mul_(scale)


class _GroupedLoraAdd(torch.autograd.Function):
    """`y[s:e] += scale_g * (x[s:e] A_g^T) B_g^T` for every group g, IN PLACE on y (2-D, [N, out]).

    Autograd's own in-place add on a row slice (`y[s:e] += delta`) goes through `CopySlices`, which clones
    the whole [N, out] output gradient once per group in backward, and `y + delta` allocates another
    [N, out] tensor in forward. Here forward is one small [n, r] matmul plus an `addmm_` into y per group,
    and backward passes y's gradient through untouched and computes only the low-rank pieces.
    Only the [n, r] products `x A^T` are saved (besides x and the factors, which are alive anyway).
    """

    @staticmethod
    def forward(ctx, y: Tensor, x: Tensor, spans: list[tuple[int, int, float]], *factors: Tensor) -> Tensor:  # type: ignore[override]
        xas = []
        for (s, e, scale), a, b in zip(spans, factors[0::2], factors[1::2]):
            xa = _scaled(torch.mm(x[s:e], a.t()), scale)  # [n, r]
            y[s:e].addmm_(xa, b.t())
            xas.append(xa)
        ctx.mark_dirty(y)
        ctx.spans = spans
        ctx.save_for_backward(x, *xas, *factors)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        spans = ctx.spans
        saved = ctx.saved_tensors
        x, xas, factors = saved[0], saved[1 : 1 + len(spans)], saved[1 + len(spans) :]
        need_x = ctx.needs_input_grad[1]
        gx = None
        if need_x:
            gx = torch.zeros_like(x) if sum(e - s for s, e, _ in spans) < x.shape[0] else torch.empty_like(x)
        grads: list[Tensor | None] = []
        for (s, e, scale), xa, a, b in zip(spans, xas, factors[0::2], factors[1::2]):
            g = gy[s:e]
            gxa = _scaled(torch.mm(g, b), scale)  # d/d(x A^T), scale folded in: [n, r]
            grads.append(torch.mm(gxa.t(), x[s:e]))  # dA [r, in]
            grads.append(torch.mm(g.t(), xa))  # dB [out, r]
            if need_x:
                torch.mm(gxa, a, out=gx[s:e])
        return (gy, gx, None, *grads)


def linear_with_lora(x: Tensor, weight: Tensor, bias: Tensor | None, path: str, lora: LoraBatch | None,
                     matmul: FrozenMatmul | None = None) -> Tensor:
    """`F.linear(x, weight, bias)` for x [B, ..., in] plus each row group's LoRA delta for module `path`,
    groups over dim 0 of x. One base matmul for the whole batch (through `matmul`, the frozen weight's
    fast kernel, when given); the deltas are added in place."""
    base = matmul if matmul is not None else F.linear
    spans: list[tuple[int, int, float]] = []
    factors: list[Tensor] = []
    dtype = x.dtype
    for adapter, start, end in lora.groups if lora is not None else ():
        f = adapter.factors(path) if adapter is not None and end > start else None
        if f is not None:
            spans.append((start, end, adapter.scale))
            a, b = f
            factors += [a if a.dtype == dtype else a.to(dtype), b if b.dtype == dtype else b.to(dtype)]
    if not spans:
        return base(x, weight, bias)
    # Rows [start, end) over dim 0 are rows [start * m, end * m) of the flattened 2-D input.
    m = math.prod(x.shape[1:-1])
    if m != 1:
        spans = [(s * m, e * m, scale) for s, e, scale in spans]
    x2 = x.reshape(-1, x.shape[-1])
    # The base output is made 2-D (not viewed to 2-D) so that the in-place update is on a base tensor:
    # an in-place custom Function on a view would make autograd wrap it in CopySlices again.
    y2 = base(x2, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or any(f.requires_grad for f in factors)):
        y2 = _GroupedLoraAdd.apply(y2, x2, spans, *factors)
    else:  # no autograd: the same arithmetic without the Function machinery (decoding runs this a lot)
        for (s, e, scale), a, b in zip(spans, factors[0::2], factors[1::2]):
            y2[s:e].addmm_(_scaled(torch.mm(x2[s:e], a.t()), scale), b.t())
    return y2.view(*x.shape[:-1], y2.shape[-1])


@dataclass
class LoraBatch:
    """Which rows of a batch use which adapter: (adapter or None for the base model, start, end)
    over batch dim 0. Groups are contiguous and in order; together they cover every row."""

    groups: list[tuple[LoraAdapter | FrozenLora | None, int, int]]

    def __post_init__(self) -> None:
        pos = 0
        for _, start, end in self.groups:
            if start != pos or end < start:
                raise ValueError(f"LoraBatch groups must be contiguous from row 0: {self.groups}")
            pos = end

    @classmethod
    def single(cls, adapter: LoraAdapter | None, batch_size: int) -> LoraBatch:
        return cls([(adapter, 0, batch_size)])

    @classmethod
    def from_rows(cls, row_adapters: list[LoraAdapter | None]) -> LoraBatch:
        """The groups of rows whose adapters are given row by row (rows of one adapter must be adjacent)."""
        groups: list[tuple[LoraAdapter | FrozenLora | None, int, int]] = []
        for row, adapter in enumerate(row_adapters):
            if groups and groups[-1][0] is adapter:
                groups[-1] = (adapter, groups[-1][1], row + 1)
            else:
                groups.append((adapter, row, row + 1))
        return cls(groups)

    def frozen(self, dtype: torch.dtype) -> LoraBatch:
        """The same groups with each adapter replaced by a `FrozenLora` in `dtype` (for no-grad passes)."""
        return LoraBatch([(FrozenLora(a, dtype) if a is not None else None, s, e) for a, s, e in self.groups])


class FrozenLora:
    """An adapter's factors for passes without autograd (decoding), made once per call instead of at every
    step: cast to the activation dtype, with the scale folded into A when it is a power of two (alpha 32
    and a power-of-two rank, the default), where scaling is exact and results are bit-identical. On an
    accelerator this turns five kernels per module and step (two casts, two matmuls, a scale) into two.
    Any other scale (a custom alpha) stays separate, applied where the unfolded adapter applies it.

    Example: `model(ids, pos, mask, lora=LoraBatch.single(adapter, n).frozen(torch.bfloat16))`
    """

    def __init__(self, adapter: LoraAdapter, dtype: torch.dtype) -> None:
        fold = math.frexp(adapter.scale)[0] == 0.5
        self.scale = 1.0 if fold else adapter.scale
        with torch.no_grad():
            self._factors = {
                path: ((a * adapter.scale if fold and adapter.scale != 1.0 else a).to(dtype), b.to(dtype))
                for path, a, b in adapter.named_factors()
            }

    def factors(self, module_path: str) -> tuple[Tensor, Tensor] | None:
        return self._factors.get(module_path)


class MultiLoraLinear(nn.Module):
    """A frozen linear layer (`.weight` [out, in], optional `.bias`, HF names) that adds each row
    group's LoRA delta. `path` is its module path, which is how adapters name their factors."""

    def __init__(self, path: str, in_features: int, out_features: int, bias: bool = False,
                 dtype=None, device=None) -> None:
        super().__init__()
        self.path = path
        self.in_features, self.out_features = in_features, out_features
        kw = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, **kw), requires_grad=False) if bias else None
        self.matmul = FrozenMatmul()

    def forward(self, x: Tensor, lora: LoraBatch | None = None) -> Tensor:
        return linear_with_lora(x, self.weight, self.bias, self.path, lora, self.matmul)

    def extra_repr(self) -> str:
        return f"{self.path}: in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"
