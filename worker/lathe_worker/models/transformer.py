"""`Transformer`: a compact Qwen3 / Llama 3 decoder whose parameter names are the Hugging Face
checkpoint names, so an HF folder loads by name.

RMSNorm, RoPE (default and "llama3" scaling, inv_freq in float32 exactly as HF), GQA attention through
`F.scaled_dot_product_attention` (plain causal for right-padded training batches, else an explicit mask
built once per forward pass), optional per-head q/k RMSNorm (Qwen3),
SwiGLU MLP, tied or untied LM head. Every projection is a `MultiLoraLinear`, so one forward pass can
serve rows of many LoRA adapters. Masks and positions are always passed in by the caller: training
uses right padding, decoding uses left padding with a static `KVCache`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..frozen_matmul import FrozenMatmul
from ..lora import LoraAdapter, LoraBatch, MultiLoraLinear, linear_with_lora
from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype=None, device=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        # Same op order as HF: normalise in float32, cast back, then scale.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(config: ModelConfig) -> Tensor:
    """Inverse frequencies [head_dim / 2] in float32, incl. HF's "llama3" frequency scaling."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache:
    """Static per-layer K/V buffers [B, Hkv, max_len, head_dim]. `length` positions are filled (the
    same for all rows; per-row padding is the caller's business, through the attention mask). The cache
    advances `length` itself, once the last layer has written a forward pass's new positions."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype, device,
                 kv_heads: int | None = None) -> None:
        # kv_heads: the KV heads this process holds (fewer than the config's when tensor-parallel).
        shape = (batch_size, kv_heads or config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k/v [B, Hkv, T, hd] at `length`..`length+T`; return the filled prefix incl. them. Every
        layer of a pass writes at the same positions; the last one moves `length` past them."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} > max_len {self.max_len}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        filled = self.k[layer][:, :, :end], self.v[layer][:, :, :end]
        if layer == len(self.k) - 1:
            self.length = end
        return filled


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, prefix: str, dtype, device) -> None:
        super().__init__()
        c, kw = config, {"dtype": dtype, "device": device}
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q_out, kv_out = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        self.q_proj = MultiLoraLinear(f"{prefix}.q_proj", c.hidden_size, q_out, c.attention_bias, **kw)
        self.k_proj = MultiLoraLinear(f"{prefix}.k_proj", c.hidden_size, kv_out, c.attention_bias, **kw)
        self.v_proj = MultiLoraLinear(f"{prefix}.v_proj", c.hidden_size, kv_out, c.attention_bias, **kw)
        self.o_proj = MultiLoraLinear(f"{prefix}.o_proj", q_out, c.hidden_size, c.attention_bias, **kw)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, **kw)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, **kw)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, lora: LoraBatch | None,
                cache: KVCache | None, layer: int) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x, lora).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x, lora).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x, lora).view(B, T, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(layer, k, v)
        o = attention(q, k, v, mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1), lora)


def _gqa_supported(q: Tensor) -> bool:
    """Whether SDPA's own `enable_gqa` runs a fused kernel here (no mask). On CUDA only the flash
    kernel (fp16/bf16) and the math kernel take it, so float32 on CUDA would fall back to math."""
    if q.device.type == "cuda":
        return q.dtype in (torch.float16, torch.bfloat16)
    return q.device.type == "cpu"


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """SDPA for q [B, H, T, hd], k/v [B, Hkv, S, hd] (H a multiple of Hkv; query head h uses KV head
    h // (H / Hkv)). `mask`: None = causal with S == T (right padding: real tokens only ever see
    earlier real tokens); else an additive float mask from `Transformer.prepare_mask`."""
    B, H, T, hd = q.shape
    n_kv = k.shape[1]
    if mask is None:
        if n_kv != H and _gqa_supported(q):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if n_kv != H:
            k = k.repeat_interleave(H // n_kv, dim=1)
            v = v.repeat_interleave(H // n_kv, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if n_kv == H:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # GQA with a mask: fold the G query heads that share a KV head into the query-length axis, so that
    # K/V (a whole KV cache when decoding) are never copied. The mask was prepared as [B, 1, G*T, S]
    # (or [B, 1, 1, S] when T == 1, which broadcasts). The fused kernels that accept an arbitrary mask
    # do not all take enable_gqa, and repeat_interleave would copy K/V every call.
    G = H // n_kv
    o = F.scaled_dot_product_attention(q.reshape(B, n_kv, G * T, hd), k, v, attn_mask=mask)
    return o.view(B, H, T, hd)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, prefix: str, dtype, device) -> None:
        super().__init__()
        D, I, kw = config.hidden_size, config.intermediate_size, {"dtype": dtype, "device": device}
        self.gate_proj = MultiLoraLinear(f"{prefix}.gate_proj", D, I, **kw)
        self.up_proj = MultiLoraLinear(f"{prefix}.up_proj", D, I, **kw)
        self.down_proj = MultiLoraLinear(f"{prefix}.down_proj", I, D, **kw)

    def forward(self, x: Tensor, lora: LoraBatch | None) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x, lora)) * self.up_proj(x, lora), lora)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, idx: int, dtype, device) -> None:
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.idx = idx
        self.self_attn = Attention(config, f"model.layers.{idx}.self_attn", **kw)
        self.mlp = MLP(config, f"model.layers.{idx}.mlp", **kw)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, lora: LoraBatch | None,
                cache: KVCache | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, lora, cache, self.idx)
        return x + self.mlp(self.post_attention_layernorm(x), lora)


class Embedding(nn.Module):
    """nn.Embedding without its random init (pointless for loaded weights, slow at 150k x D)."""

    def __init__(self, num: int, dim: int, dtype=None, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, dim, dtype=dtype, device=device), requires_grad=False)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)


class Backbone(nn.Module):
    """The `model.` prefix of the HF names."""

    def __init__(self, config: ModelConfig, dtype, device) -> None:
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, **kw)
        self.layers = nn.ModuleList(DecoderLayer(config, i, **kw) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig, dtype=torch.float32, device=None) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config, dtype, device)
        # Tied: no lm_head parameter at all (HF checkpoints omit it too); the embedding is reused.
        self.lm_head = None if config.tie_word_embeddings else MultiLoraLinear(
            "lm_head", config.hidden_size, config.vocab_size, dtype=dtype, device=device)
        self._lm_head_matmul = self.lm_head.matmul if self.lm_head is not None else FrozenMatmul()
        self.requires_grad_(False)  # base weights are frozen; only LoRA factors train
        # A plain attribute, not a buffer: model.to(bfloat16) must not round the RoPE frequencies,
        # and a model built on the meta device still gets real values.
        self._inv_freq = rope_inv_freq(config)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def kv_heads(self) -> int:
        """The KV heads this process's layers hold (all of them, unless the model is tensor-parallel)."""
        layers = self.model.layers
        return layers[0].self_attn.n_kv if len(layers) else self.config.num_key_value_heads

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def rope(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin [B, 1, T, head_dim], computed in float32 and cast like HF does."""
        if self._inv_freq.device != position_ids.device:
            self._inv_freq = self._inv_freq.to(position_ids.device)
        freqs = position_ids.float()[..., None] * self._inv_freq  # [B, T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids: Tensor, position_ids: Tensor, attn_mask: Tensor | None,
                lora: LoraBatch | None = None, cache: KVCache | None = None) -> Tensor:
        """input_ids/position_ids [B, T]; attn_mask bool [B, T, S] (True = may attend) with
        S = T, or cache.length + T when decoding with `cache` (the new K/V are written at
        cache.length.., and the cache advances by T); or an additive float mask of that shape; or None
        for a plain causal mask, which is exact for RIGHT-padded rows (a real token only ever sees
        earlier real tokens; the outputs at padding positions are garbage and must be ignored).
        Returns final-normed hidden states [B, T, D]."""
        T = input_ids.shape[1]
        if attn_mask is None and cache is not None and cache.length:
            raise ValueError("attn_mask=None (causal) needs an empty KV cache")
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rope(position_ids, x.dtype)
        mask = self.prepare_mask(attn_mask, T, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, lora, cache)
        return self.model.norm(x)

    def prepare_mask(self, attn_mask: Tensor | None, T: int, dtype: torch.dtype) -> Tensor | None:
        """The mask every layer's `attention` takes, built once per forward pass (SDPA would otherwise
        turn a boolean mask into a float one in every layer): additive, in the activation dtype,
        [B, 1, T, S]; with GQA and T > 1 the rows are repeated per query head of a KV group,
        [B, 1, G*T, S] (see `attention`)."""
        if attn_mask is None:
            return None
        if attn_mask.dtype == torch.bool:
            mask = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device)
            mask.masked_fill_(~attn_mask, float("-inf"))
        else:
            mask = attn_mask.to(dtype)
        if mask.dim() == 3:
            mask = mask[:, None]
        cfg = self.config
        G = cfg.num_attention_heads // cfg.num_key_value_heads
        if G > 1 and T > 1:
            B, _, _, S = mask.shape
            mask = mask[:, :, None].expand(B, 1, G, T, S).reshape(B, 1, G * T, S)
        return mask

    def lm_head_weight(self) -> Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def lm_head_logits(self, hidden: Tensor, adapter: LoraAdapter | None = None,
                       lora: LoraBatch | None = None) -> Tensor:
        """hidden [..., D] -> logits [..., V] in hidden's dtype. The 'lm_head' LoRA (if any) of
        `adapter` (all rows), or of each row group of `lora` (groups over dim 0), is applied on the
        output side only, also when the embeddings are tied. The base matmul runs once for all rows;
        the low-rank deltas are added in place."""
        if lora is None and adapter is not None:
            lora = LoraBatch.single(adapter, hidden.shape[0])
        return linear_with_lora(hidden, self.lm_head_weight(), None, "lm_head", lora, self._lm_head_matmul)

    def lora_targets(self) -> list[tuple[str, int, int]]:
        """(module_path, in_features, out_features) of every LoRA-able module, in a fixed order:
        per layer q, k, v, o, gate, up, down; then lm_head."""
        out = [(m.path, m.in_features, m.out_features) for m in self.modules()
               if isinstance(m, MultiLoraLinear) and m.path != "lm_head"]
        return out + [("lm_head", self.config.hidden_size, self.config.vocab_size)]


def causal_padding_mask(lengths: Tensor, total_len: int, left_padded: bool = False) -> Tensor:
    """bool [B, T, T]: query i may attend key j iff j <= i and j is a real token (the first
    `lengths[b]` positions, or the last ones if `left_padded`). The diagonal is always allowed so
    padding queries never see an all-False row (which would make SDPA return NaN)."""
    pos = torch.arange(total_len, device=lengths.device)
    if left_padded:
        real = pos[None, :] >= (total_len - lengths)[:, None]
    else:
        real = pos[None, :] < lengths[:, None]
    causal = pos[None, :, None] >= pos[None, None, :]
    diag = torch.eye(total_len, dtype=torch.bool, device=lengths.device)[None]
    return (causal & real[:, None, :]) | diag
