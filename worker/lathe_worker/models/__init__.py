"""The base model: config, decoder, HF-folder loading/saving, built-in tiny models, name registry."""

from .config import ModelConfig
from .loading import load_config, load_model, save_model
from .registry import ModelRegistry
from .tiny import TINY_MODELS, materialize_tiny
from .transformer import KVCache, Transformer, causal_padding_mask

__all__ = [
    "KVCache", "ModelConfig", "ModelRegistry", "TINY_MODELS", "Transformer", "causal_padding_mask",
    "load_config", "load_model", "materialize_tiny", "save_model",
]
