"""Shared test setup: import `lathe_worker` from the source tree, and small shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models dir per test session, so the built-in tiny models are materialised only once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Tests draw inputs from the global RNG; seed it so every run sees the same numbers."""
    import torch

    torch.manual_seed(0)
