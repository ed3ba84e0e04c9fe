"""What a `sample` item asks for, validated: Tinker's `SamplingParams` and the request around them
(prompt, number of samples, the sampling extras; see `sampler.py` for what each produces).

Example::

    request = SampleRequest(adapter_id=None, prompt=torch.tensor([1, 2, 3]), num_samples=2,
                            params=SamplingParams.from_wire({"max_tokens": 8, "seed": 1}))
    request.validate_counts()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UserError
from .lora import LoraAdapter

MAX_TOPK_PROMPT_LOGPROBS = 100
MAX_NUM_SAMPLES = 128


@dataclass
class SamplingParams:
    """Tinker's `SamplingParams`. `max_tokens=None` decodes until the context is full."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None

    @classmethod
    def from_wire(cls, d: dict[str, Any] | None) -> "SamplingParams":
        d = dict(d or {})
        stop = d.pop("stop", None)
        known = {"max_tokens", "temperature", "top_k", "top_p", "seed"}
        unknown = set(d) - known
        if unknown:
            raise UserError("invalid_sampling_params", f"unknown sampling_params keys: {sorted(unknown)}")
        params = cls(**{k: v for k, v in d.items() if v is not None})
        if isinstance(stop, str):
            stop = [stop]
        for s in stop or []:
            if isinstance(s, bool) or not isinstance(s, (int, str)):
                raise UserError("invalid_sampling_params", f"stop entries must be token ids or strings, got {s!r}")
            (params.stop_strings if isinstance(s, str) else params.stop_token_ids).append(s)
        return params

    def validate(self, vocab_size: int) -> None:
        def bad(message: str) -> UserError:
            return UserError("invalid_sampling_params", message)

        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise bad(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or (self.top_k < 1 and self.top_k != -1):
            raise bad(f"top_k must be -1 (off) or a positive integer, got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad(f"seed must be an integer, got {self.seed!r}")
        for t in self.stop_token_ids:
            if not 0 <= t < vocab_size:
                raise bad(f"stop token id {t} is outside the vocabulary [0, {vocab_size})")
        if any(s == "" for s in self.stop_strings):
            raise bad("stop strings must not be empty")


def _check_k(value: Any, name: str, code: str) -> None:
    """A per-token count of alternatives: an int in [0, MAX_TOPK_PROMPT_LOGPROBS], else error `code`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOPK_PROMPT_LOGPROBS:
        raise UserError(code, f"{name} must be in [0, {MAX_TOPK_PROMPT_LOGPROBS}], got {value!r}")


@dataclass
class SampleRequest:
    adapter_id: str | None
    prompt: torch.Tensor  # int64 [P]
    num_samples: int
    params: SamplingParams
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0  # top-k (id, logprob) at every sampled position
    prompt_alt_tokens_k: int = 0  # draws per prompt position after the first
    target_prompt_logprobs: torch.Tensor | None = None  # int64 [len(prompt) - 1, K] ids to score; -1 = none
    prompt_logprobs_last_n: int | None = None  # prompt (top-k) logprobs only for the last n positions
    # Index of this request's first sample within a larger seeded request the server split into pieces:
    # sample s draws from row_seed(seed, first_sample_index + s), so the pieces equal the unsplit request.
    first_sample_index: int = 0
    adapter: LoraAdapter | None = None  # resolved by the engine

    def validate_counts(self) -> None:
        if not isinstance(self.num_samples, int) or not 1 <= self.num_samples <= MAX_NUM_SAMPLES:
            raise UserError("invalid_num_samples", f"num_samples must be in [1, {MAX_NUM_SAMPLES}], got {self.num_samples!r}")
        first = self.first_sample_index
        if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < MAX_NUM_SAMPLES:
            raise UserError("invalid_first_sample_index",
                            f"first_sample_index must be in [0, {MAX_NUM_SAMPLES}), got {first!r}")
        k = self.topk_prompt_logprobs
        if not isinstance(k, int) or not 0 <= k <= MAX_TOPK_PROMPT_LOGPROBS:
            raise UserError(
                "invalid_topk_prompt_logprobs",
                f"topk_prompt_logprobs must be in [0, {MAX_TOPK_PROMPT_LOGPROBS}], got {k!r}",
            )

    def validate_extras(self, vocab_size: int) -> None:
        """The sampling extras, against the (already validated, 1-D) prompt and the vocabulary."""
        _check_k(self.topk_sample_logprobs, "topk_sample_logprobs", code="invalid_topk_sample_logprobs")
        _check_k(self.prompt_alt_tokens_k, "prompt_alt_tokens_k", code="invalid_prompt_alt_tokens_k")
        n = self.prompt_logprobs_last_n
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise UserError("invalid_prompt_logprobs_last_n", f"prompt_logprobs_last_n must be an integer >= 0, got {n!r}")
        targets = self.target_prompt_logprobs
        if targets is None:
            return

        def bad(message: str) -> UserError:
            return UserError("invalid_target_prompt_logprobs", f"target_prompt_logprobs: {message}")

        rows = self.prompt.numel() - 1
        if targets.dim() != 2 or targets.shape[0] != rows:
            raise bad(f"must have shape [len(prompt) - 1, K] = [{rows}, K], got {list(targets.shape)}")
        if not 1 <= targets.shape[1] <= MAX_TOPK_PROMPT_LOGPROBS:
            raise bad(f"K (ids per position) must be in [1, {MAX_TOPK_PROMPT_LOGPROBS}], got {targets.shape[1]}")
        if not bool((targets >= 0).any()):
            raise bad("names no token id (every cell is -1)")
        low, high = int(targets.min()), int(targets.max())
        if low < -1 or high >= vocab_size:
            raise bad(f"token id {low if low < -1 else high} is outside the vocabulary [0, {vocab_size}) (-1 = no request)")
