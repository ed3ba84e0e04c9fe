"""A tensor-parallel worker group: one worker whose base model is split over several processes.

    torchrun --standalone --nproc-per-node 2 -m lathe_worker --socket /tmp/w.sock --model NAME

Rank 0 runs the ordinary frame server. Every op that touches the model is broadcast (the decoded
request, pickled, over a gloo control group) to the other ranks, which run the same `Handlers` op in
lock-step, so the collectives inside the model line up; replies come from rank 0 alone. Ops that only
read or write replicated state (hello, stats, save_adapter, snapshot, export_peft) run on rank 0 only.
After each broadcast op the ranks compare outcomes (ok or the error code): ranks that disagree can no
longer be trusted to issue the same collectives, so the whole group exits rather than hang.

Unseeded sampling requests get a random seed on rank 0 before the broadcast, so every rank draws the
same tokens; after each `optim_step` the stepped adapter is broadcast from rank 0, so replicas never
drift apart by rounding.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .engine import Engine
from .errors import WorkerError
from .handlers import Handlers
from .parallel import TensorParallel, num_params, sync_adapter
from .server import exit_now

log = logging.getLogger("lathe_worker")

# Ops with no collective inside that only rank 0 needs to run (every rank holds the same adapters).
RANK0_OPS = frozenset({"hello", "stats", "save_adapter", "snapshot", "export_peft"})
# Followers wait for the next op as long as the server is idle.
CONTROL_TIMEOUT = timedelta(days=365)
PEER_POLL_SECONDS = 0.5
LEADER_EXIT_GRACE_S = 10.0  # how long a broken control connection may precede rank 0's exit


def group_size() -> int:
    """The number of processes torchrun started for this worker (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def with_sampling_seeds(request: dict[str, Any]) -> dict[str, Any]:
    """The sample request with a random seed in every item that has none: each rank must draw the
    same tokens, and an unseeded generator would be seeded differently on every rank."""
    items = request.get("items")
    if not isinstance(items, list):
        return request
    seeded = []
    for item in items:
        params = item.get("sampling_params") if isinstance(item, dict) else None
        if isinstance(item, dict) and (params is None or isinstance(params, dict) and params.get("seed") is None):
            item = {**item, "sampling_params": {**(params or {}), "seed": secrets.randbits(63)}}
        seeded.append(item)
    return {**request, "items": seeded}


def _outcome(request: dict[str, Any], reply: dict[str, Any], error: BaseException | None) -> str:
    """What the ranks must agree on after an op: its error, and for sampling the tokens drawn (ranks
    that drew different tokens would decode different numbers of steps, and their collectives would
    no longer pair up)."""
    if error is not None:
        return f"{type(error).__name__}:{error.code}" if isinstance(error, WorkerError) else type(error).__name__
    if request.get("op") != "sample":
        return "ok"
    digest = hashlib.blake2b(digest_size=16)
    for result in reply.get("results", []):
        for sequence in result.get("sequences", []):
            digest.update(sequence["tokens"]["data"])
    return f"ok:{digest.hexdigest()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child not yet reaped by torchrun is a zombie: gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class WorkerGroup:
    """This process's membership of the group: the tensor-parallel layout, the control group that
    carries the ops, and the device this rank computes on."""

    def __init__(self, device: torch.device) -> None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
        self.device = device
        self.tp = TensorParallel.from_default_group()
        self.control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
        pids: list[Any] = [None] * self.tp.world
        dist.all_gather_object(pids, os.getpid(), group=self.control)
        self.leader_pid = pids[0]
        log.info("tensor-parallel rank %d of %d on %s", self.tp.rank, self.tp.world, device)

    @property
    def is_leader(self) -> bool:
        return self.tp.rank == 0

    def handlers(self, engine: Engine) -> GroupHandlers:
        return GroupHandlers(engine, self)

    def follow(self, handlers: GroupHandlers) -> None:
        """A follower's life: run every op rank 0 broadcasts until `shutdown` (or rank 0 is gone)."""
        if self.leader_is_local:
            self._watch_leader()
        while True:
            box: list[Any] = [None]
            try:
                dist.broadcast_object_list(box, src=0, group=self.control)
            except RuntimeError:
                # gloo notices a closed connection before the watcher notices the exit: a leader that
                # left (on disconnect or shutdown of its server) ends the group without an error.
                if self.leader_is_local and self._leader_gone_within(LEADER_EXIT_GRACE_S):
                    exit_now(f"rank 0 (pid {self.leader_pid}) is gone")
                raise
            request = box[0]
            try:
                handlers.lockstep(request)
            except Exception:  # noqa: BLE001 - rank 0 reports it; the ranks agreed on the outcome
                pass
            if request.get("op") == "shutdown":
                break
        dist.destroy_process_group()

    @property
    def leader_is_local(self) -> bool:
        """Whether rank 0 runs on this host (all ranks do under a single-node torchrun)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.tp.world)) == self.tp.world

    def _leader_gone_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while _process_alive(self.leader_pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _watch_leader(self) -> None:
        """Exit once rank 0 is gone (it leaves with os._exit when its server connection closes or its
        parent dies), instead of waiting for an op that will never come."""

        def watch() -> None:
            while _process_alive(self.leader_pid):
                time.sleep(PEER_POLL_SECONDS)
            exit_now(f"rank 0 (pid {self.leader_pid}) is gone")

        threading.Thread(target=watch, name="leader-watch", daemon=True).start()


class GroupHandlers(Handlers):
    """`Handlers` that run each model op on every rank of the group in lock-step."""

    def __init__(self, engine: Engine, group: WorkerGroup) -> None:
        super().__init__(engine)
        self.group = group

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Rank 0 (the server's compute thread): broadcast the op, then run it here too."""
        op = request.get("op")
        if op in RANK0_OPS:
            return super().handle(request)
        if op == "sample":
            request = with_sampling_seeds(request)
        dist.broadcast_object_list([request], src=0, group=self.group.control)
        return self.lockstep(request)

    def lockstep(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run the op on this rank; then make sure all ranks had the same outcome."""
        if self.group.device.type == "cuda":
            torch.cuda.set_device(self.group.device)  # the compute thread's own current device
        error: BaseException | None = None
        reply: dict[str, Any] = {}
        try:
            reply = super().handle(request)
        except Exception as exc:  # noqa: BLE001 - compared across ranks below, then re-raised
            error = exc
        outcomes: list[Any] = [None] * self.group.tp.world
        dist.all_gather_object(outcomes, _outcome(request, reply, error), group=self.group.control)
        if len(set(outcomes)) > 1:
            log.error("ranks diverged on op %r (outcomes %s): the group cannot continue", request.get("op"), outcomes)
            exit_now("tensor-parallel ranks diverged", code=1)
        if error is not None:
            raise error
        if request.get("op") == "optim_step":
            sync_adapter(self.engine.adapters[request["adapter"]].adapter, self.group.tp)
        if request.get("op") == "load_model" and self.engine.model is not None:
            reply["num_params"] = num_params(self.engine.model)  # the whole model's, not this rank's part
        return reply
