"""How a `forward_backward` call's items become micro-batches, and how one micro-batch runs.

The plan depends on each item alone (its own padding width and chunking), so an item's numbers are
bit-for-bit the same whatever else shares the call; see `plan_micro_batches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .logprobs import head_chunk_tokens, target_logprobs
from .lora import LoraAdapter, LoraBatch
from .losses import compute_loss
from .models.transformer import Transformer


@dataclass
class Datum:
    tokens: torch.Tensor  # int64 [N]
    inputs: dict[str, torch.Tensor]


@dataclass
class WorkItem:
    """One caller's forward(_backward) request: a list of datums for one adapter."""

    adapter_id: str | None
    loss_fn: str
    loss_config: dict[str, float] | None
    data: list[Datum]


@dataclass
class Chunk:
    """Rows of one item that run in one micro-batch (see `plan_micro_batches`)."""

    item: int
    datums: list[int]  # indices into the item's data
    width: int  # padded length: the item's longest datum
    runs: list[tuple[int, int, bool]]  # [start, end) of `datums` sharing an LM-head pass; keep its logits?
    kept_bytes: int  # logits kept from forward to backward

    @classmethod
    def plan(cls, item_index: int, datums: list[int], width: int, item: WorkItem, row_bytes: int, budget: int) -> Chunk:
        """Groups consecutive datums with the same target trailing shape; each group keeps its logits
        for backward while they fit what is left of `budget` (else they are recomputed chunk by chunk)."""
        runs: list[tuple[int, int, bool]] = []
        kept = 0
        start = 0
        while start < len(datums):
            shape = item.data[datums[start]].inputs["target_tokens"].shape[1:]
            end = start + 1
            while end < len(datums) and item.data[datums[end]].inputs["target_tokens"].shape[1:] == shape:
                end += 1
            need = sum(item.data[j].tokens.numel() for j in datums[start:end]) * row_bytes
            keep = kept + need <= budget
            kept += need if keep else 0
            runs.append((start, end, keep))
            start = end
        return cls(item_index, datums, width, runs, kept)


def plan_micro_batches(items: list[WorkItem], valid: list[int], vocab_size: int, itemsize: int, max_batch_tokens: int,
                   head_budget: int) -> list[list[Chunk]]:
    """The call's micro-batches, so that nothing an item computes depends on what else is in the call.

    Each item is cut into chunks by its own data alone: rows padded to the item's longest datum, at
    most `max_batch_tokens` padded tokens a chunk and no more rows than the head budget can keep
    logits for (a chunk whose logits fit is cheaper than one whose head is recomputed in backward;
    one datum beyond the budget still runs alone, recomputing), and which LM-head logits a chunk keeps for backward
    is decided against the whole head budget. Chunks of equal width then share a micro-batch while
    its padded tokens and kept logits fit both limits. Float sums depend on shapes (padding width
    changes the order of a gradient's reduction over tokens), not on other rows, so an item packed
    with others gets the bits it gets alone; which rows share a batch never changes the weights.
    """
    vocab, budget = vocab_size, head_budget
    chunks: list[Chunk] = []
    for i in valid:
        data = items[i].data
        width = max(d.tokens.numel() for d in data)
        per_chunk = max(1, min(max_batch_tokens, budget // (vocab * itemsize)) // width)
        for first in range(0, len(data), per_chunk):
            datums = list(range(first, min(first + per_chunk, len(data))))
            chunks.append(Chunk.plan(i, datums, width, items[i], vocab * itemsize, budget))
    batches: list[list[Chunk]] = []
    open_batches: dict[int, list[Chunk]] = {}  # the micro-batch still filling, by width
    for chunk in chunks:
        current = open_batches.get(chunk.width)
        fits = current is not None and (
            (sum(len(c.datums) for c in current) + len(chunk.datums)) * chunk.width <= max_batch_tokens
            and sum(c.kept_bytes for c in current) + chunk.kept_bytes <= budget)
        if current is not None and fits:
            current.append(chunk)
        else:
            open_batches[chunk.width] = [chunk]
            batches.append(open_batches[chunk.width])
    return batches


def run_micro_batch(
    model: Transformer,
    items: list[WorkItem],
    chunks: list[Chunk],
    adapter_of: Callable[[str | None], LoraAdapter | None],
    device: torch.device,
    logprobs_per_item: dict[int, list[torch.Tensor]],
) -> torch.Tensor | None:
    """Runs one micro-batch (forward, LM head, loss): appends each datum's target logprobs to
    `logprobs_per_item[item]` and returns the micro-batch's total loss (None without rows)."""
    rows = [(chunk.item, j) for chunk in chunks for j in chunk.datums]
    lengths = [items[i].data[j].tokens.numel() for i, j in rows]
    width = chunks[0].width
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    for r, (i, j) in enumerate(rows):
        input_ids[r, : lengths[r]] = items[i].data[j].tokens
    positions = torch.arange(width, device=device).expand(len(rows), width)
    lora = LoraBatch.from_rows([adapter_of(items[i].adapter_id) for i, _ in rows])
    # Right padding: a plain causal mask (attn_mask=None) is exact for every real token, and the
    # outputs at padding positions are never read.
    hidden = model(input_ids.to(device), positions, None, lora=lora)
    chunk_tokens = head_chunk_tokens(model.config.vocab_size, device, hidden.element_size())
    total: torch.Tensor | None = None
    r = 0
    for chunk in chunks:
        # A chunk's rows share a loss call, and rows whose targets have the same trailing shape share
        # one LM-head pass (fewer, fuller chunks); per-datum logprobs are split back.
        item = items[chunk.item]
        adapter = adapter_of(item.adapter_id)
        datums = [item.data[j] for j in chunk.datums]
        lps: list[torch.Tensor] = []
        for start, end, keep in chunk.runs:
            run_lengths = lengths[r + start : r + end]
            if end - start == 1:
                h = hidden[r + start, : run_lengths[0]]
                targets = datums[start].inputs["target_tokens"]
            else:
                h = torch.cat([hidden[r + k, :n] for k, n in zip(range(start, end), run_lengths)])
                targets = torch.cat([d.inputs["target_tokens"] for d in datums[start:end]])
            out = target_logprobs(h, lambda x, a=adapter: model.lm_head_logits(x, a), targets.to(device),
                                  chunk_tokens=chunk_tokens, recompute=not keep)
            lps.extend(out.split(run_lengths) if end - start > 1 else [out])
        result = compute_loss(item.loss_fn, lps, [d.inputs for d in datums], item.loss_config, with_metrics=False)
        logprobs_per_item[chunk.item].extend(lps)
        total = result.loss if total is None else total + result.loss
        r += len(chunk.datums)
    return total
