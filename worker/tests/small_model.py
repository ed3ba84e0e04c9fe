"""A small random model written as a Hugging Face folder, for engine-level tests that need speed
and a short context (vocab 512, context 64) more than the real vocabularies of the tiny models."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from lathe_worker.engine import Engine
from lathe_worker.micro_batches import Datum, WorkItem
from lathe_worker.models.loading import save_model
from lathe_worker.models.registry import ModelRegistry
from lathe_worker.models.tiny import TINY_MODELS, init_weights
from lathe_worker.models.transformer import Transformer

SMALL_CONFIG = replace(TINY_MODELS["lathe/tiny-qwen3"], vocab_size=512, max_position_embeddings=64)


def write_small_model(folder: Path) -> Path:
    model = Transformer(SMALL_CONFIG)
    init_weights(model, seed=7)
    save_model(model, folder)
    return folder


def make_engine(folder: Path, **kwargs) -> Engine:
    """An engine on the small model, on `$LATHE_TEST_DEVICE` (default cpu), so the engine-level tests
    also run on an accelerator: `LATHE_TEST_DEVICE=cuda pytest worker/tests/test_offload.py`."""
    kwargs.setdefault("device", torch.device(os.environ.get("LATHE_TEST_DEVICE", "cpu")))
    engine = Engine(ModelRegistry(folder.parent / "models"), **kwargs)
    engine.load_model(str(folder))
    return engine


def sft_item(adapter: str | None, tokens: list[int], loss_fn: str = "cross_entropy", **inputs: torch.Tensor) -> WorkItem:
    """A next-token datum: input tokens[:-1], targets tokens[1:], unit weights unless given."""
    full = torch.tensor(tokens)
    loss_inputs = {"target_tokens": full[1:], **inputs}
    if loss_fn == "cross_entropy":
        loss_inputs.setdefault("weights", torch.ones(len(tokens) - 1))
    return WorkItem(adapter, loss_fn, None, [Datum(full[:-1], loss_inputs)])


def random_tokens(n: int, seed: int, vocab: int = 512) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
