"""Where each adapter slot's tensors live: on the compute device, in host memory, or on disk.

A slot's tensors are its LoRA weights, its pending (accumulated) gradients and its optimizer state.
With capacity limits (`max_device`, `max_host`: adapter counts, None = unlimited), the least recently
used idle adapters move device -> host -> disk after each op, and come back before the next op that
uses them. Moves are exact copies (`Tensor.to`, safetensors round trips), so an adapter trains
bit-identically however often it moved. Pending gradients move with the adapter: evicting between
`forward_backward` and `optim_step` is allowed and loses nothing.

Tensors are swapped inside the same `nn.Parameter` and optimizer-state dict objects, so the optimizer
(AdamW keys its state by parameter object) never notices. An adapter on disk keeps 0-element
placeholders, so a missed `using` fails loudly instead of computing with stale weights.

On a CPU device, "device" and "host" are the same memory: that move is a no-op and only the disk tier
saves memory.

    placement = Placement(slots, torch.device("cuda"), max_device=4, max_host=16, spill_dir=None)
    with placement.using({"a", "b"}):  # both on the device until the block ends, then limits apply
        ...
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Mapping

import torch
from safetensors.torch import load_file, save_file

from .adapter_slot import AdapterSlot
from .errors import UserError

Tier = Literal["device", "host", "disk"]
TIERS: tuple[Tier, ...] = ("device", "host", "disk")
HOST = torch.device("cpu")

log = logging.getLogger(__name__)


@dataclass
class _Where:
    tier: Tier
    # Each tensor's device while on the compute device (the optimizer's `step` counters stay on the CPU).
    devices: dict[str, torch.device] | None = None
    nbytes: int = 0  # of the tensors, counted when they left the device


def slot_tensors(slot: AdapterSlot) -> dict[str, torch.Tensor]:
    """The slot's live tensors by name: `param.{i}`, `grad.{i}` (pending gradients) and
    `state.{i}.{name}` (optimizer state), i indexing the optimizer's parameter list."""
    tensors: dict[str, torch.Tensor] = {}
    for i, param in enumerate(slot.optimizer.params):
        tensors[f"param.{i}"] = param.data
        if param.grad is not None:
            tensors[f"grad.{i}"] = param.grad
    for i, entry in slot.optimizer.live_state().items():
        for name, value in entry.items():
            tensors[f"state.{i}.{name}"] = value
    return tensors


def install_tensors(slot: AdapterSlot, tensors: Mapping[str, torch.Tensor]) -> None:
    """Put `tensors` (named as by `slot_tensors`) into the slot's existing parameter and state objects."""
    state = slot.optimizer.live_state()
    for i, param in enumerate(slot.optimizer.params):
        param.grad = None  # before the data changes device or shape, which a stale grad would not match
        param.data = tensors[f"param.{i}"]
        grad = tensors.get(f"grad.{i}")
        if grad is not None:
            param.grad = grad
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state[int(index)][name] = value


def _nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class Placement:
    """Tracks and enforces the tier of every adapter slot in `slots` (the engine's live dict)."""

    def __init__(self, slots: dict[str, AdapterSlot], device: torch.device, max_device: int | None = None,
                 max_host: int | None = None, spill_dir: Path | None = None) -> None:
        if max_device is not None and max_device < 1:
            raise ValueError(f"max_device must be at least 1 (or None for no limit), got {max_device}")
        if max_host is not None and max_host < 0:
            raise ValueError(f"max_host must be at least 0 (or None for no limit), got {max_host}")
        self.slots = slots
        self.device = device
        self.max_device = max_device
        self.max_host = max_host
        self._spill_dir = spill_dir
        self._where: OrderedDict[str, _Where] = OrderedDict()  # least recently used first
        self._using: set[str] = set()
        self._cleanup: weakref.finalize | None = None  # removes the temporary folder we made, if any

    # ---- bookkeeping ---------------------------------------------------------------------

    def added(self, adapter_id: str) -> None:
        """A slot now in `slots` under this id, with its tensors on the device (new or replaced)."""
        self.forget(adapter_id)
        self._where[adapter_id] = _Where("device")
        self.enforce()

    def forget(self, adapter_id: str) -> None:
        """The id's slot is gone or replaced: drop its record and any spilled file."""
        where = self._where.pop(adapter_id, None)
        if where is not None and where.tier == "disk":
            self._spill_path(adapter_id).unlink(missing_ok=True)

    @property
    def spill_dir(self) -> Path | None:
        """Where adapters moved to disk are (None until the first one is, unless given)."""
        return self._spill_dir

    def close(self) -> None:
        """Remove the temporary spill folder now (for exits that skip interpreter clean-up)."""
        if self._cleanup is not None:
            self._cleanup()

    def tier(self, adapter_id: str) -> Tier:
        return self._where[adapter_id].tier

    @contextmanager
    def using(self, adapter_ids: Iterable[str | None]) -> Iterator[None]:
        """Bring these adapters to the device and keep them there until the block ends; then move the
        least recently used idle adapters out until the limits hold again. A block may use more
        adapters than `max_device`: the limit is exceeded for that block only."""
        wanted = [a for a in dict.fromkeys(adapter_ids) if a is not None and a in self._where]
        self._using.update(wanted)
        try:
            for adapter_id in wanted:
                self._fetch(adapter_id)
                self._where.move_to_end(adapter_id)
            yield
        finally:
            self._using.difference_update(wanted)
            self.enforce()

    def enforce(self) -> None:
        """Move least recently used adapters not in use down a tier until both limits hold. A failed
        spill to disk (e.g. a full disk) leaves the adapter in host memory and is logged: the op that
        triggered it has already succeeded and must not be reported as failed."""
        for tier, limit, move in (("device", self.max_device, self._to_host), ("host", self.max_host, self._to_disk)):
            if limit is None:
                continue
            held = [a for a, w in self._where.items() if w.tier == tier]
            for adapter_id in held[: max(0, len(held) - limit)]:
                if adapter_id in self._using:
                    continue
                try:
                    move(adapter_id)
                except OSError:
                    log.exception("could not move adapter %r out of %s memory; it stays there", adapter_id, tier)

    def stats(self) -> dict[str, object]:
        counts = {tier: {"adapters": 0, "bytes": 0} for tier in TIERS}
        for adapter_id, where in self._where.items():
            size = _nbytes(slot_tensors(self.slots[adapter_id])) if where.tier == "device" else where.nbytes
            counts[where.tier]["adapters"] += 1
            counts[where.tier]["bytes"] += size
        return {"limits": {"max_resident_adapters": self.max_device, "max_host_adapters": self.max_host}, **counts}

    # ---- moves -----------------------------------------------------------------------------

    def _fetch(self, adapter_id: str) -> None:
        where = self._where[adapter_id]
        if where.tier == "disk":
            path = self._spill_path(adapter_id)
            try:
                tensors = load_file(str(path))
            except Exception as exc:  # noqa: BLE001 - safetensors raises plain exceptions for bad files
                raise UserError("adapter_unavailable", f"adapter {adapter_id!r} was moved to disk and cannot be read "
                                f"back from {path}: {exc}") from None
            install_tensors(self.slots[adapter_id], tensors)
            path.unlink(missing_ok=True)
            where.tier = "host"
        if where.tier == "host":
            devices = where.devices or {}
            slot = self.slots[adapter_id]
            install_tensors(slot, {k: t.to(devices.get(k, self.device)) for k, t in slot_tensors(slot).items()})
            self._where[adapter_id] = _Where("device")

    def _to_host(self, adapter_id: str) -> None:
        slot = self.slots[adapter_id]
        tensors = slot_tensors(slot)
        devices = {k: t.device for k, t in tensors.items()}
        install_tensors(slot, {k: t.to(HOST) for k, t in tensors.items()})
        self._where[adapter_id] = _Where("host", devices, _nbytes(tensors))

    def _to_disk(self, adapter_id: str) -> None:
        slot = self.slots[adapter_id]
        tensors = slot_tensors(slot)
        path = self._spill_path(adapter_id)
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(path))
        # 0-element placeholders (keeping each dtype) free the memory; the gradients live in the file alone.
        install_tensors(slot, {k: torch.empty(0, dtype=t.dtype) for k, t in tensors.items() if not k.startswith("grad.")})
        self._where[adapter_id].tier = "disk"

    def _spill_path(self, adapter_id: str) -> Path:
        if self._spill_dir is None:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="lathe-adapters-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._spill_dir, True)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        # Adapter ids come from the server; hex keeps any id a safe, unique file name.
        return self._spill_dir / f"{adapter_id.encode().hex()}.safetensors"
