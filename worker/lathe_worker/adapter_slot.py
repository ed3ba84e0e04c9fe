"""`AdapterSlot`: one adapter of the engine with its optimizer and training counters (what `Placement`
moves between device, host and disk)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .lora import LoraAdapter
from .optim import ADAMW, SlotOptimizer, make_optimizer


@dataclass
class AdapterSlot:
    adapter: LoraAdapter
    optimizer: SlotOptimizer
    pending_grad: bool = False  # forward_backward ran since the last optim_step
    steps: int = 0
    num_params: int = field(init=False)  # counted at creation: an adapter moved to disk keeps only empty placeholders

    def __post_init__(self) -> None:
        self.num_params = sum(p.numel() for p in self.adapter.parameters())

    @classmethod
    def fresh(cls, adapter: LoraAdapter, optimizer: dict[str, Any] | None = None) -> AdapterSlot:
        """A slot for `adapter` with a new optimizer of the kind `optimizer` names (default AdamW)."""
        config = optimizer or {"type": ADAMW}
        return cls(adapter=adapter, optimizer=make_optimizer(config, list(adapter.parameters()), adapter.config.rank))
