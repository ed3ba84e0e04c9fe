"""Model name -> local folder. Looks, in order, at the built-in tiny models, `--models-dir`
(`org__name`, `org/name`, or the hub layout `models--org--name/snapshots/<rev>/`), the Hugging Face
hub cache (`models--org--name/snapshots/<rev>/`) and finally a plain folder path. Never downloads
anything."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ModelNotFoundError, UserError
from .loading import load_config
from .tiny import TINY_MODELS, folder_name, materialize_tiny

# A hub-style id: "name" or "org/name" made of safe characters (so it can't escape models_dir).
_HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")


def default_hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):  # legacy name
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file()


def _hf_snapshot(repo_dir: Path) -> Path | None:
    """The snapshot `refs/main` points at, else the newest snapshot that has a config.json."""
    snaps = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snap = snaps / ref.read_text().strip()
        if _is_model_dir(snap):
            return snap
    if not snaps.is_dir():
        return None
    found = [s for s in snaps.iterdir() if _is_model_dir(s)]
    return max(found, key=lambda s: s.stat().st_mtime) if found else None


class ModelRegistry:
    def __init__(self, models_dir: Path, hf_cache: Path | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.hf_cache = Path(hf_cache) if hf_cache is not None else default_hf_cache()

    def resolve(self, name: str) -> Path:
        if name in TINY_MODELS:
            return materialize_tiny(name, self.models_dir)
        looked: list[str] = []
        if _HUB_ID.match(name) and ".." not in name.split("/"):
            for cand in (self.models_dir / folder_name(name), self.models_dir / name):
                looked.append(str(cand))
                if _is_model_dir(cand):
                    return cand
            # The hub cache layout, in the HF cache or copied into models_dir as it is.
            for hub in (self.models_dir, self.hf_cache):
                repo_dir = hub / ("models--" + name.replace("/", "--"))
                looked.append(f"{repo_dir}/snapshots/*")
                snap = _hf_snapshot(repo_dir) if repo_dir.is_dir() else None
                if snap is not None:
                    return snap
        plain = Path(name).expanduser()
        looked.append(f"folder {plain}")
        if _is_model_dir(plain):
            return plain
        raise ModelNotFoundError(name, looked)

    def list_local(self) -> list[str]:
        """Built-in names plus every model found in models_dir and the HF cache (sorted)."""
        names = set(TINY_MODELS)
        if self.models_dir.is_dir():
            for p in self.models_dir.iterdir():
                if p.name.startswith("."):
                    continue
                if _is_model_dir(p):
                    names.add(p.name.replace("__", "/", 1))
                elif p.name.startswith("models--"):
                    pass  # the hub layout, listed below
                elif p.is_dir():
                    names.update(f"{p.name}/{q.name}" for q in p.iterdir() if _is_model_dir(q))
        for hub in (self.models_dir, self.hf_cache):
            if hub.is_dir():
                for p in hub.glob("models--*"):
                    if _hf_snapshot(p) is not None:
                        names.add(p.name.removeprefix("models--").replace("--", "/", 1))
        return sorted(names)

    def catalogue(self, extra: list[str] | tuple[str, ...] = ()) -> list[dict[str, object]]:
        """Every loadable model with its context length, read from config.json (no weights loaded),
        plus each of `extra` (names or folder paths) that resolves to a supported model."""
        entries = []
        local = self.list_local()
        for name in local + [e for e in dict.fromkeys(extra) if e not in local]:
            if name in TINY_MODELS:
                config = TINY_MODELS[name]
            else:
                try:
                    config = load_config(self.resolve(name))
                except UserError:
                    continue  # a folder that is not a supported model is simply not offered
            entries.append({"model_name": name, "max_context_length": config.max_position_embeddings,
                            "vocab_size": config.vocab_size, "architecture": config.architecture})
        return entries
