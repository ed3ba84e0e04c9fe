"""Batched decoding with a KV cache over the shared base weights.

Every request expands into `num_samples` rows; rows of all requests (and all adapters) decode
together. Prompts are left-padded so each step appends one column; each row keeps its own RoPE
positions and its own random generator, so a seeded request gives the same tokens whatever else
shares the batch.

Reported logprobs are the model's own (temperature 1, no top-k/top-p) log-probabilities of the
chosen tokens: the same numbers a training forward pass gives, which is what importance-sampling
RL losses need.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .errors import UserError
from .logprobs import logsumexp, target_logprobs, topk_logprobs
from .lora import LoraAdapter, LoraBatch
from .models.transformer import KVCache, Transformer, causal_padding_mask

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


@dataclass
class SampleRequest:
    adapter_id: str | None
    prompt: torch.Tensor  # int64 [P]
    num_samples: int
    params: SamplingParams
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    adapter: LoraAdapter | None = None  # resolved by the engine

    def validate_counts(self) -> None:
        if not isinstance(self.num_samples, int) or not 1 <= self.num_samples <= MAX_NUM_SAMPLES:
            raise UserError("invalid_num_samples", f"num_samples must be in [1, {MAX_NUM_SAMPLES}], got {self.num_samples!r}")
        k = self.topk_prompt_logprobs
        if not isinstance(k, int) or not 0 <= k <= MAX_TOPK_PROMPT_LOGPROBS:
            raise UserError(
                "invalid_topk_prompt_logprobs",
                f"topk_prompt_logprobs must be in [0, {MAX_TOPK_PROMPT_LOGPROBS}], got {k!r}",
            )


@dataclass
class _Row:
    request: int
    sample_index: int
    max_new: int
    stop_ids: set[int]
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop_reason: str | None = None


def row_seed(seed: int, sample_index: int) -> int:
    """The generator seed of one sample of a seeded request: a hash of the whole seed (any size) and
    the sample index. Hashing matters because the CPU generator (mt19937) keeps only the low 32 bits
    of what `manual_seed` gets, so seeds that differ only above bit 31 would otherwise draw alike.

    >>> row_seed(7, 0) != row_seed(7 + 2**32, 0)
    True
    """
    digest = hashlib.blake2b(f"{seed}:{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # < 2**63, which every device's generator accepts


def _row_generator(seed: int | None, sample_index: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(row_seed(seed, sample_index))  # distinct, reproducible streams per sample
    return generator


# Below this temperature a row decodes greedily: that is the limit of sampling as the temperature goes to 0,
# and dividing float32 logits by a smaller one would overflow to inf (or by 0, for values that round to 0).
GREEDY_BELOW_TEMPERATURE = 1e-6


class _Chooser:
    """Picks every row's next token from a step's logits [B, V] in a few batched ops.

    Greedy rows: one batched argmax. Sampled rows: temperature, top-k and nucleus filtering batched over
    rows (each row with its own parameters), then Gumbel-max, `argmax(z - log E)` with E ~ Exp(1), which is
    a draw from softmax(z). Each sampled row draws its noise from its own generator, and every op on a
    row's values is elementwise or a reduction within that row, so a seeded row gets the same tokens
    whatever else shares the batch."""

    def __init__(self, params: list[SamplingParams], generators: list[torch.Generator], vocab: int,
                 device: torch.device) -> None:
        self.batch = len(params)
        greedy = [i for i, p in enumerate(params) if p.temperature < GREEDY_BELOW_TEMPERATURE]
        sampled = [i for i, p in enumerate(params) if p.temperature >= GREEDY_BELOW_TEMPERATURE]
        self.all_greedy = not sampled
        self.greedy = torch.tensor(greedy, dtype=torch.long, device=device) if greedy and sampled else None
        self.sampled = torch.tensor(sampled, dtype=torch.long, device=device) if sampled else None
        self.generators = [generators[i] for i in sampled]
        sp = [params[i] for i in sampled]
        self.temperature = torch.tensor([[p.temperature] for p in sp], dtype=torch.float32, device=device)
        ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in sp]
        self.k_max = max(ks, default=0)
        # Rows without top-k keep everything: their "k-th largest" index points at the smallest logit.
        self.k_index = torch.tensor([[(k or self.k_max) - 1] for k in ks], dtype=torch.long, device=device)
        self.k_off = torch.tensor([[k == 0] for k in ks], dtype=torch.bool, device=device)
        self.any_k_off = any(k == 0 for k in ks)
        # top_p == 1 means no nucleus filtering; +inf makes sure rounding in the cumulative sum never drops.
        self.top_p = torch.tensor([[p.top_p if p.top_p < 1 else math.inf] for p in sp], dtype=torch.float32,
                                  device=device)
        self.any_top_p = any(p.top_p < 1 for p in sp)

    def __call__(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """logits float32 [B, V] -> (tokens int64 [B], their log-probs under the unfiltered,
        temperature-1 distribution, float32 [B])."""
        if self.all_greedy:
            tokens = logits.argmax(-1)
        else:
            tokens = torch.empty(self.batch, dtype=torch.long, device=logits.device)
            if self.greedy is not None:
                tokens[self.greedy] = logits[self.greedy].argmax(-1)
            tokens[self.sampled] = self._sample(logits[self.sampled] if self.greedy is not None else logits)
        chosen = (logits.gather(1, tokens[:, None]) - logsumexp(logits))[:, 0]
        return tokens, chosen

    def _sample(self, z: Tensor) -> Tensor:
        z = z / self.temperature
        if self.k_max:
            kth = torch.topk(z, self.k_max, dim=-1).values.gather(1, self.k_index)
            if self.any_k_off:
                kth.masked_fill_(self.k_off, float("-inf"))
            z.masked_fill_(z < kth, float("-inf"))
        if self.any_top_p:
            sorted_z, order = torch.sort(z, dim=-1, descending=True)
            probs = torch.softmax(sorted_z, dim=-1)
            # Drop a token when the mass before it already reaches top_p; the first always stays.
            drop = (probs.cumsum(-1) - probs) >= self.top_p
            z.masked_fill_(torch.zeros_like(drop).scatter_(1, order, drop), float("-inf"))
        noise = torch.empty_like(z)
        for j, generator in enumerate(self.generators):
            noise[j].exponential_(generator=generator)
        return (z - noise.log_()).argmax(-1)


def _stop_string_hit(tokens: list[int], stops: list[str], decode: Callable[[list[int]], str]) -> bool:
    text = decode(tokens)
    return any(s in text for s in stops)


def sample_batch(
    model: Transformer,
    requests: list[SampleRequest],
    device: torch.device,
    decode: Callable[[list[int]], str] | None = None,
) -> list[dict[str, Any]]:
    """Decode all requests together; returns one result dict per request, in order."""
    context = model.config.max_position_embeddings
    rows: list[_Row] = []
    for r, request in enumerate(requests):
        budget = context - request.prompt.numel()
        max_new = min(request.params.max_tokens or budget, budget)
        for s in range(request.num_samples):
            rows.append(
                _Row(r, s, max_new, set(request.params.stop_token_ids), _row_generator(request.params.seed, s, device))
            )
    # Rows of one adapter must be contiguous for the grouped LoRA matmuls.
    rows.sort(key=lambda row: id(requests[row.request].adapter) if requests[row.request].adapter else 0)
    dtype = model.dtype
    lora = LoraBatch.from_rows([requests[row.request].adapter for row in rows]).frozen(dtype)

    prompt_lengths = torch.tensor([requests[row.request].prompt.numel() for row in rows])
    width = int(prompt_lengths.max())
    steps = max(row.max_new for row in rows)
    batch = len(rows)
    input_ids = torch.zeros(batch, width, dtype=torch.long)
    for i, row in enumerate(rows):
        prompt = requests[row.request].prompt
        input_ids[i, width - prompt.numel() :] = prompt
    pad = width - prompt_lengths
    positions = (torch.arange(width).expand(batch, width) - pad[:, None]).clamp(min=0)
    params = [requests[row.request].params for row in rows]
    choose = _Chooser(params, [row.generator for row in rows], model.config.vocab_size, device)

    with torch.no_grad():
        cache = KVCache(model.config, batch, width + steps, dtype=dtype, device=device)
        mask = causal_padding_mask(prompt_lengths, width, left_padded=True)
        hidden = model(input_ids.to(device), positions.to(device), mask.to(device), lora=lora, cache=cache)
        results = _prompt_outputs(model, requests, rows, hidden, width)

        # Decoding mask, additive, [B, 1, width + steps]: real prompt keys and every decoded key are 0,
        # left padding -inf. A step attends to the first width + step + 1 keys of it.
        key_bias = torch.zeros(batch, 1, width + steps, dtype=dtype, device=device)
        key_bias[:, 0, :width].masked_fill_((torch.arange(width)[None, :] < pad[:, None]).to(device), float("-inf"))
        last = hidden[:, -1]
        next_pos = prompt_lengths.to(device)[:, None]
        for step in range(steps):
            # One LM-head matmul for all rows; each adapter's lm_head LoRA is added on its own rows.
            logits = model.lm_head_logits(last, lora=lora).float()
            tokens, chosen = choose(logits)
            token_list, logprob_list = tokens.tolist(), chosen.tolist()  # one device sync per step
            for i, row in enumerate(rows):
                if row.stop_reason is not None:
                    continue
                token = token_list[i]
                row.tokens.append(token)
                row.logprobs.append(logprob_list[i])
                stops = requests[row.request].params.stop_strings
                if token in row.stop_ids or (stops and decode and _stop_string_hit(row.tokens, stops, decode)):
                    row.stop_reason = "stop"
                elif len(row.tokens) >= row.max_new:
                    row.stop_reason = "length"
            if all(row.stop_reason is not None for row in rows):
                break
            # Finished rows keep decoding (their outputs are ignored); rows never see each other.
            hidden = model(tokens[:, None], next_pos, key_bias[:, :, : width + step + 1], lora=lora, cache=cache)
            last = hidden[:, -1]
            next_pos = next_pos + 1

    for row in rows:
        results[row.request]["sequences"][row.sample_index] = {
            "tokens": row.tokens,
            "logprobs": row.logprobs,
            "stop_reason": row.stop_reason or "length",
        }
    return results


def _prompt_outputs(
    model: Transformer, requests: list[SampleRequest], rows: list[_Row], hidden: torch.Tensor, width: int
) -> list[dict[str, Any]]:
    """Per-request result skeletons, with prompt logprobs computed from the prefill pass."""
    results: list[dict[str, Any]] = []
    first_row = {}
    for i, row in enumerate(rows):
        first_row.setdefault(row.request, i)
    for r, request in enumerate(requests):
        result: dict[str, Any] = {"sequences": [None] * request.num_samples}
        if request.prompt_logprobs or request.topk_prompt_logprobs:
            i = first_row[r]
            n = request.prompt.numel()
            prefix_hidden = hidden[i, width - n : width - 1]  # position t predicts prompt[t + 1]
            head = lambda h, a=request.adapter: model.lm_head_logits(h, a)  # noqa: E731
            if request.prompt_logprobs:
                lps = target_logprobs(prefix_hidden, head, request.prompt[1:].to(hidden.device)) if n > 1 else torch.empty(0)
                result["prompt_logprobs"] = [None] + lps.float().tolist()  # one transfer, not one per value
            if request.topk_prompt_logprobs:
                values, ids = topk_logprobs(prefix_hidden, head, request.topk_prompt_logprobs) if n > 1 else (torch.empty(0, 0), torch.empty(0, 0))
                result["topk_prompt_logprobs"] = [None] + [
                    list(zip(id_row, value_row)) for id_row, value_row in zip(ids.tolist(), values.float().tolist())
                ]
        results.append(result)
    return results
