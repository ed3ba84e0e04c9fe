"""`ModelConfig`: the fields of a Hugging Face `config.json` that our decoder uses, for the two
supported families (Qwen3 and Llama 3). Anything we cannot run exactly is rejected up front with a
`UserError`, rather than silently producing a different model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..errors import UserError

_ARCH_CLASSES = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _unsupported(what: str) -> UserError:
    return UserError("unsupported_architecture", f"unsupported model configuration: {what}")


def _normalize_rope_scaling(scaling: dict | None) -> dict | None:
    """None for plain RoPE, else a llama3 dict with the HF keys. Other scalings (yarn, linear,
    dynamic, ...) would change the numerics, so they are refused."""
    if not scaling:
        return None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type != "llama3":
        raise _unsupported(f"rope scaling type {rope_type!r} (supported: default, llama3)")
    missing = [k for k in _LLAMA3_KEYS if k not in scaling]
    if missing:
        raise _unsupported(f"llama3 rope scaling is missing {missing}")
    out: dict[str, Any] = {k: float(scaling[k]) for k in _LLAMA3_KEYS[:3]}
    out["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
    out["rope_type"] = "llama3"
    return out


@dataclass(frozen=True)
class ModelConfig:
    architecture: Literal["qwen3", "llama"]
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # llama3 rope scaling dict as in HF (rope_type, factor, ...), else None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (Qwen3)
    attention_bias: bool

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise _unsupported(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise _unsupported(f"head_dim={self.head_dim} must be even for RoPE")

    @classmethod
    def from_hf_dict(cls, d: dict) -> ModelConfig:
        arch = d.get("model_type")
        if arch not in _ARCH_CLASSES:
            raise UserError(
                "unsupported_architecture",
                f"model_type {arch!r} is not supported (supported: {', '.join(_ARCH_CLASSES)})",
            )
        if d.get("hidden_act", "silu") != "silu":
            raise _unsupported(f"hidden_act {d['hidden_act']!r} (only silu)")
        if d.get("mlp_bias", False):
            raise _unsupported("mlp_bias=true")
        if d.get("use_sliding_window", False):
            raise _unsupported("sliding-window attention")
        # transformers 5 writes `rope_parameters` (theta + scaling in one dict); 4.x and most hub
        # checkpoints write `rope_theta` + `rope_scaling`. Accept both.
        rope_params = d.get("rope_parameters") or {}
        if rope_params and not ("rope_theta" in rope_params or "rope_type" in rope_params):
            raise _unsupported("per-layer-type rope parameters")
        rope_theta = d.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        heads = int(d["num_attention_heads"])
        try:
            return cls(
                architecture=arch,
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // heads),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta),
                rope_scaling=_normalize_rope_scaling(d.get("rope_scaling") or rope_params),
                max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                qk_norm=arch == "qwen3",
                attention_bias=bool(d.get("attention_bias", False)),
            )
        except KeyError as e:
            raise UserError("invalid_model_config", f"config.json is missing {e.args[0]!r}") from None

    def to_hf_dict(self) -> dict:
        """A config.json in the classic hub format (`rope_theta` + `rope_scaling`), which both
        transformers 4.x and 5.x load."""
        d: dict[str, Any] = {
            "architectures": [_ARCH_CLASSES[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
        }
        if self.architecture == "qwen3":
            d |= {"use_sliding_window": False, "sliding_window": None,
                  "max_window_layers": self.num_hidden_layers}
        else:
            d |= {"mlp_bias": False, "pretraining_tp": 1}
        return d
