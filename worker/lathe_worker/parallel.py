"""Tensor parallelism (Megatron-style) for the base model, over `torch.distributed` (gloo on CPU,
NCCL on CUDA), for models too large for one device.

What is sharded, per decoder layer, across the W ranks of the group:
- attention heads: q/k/v projections are column-parallel (each rank holds H/W query heads and Hkv/W
  KV heads, so the KV cache is sharded too), o_proj is row-parallel followed by an all-reduce;
- the MLP: gate/up are column-parallel (I/W intermediate columns), down is row-parallel + all-reduce.
The embeddings, the norms and the LM head stay replicated (every rank computes the same logits, so
losses and sampling need no further communication).

LoRA adapters are replicated on every rank, in full, and their math is exact:
- column-parallel base layer (rows lo:hi of W): the rank's output slice is `x A^T B[lo:hi]^T`;
- row-parallel base layer (columns lo:hi of W, input sharded): the rank adds `x_r A[:, lo:hi]^T B^T` to
  its partial product before the all-reduce, which sums `(Σ_r x_r A_r^T) B^T = x A^T B^T`.
Each rank's gradient of a sharded layer's factor is a partial sum (zero outside its slice), so the
factor's view is taken through `_ShardOfReplicated`, whose backward all-reduces it: after backward every
rank holds the full single-process gradient, and every replica's optimizer takes the same step.

Example (every rank of a torchrun group)::

    dist.init_process_group("gloo")
    engine = Engine(registry, sharding=TensorParallel.from_default_group())
    engine.load_model("lathe/tiny-qwen3")  # each rank reads only its slices of the checkpoint
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import UserError
from .frozen_matmul import FrozenMatmul
from .lora import FrozenLora, LoraAdapter, LoraBatch, MultiLoraLinear, linear_with_lora
from .models.transformer import Attention, Transformer

COLUMN, ROW = 0, 1  # the weight dimension a layer is split along: its outputs, or its inputs
_SPLIT = {"q_proj": COLUMN, "k_proj": COLUMN, "v_proj": COLUMN, "gate_proj": COLUMN, "up_proj": COLUMN,
          "o_proj": ROW, "down_proj": ROW}
_SHARDED_TENSOR = re.compile(r"^model\.layers\.\d+\.(?:self_attn|mlp)\.(\w+)\.(weight|bias)$")


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel group: `rank` of `world`, collectives over `group`
    (None = the default process group)."""

    rank: int
    world: int
    group: Any = None

    @classmethod
    def from_default_group(cls) -> TensorParallel:
        return cls(dist.get_rank(), dist.get_world_size())

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous [lo, hi) of n (n a multiple of the world size)."""
        size = n // self.world
        return self.rank * size, (self.rank + 1) * size

    def all_reduce(self, t: Tensor) -> Tensor:
        if self.world > 1:
            dist.all_reduce(t, group=self.group)
        return t

    # ---- the `ModelSharding` interface of `models.loading.load_model` -----------------------

    def check(self, model: Transformer) -> None:
        """A clear user error when the model cannot be split evenly over this group."""
        c = model.config
        for what, n in (("num_attention_heads", c.num_attention_heads), ("num_key_value_heads", c.num_key_value_heads),
                        ("intermediate_size", c.intermediate_size)):
            if n % self.world:
                raise UserError("unshardable_model", f"{what}={n} is not a multiple of the group's {self.world} ranks")

    def read(self, name: str, tensor_slice: Any) -> Tensor:
        """This rank's part of checkpoint tensor `name`, read from a safetensors slice."""
        match = _SHARDED_TENSOR.match(name)
        split = _SPLIT.get(match.group(1)) if match is not None else None
        if split is None or self.world == 1:  # embeddings, norms, LM head: replicated
            return tensor_slice[:]
        if match.group(2) == "bias" and split == ROW:
            return tensor_slice[:]  # a row-parallel layer adds its whole bias once, after the all-reduce
        lo, hi = self.span(tensor_slice.get_shape()[split])
        return tensor_slice[lo:hi] if split == COLUMN else tensor_slice[:, lo:hi]

    def apply(self, model: Transformer) -> None:
        """Replace every layer's projections by their sharded versions (on the meta device, before the
        checkpoint's slices are assigned) and shrink the attention modules to their local heads."""
        self.check(model)
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for attr, split in _SPLIT.items():
                    base = getattr(parent, attr, None)
                    if isinstance(base, MultiLoraLinear):
                        setattr(parent, attr, ShardedLoraLinear(base, self, split))
            attention: Attention = layer.self_attn
            attention.n_heads //= self.world
            attention.n_kv //= self.world
            # Each norm's output feeds only column-parallel layers (q/k/v, gate/up): one `f` there sums
            # their input gradients over ranks once, instead of once per projection.
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.register_forward_hook(self._copy_to_parallel_hook)

    def _copy_to_parallel_hook(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        return _CopyToParallel.apply(output, self) if torch.is_grad_enabled() and output.requires_grad else output


class _CopyToParallel(torch.autograd.Function):
    """Identity forward; backward sums the input gradient over ranks (each rank's column slice
    contributes a part of it). Megatron's `f`."""

    @staticmethod
    def forward(ctx, x: Tensor, tp: TensorParallel) -> Tensor:  # type: ignore[override]
        ctx.tp = tp
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.tp.all_reduce(grad.contiguous().clone()), None


class _ReduceFromParallel(torch.autograd.Function):
    """All-reduce (sum of the ranks' partial products) forward; identity backward. Megatron's `g`."""

    @staticmethod
    def forward(ctx, y: Tensor, tp: TensorParallel) -> Tensor:  # type: ignore[override]
        return tp.all_reduce(y.contiguous().clone())

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None


class _ShardOfReplicated(torch.autograd.Function):
    """`t.narrow(dim, lo, hi - lo)` of a replicated LoRA factor. Backward: the rank's gradient is a
    partial sum, zero outside its slice, so it is all-reduced to the full gradient of `t`."""

    @staticmethod
    def forward(ctx, t: Tensor, tp: TensorParallel, dim: int, lo: int, hi: int) -> Tensor:  # type: ignore[override]
        ctx.tp, ctx.dim, ctx.lo, ctx.shape = tp, dim, lo, t.shape
        return t.narrow(dim, lo, hi - lo)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        full = grad.new_zeros(ctx.shape)
        full.narrow(ctx.dim, ctx.lo, grad.shape[ctx.dim]).copy_(grad)
        return ctx.tp.all_reduce(full), None, None, None, None


class _ShardedFactors:
    """An adapter as one sharded layer sees it: `factors(path)` gives the factors this rank multiplies
    by (the slice of B for a column-parallel layer, of A for a row-parallel one)."""

    def __init__(self, adapter: LoraAdapter | FrozenLora, layer: ShardedLoraLinear) -> None:
        self.adapter, self.layer, self.scale = adapter, layer, adapter.scale

    def factors(self, module_path: str) -> tuple[Tensor, Tensor] | None:
        f = self.adapter.factors(module_path)
        if f is None:
            return None
        a, b = f
        layer = self.layer
        sliced, dim = (b, 0) if layer.split == COLUMN else (a, 1)
        whole = a if layer.split == COLUMN else b
        if not (torch.is_grad_enabled() and a.requires_grad):
            part = sliced.narrow(dim, layer.lo, layer.hi - layer.lo)
        else:
            part = _ShardOfReplicated.apply(sliced, layer.tp, dim, layer.lo, layer.hi)
            # The whole factor's gradient is also a partial sum over ranks.
            whole = _ShardOfReplicated.apply(whole, layer.tp, 0, 0, whole.shape[0])
        return (whole, part) if layer.split == COLUMN else (part, whole)


class ShardedLoraLinear(MultiLoraLinear):
    """A `MultiLoraLinear` whose frozen weight is split over the ranks of `tp`: along its outputs
    (`COLUMN`: the local output is this rank's slice; its input must come through `_CopyToParallel`,
    which `TensorParallel.apply` puts after each layer norm) or its inputs (`ROW`: the input is this rank's
    slice, the output the all-reduced full one). `in_features`/`out_features` stay the full sizes, which
    are the adapters' factor shapes."""

    def __init__(self, base: MultiLoraLinear, tp: TensorParallel, split: int) -> None:
        nn.Module.__init__(self)
        self.path, self.in_features, self.out_features = base.path, base.in_features, base.out_features
        self.tp, self.split = tp, split
        self.lo, self.hi = tp.span(self.out_features if split == COLUMN else self.in_features)
        n = self.hi - self.lo
        shape = (n, self.in_features) if split == COLUMN else (self.out_features, n)
        kw = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.weight = nn.Parameter(torch.empty(shape, **kw), requires_grad=False)
        self.bias = None
        if base.bias is not None:
            self.bias = nn.Parameter(torch.empty(n if split == COLUMN else self.out_features, **kw), requires_grad=False)
        self.matmul = FrozenMatmul()

    def forward(self, x: Tensor, lora: LoraBatch | None = None) -> Tensor:
        local = None if lora is None else LoraBatch(
            [(None if a is None else _ShardedFactors(a, self), s, e) for a, s, e in lora.groups])  # type: ignore[misc]
        if self.split == COLUMN:  # x came through `_CopyToParallel` (the norm before it, see `apply`)
            return linear_with_lora(x, self.weight, self.bias, self.path, local, self.matmul)
        y = linear_with_lora(x, self.weight, None, self.path, local, self.matmul)
        y = _ReduceFromParallel.apply(y, self.tp) if torch.is_grad_enabled() and y.requires_grad else self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        kind = "column" if self.split == COLUMN else "row"
        return f"{super().extra_repr()}, {kind}-parallel [{self.lo}:{self.hi}] of {self.tp.world}"


def sync_adapter(adapter: LoraAdapter, tp: TensorParallel, src: int = 0) -> None:
    """Make every rank's replica of `adapter` bit-identical to rank `src`'s (one broadcast of the
    flattened factors): insurance against replicas drifting apart by rounding, which would let ranks
    sample different tokens and fall out of lock-step."""
    if tp.world == 1:
        return
    params = list(adapter.parameters())
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        dist.broadcast(flat, src=src, group=tp.group)
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def num_params(model: Transformer) -> int:
    """The parameter count of the whole model, from one rank's part of it."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            sharded = isinstance(module, ShardedLoraLinear) and (name == "weight" or module.split == COLUMN)
            total += p.numel() * (module.tp.world if sharded else 1)  # type: ignore[union-attr]
    return total
