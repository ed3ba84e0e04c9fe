"""Batched decoding with a KV cache over the shared base weights.

Every request expands into `num_samples` rows; rows of all requests (and all adapters) decode
together. Prompts are left-padded so each step appends one column; each row keeps its own RoPE
positions and its own random generator, so a seeded request gives the same tokens whatever else
shares the batch.

Reported logprobs are the model's own (temperature 1, no top-k/top-p) log-probabilities of the
chosen tokens: the same numbers a training forward pass gives, which is what importance-sampling
RL losses need.

Sampling extras (Tinker SDK >= 0.29) come from the passes decoding makes anyway, and every logprob
in them is of that same temperature-1, unfiltered distribution:
- `topk_sample_logprobs`: per sampled token, the top-k (id, logprob) of the step's distribution;
- `prompt_alt_tokens_k`: per prompt position after the first, k draws with replacement at the
  request's temperature (no top-k/top-p, as the SDK documents), from the generator of the request's
  first sample, taken before decoding;
- `target_prompt_logprobs`: logprobs of named ids at prompt positions (NaN for -1 cells);
- `prompt_logprobs_last_n`: prompt (top-k) logprobs for the last n positions only.
All prompt-side outputs share one chunked LM-head pass over only the rows some output needs
(`logprobs.log_softmax_chunks`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .logprobs import log_softmax_chunks, logsumexp, topk_rows
from .lora import LoraBatch
from .models.transformer import KVCache, Transformer, causal_padding_mask
from .sample_request import SampleRequest, SamplingParams

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


def draw_tokens(logprobs: Tensor, k: int, temperature: float, generator: torch.Generator) -> Tensor:
    """k draws with replacement per row of logprobs [N, V] from softmax(logprobs / temperature) -> int64
    [N, k]; below GREEDY_BELOW_TEMPERATURE every draw is the argmax (the temperature -> 0 limit)."""
    if temperature < GREEDY_BELOW_TEMPERATURE:
        return logprobs.argmax(-1, keepdim=True).expand(-1, k).contiguous()
    return torch.multinomial(torch.softmax(logprobs / temperature, dim=-1), k, replacement=True, generator=generator)


def _stop_string_hit(tokens: list[int], stops: list[str], detokenize: Callable[[list[int]], str]) -> bool:
    text = detokenize(tokens)
    return any(s in text for s in stops)


def sample_batch(
    model: Transformer,
    requests: list[SampleRequest],
    device: torch.device,
    detokenize: Callable[[list[int]], str] | None = None,
) -> list[dict[str, Any]]:
    """Decode all requests together; returns one result dict per request, in order."""
    context = model.config.max_position_embeddings
    rows: list[_Row] = []
    for r, request in enumerate(requests):
        budget = context - request.prompt.numel()
        max_new = min(request.params.max_tokens or budget, budget)
        for s in range(request.num_samples):
            rows.append(
                _Row(r, s, max_new, set(request.params.stop_token_ids), _row_generator(request.params.seed, request.first_sample_index + s, device))
            )
    # Rows of one adapter must be contiguous for the grouped LoRA matmuls. Adapters are ordered by their
    # first request, not by anything process-specific like id(): the ranks of a tensor-parallel group
    # must lay out the same batch.
    first_request: dict[int, int] = {}
    for row in rows:
        first_request.setdefault(id(requests[row.request].adapter), row.request)
    rows.sort(key=lambda row: first_request[id(requests[row.request].adapter)])
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
    # topk_sample_logprobs: every step's top-k of all rows ([B, k] values and ids), widest k of the batch.
    sample_k = max(request.topk_sample_logprobs for request in requests)
    step_topk: list[tuple[Tensor, Tensor]] = []

    with torch.no_grad():
        cache = KVCache(model.config, batch, width + steps, dtype=dtype, device=device, kv_heads=model.kv_heads)
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
            if sample_k:
                step_topk.append(tuple(t.cpu() for t in topk_rows(torch.log_softmax(logits, dim=-1), sample_k)))
            token_list, logprob_list = tokens.tolist(), chosen.tolist()  # one device sync per step
            for i, row in enumerate(rows):
                if row.stop_reason is not None:
                    continue
                token = token_list[i]
                row.tokens.append(token)
                row.logprobs.append(logprob_list[i])
                stops = requests[row.request].params.stop_strings
                if token in row.stop_ids or (stops and detokenize and _stop_string_hit(row.tokens, stops, detokenize)):
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
    if sample_k:
        _attach_sample_topk(requests, rows, results, step_topk)
    return results


def _attach_sample_topk(requests: list[SampleRequest], rows: list[_Row], results: list[dict[str, Any]],
                        step_topk: list[tuple[Tensor, Tensor]]) -> None:
    """Give each sequence that asked for it `topk_logprobs`: {token_ids int64 [N, k], logprobs float32 [N, k]}
    for its N sampled tokens. A row's token j was chosen at step j, so its rows are the first N steps."""
    values = torch.stack([v for v, _ in step_topk])  # [steps, B, k_max]
    ids = torch.stack([i for _, i in step_topk])
    for i, row in enumerate(rows):
        k = requests[row.request].topk_sample_logprobs
        if k:
            n = len(row.tokens)
            results[row.request]["sequences"][row.sample_index]["topk_logprobs"] = {
                "token_ids": ids[:n, i, :k].contiguous(), "logprobs": values[:n, i, :k].contiguous()}


def _prompt_outputs(
    model: Transformer, requests: list[SampleRequest], rows: list[_Row], hidden: torch.Tensor, width: int
) -> list[dict[str, Any]]:
    """Per-request result skeletons, with the prompt-side outputs computed from the prefill pass."""
    results: list[dict[str, Any]] = []
    first_row = {}
    for i, row in enumerate(rows):
        first_row.setdefault(row.request, i)
    for r, request in enumerate(requests):
        result: dict[str, Any] = {"sequences": [None] * request.num_samples}
        i = first_row[r]
        n = request.prompt.numel()
        prefix_hidden = hidden[i, width - n : width - 1]  # position t predicts prompt[t + 1]
        head = lambda h, a=request.adapter: model.lm_head_logits(h, a)  # noqa: E731
        result.update(_prompt_scores(request, prefix_hidden, head, rows[i].generator))
        results.append(result)
    return results


def _prompt_scores(request: SampleRequest, hidden: Tensor, head: Callable[[Tensor], Tensor],
                   generator: torch.Generator) -> dict[str, Any]:
    """prompt_logprobs, topk_prompt_logprobs, target_prompt_logprobs and prompt_alt_tokens as requested, from
    one chunked LM-head pass over hidden [P - 1, D] (row t scores prompt position t + 1) that starts at the
    first row any of them needs."""
    m = hidden.shape[0]
    device = hidden.device
    per_position = bool(request.prompt_logprobs or request.topk_prompt_logprobs)
    last_n = request.prompt_logprobs_last_n
    pl_start = m if not per_position else max(0, m - last_n) if last_n is not None else 0
    targets = request.target_prompt_logprobs
    if targets is not None:
        targets = targets.to(device)
        t_start = int((targets >= 0).any(-1).int().argmax())  # rows before the first named id are not scored
    else:
        t_start = m
    alt_k = request.prompt_alt_tokens_k
    next_tokens = request.prompt[1:].to(device)
    pl, topv, topi, scored, alt_ids, alt_lps = [], [], [], [], [], []
    for s, lp in log_softmax_chunks(hidden, head, start=min(pl_start, t_start, 0 if alt_k else m)):
        e = s + lp.shape[0]
        if e > pl_start:
            part = lp[max(pl_start - s, 0) :]
            if request.prompt_logprobs:
                pl.append(part.gather(1, next_tokens[max(s, pl_start) : e, None])[:, 0])
            if request.topk_prompt_logprobs:
                values, ids = topk_rows(part, request.topk_prompt_logprobs)
                topv.append(values)
                topi.append(ids)
        if targets is not None and e > t_start:
            ids = targets[max(s, t_start) : e]
            got = lp[max(t_start - s, 0) :].gather(1, ids.clamp(min=0))
            scored.append(got.masked_fill_(ids < 0, math.nan))
        if alt_k:
            drawn = draw_tokens(lp, alt_k, request.params.temperature, generator)
            alt_ids.append(drawn)
            alt_lps.append(lp.gather(1, drawn))

    def cat(parts: list[Tensor], width: int, dtype: torch.dtype) -> Tensor:
        return torch.cat(parts).cpu() if parts else torch.empty((0, width), dtype=dtype)

    out: dict[str, Any] = {}
    skipped = [None] * (1 + pl_start)  # position 0 has no context; positions before the last n are not computed
    if request.prompt_logprobs:
        out["prompt_logprobs"] = skipped + (torch.cat(pl).tolist() if pl else [])  # one transfer, not one per value
    if request.topk_prompt_logprobs:
        k = request.topk_prompt_logprobs
        values, ids = cat(topv, k, torch.float32), cat(topi, k, torch.int64)
        out["topk_prompt_logprobs"] = skipped + [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    if targets is not None:
        full = torch.full(tuple(targets.shape), math.nan, dtype=torch.float32)
        full[t_start:] = cat(scored, targets.shape[1], torch.float32)
        out["target_prompt_logprobs"] = full
    if alt_k:
        out["prompt_alt_tokens"] = {"tokens": cat(alt_ids, alt_k, torch.int64),
                                    "logprobs": cat(alt_lps, alt_k, torch.float32)}
    return out
