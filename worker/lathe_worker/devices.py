"""What a worker announces about the device it computes on (`register`, `hello`)."""

from __future__ import annotations

import os
from typing import Any

import torch


def describe_device(device: torch.device) -> dict[str, Any]:
    """`{type, name, memory_bytes}` of `device` (system memory for the CPU)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return {"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory)}
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {"type": device.type, "name": device.type, "memory_bytes": int(memory)}
