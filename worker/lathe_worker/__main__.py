"""`python -m lathe_worker --socket PATH | --port N | --connect HOST:PORT [--models-dir DIR] [--model NAME]
[--owned | --no-owned] [--no-reconnect] [--max-resident-adapters N] [--max-host-adapters M] [--spill-dir DIR]`

With `--connect`, the worker dials a server started with `lathe serve --worker-port N` and registers
with the token in `LATHE_WORKER_TOKEN` (see connect.py for reconnecting and exit codes).

Under `torchrun --nproc-per-node N -m lathe_worker ...` the N processes form one tensor-parallel worker
(see group.py): rank 0 listens and serves, the others follow its ops."""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Before torch is imported: glibc reads its malloc settings at process start (see malloc_env.py).
    from .malloc_env import reexec_with_malloc_tuning

    reexec_with_malloc_tuning()

# Taken before the slow imports below, so that a parent that dies while they run is still noticed.
PARENT_PID = os.getppid()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from .connect import RegistrationRefused, connect_and_serve, parse_address, worker_token  # noqa: E402
from .devices import describe_device  # noqa: E402
from .engine import Engine  # noqa: E402
from .group import WorkerGroup, group_size  # noqa: E402
from .handlers import Handlers  # noqa: E402
from .models.registry import ModelRegistry  # noqa: E402
from .server import WorkerServer, exit_now, serve, watch_parent  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lathe_worker", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="unix socket path to listen on")
    where.add_argument("--port", type=int, help="TCP port to listen on (0 picks a free one)")
    where.add_argument("--connect", metavar="HOST:PORT", help="dial a server's worker port and serve its ops")
    where.add_argument("--list-models", action="store_true", help="print the models this worker can load as JSON and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--models-dir", default=os.environ.get("LATHE_MODELS_DIR", ".lathe/models"))
    parser.add_argument("--model", help="load this model at start-up")
    parser.add_argument("--describe", action="append", default=[], metavar="NAME_OR_PATH",
                        help="with --list-models: also list this model (a name or folder path), named as given")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--max-resident-adapters", type=int, default=None, metavar="N",
                        help="keep at most N idle adapters (weights, gradients, optimizer state) on the device; "
                             "the least recently used move to host memory (default: no limit)")
    parser.add_argument("--max-host-adapters", type=int, default=None, metavar="M",
                        help="keep at most M moved-out adapters in host memory; the least recently used go to "
                             "files in --spill-dir (default: no limit)")
    parser.add_argument("--spill-dir", default=None,
                        help="folder for adapters moved to disk (default: a private temporary folder, removed at exit)")
    parser.add_argument(
        "--owned", action=argparse.BooleanOptionalAction, default=None,
        help="exit as soon as the parent process dies or the last server connection closes (with --connect: "
             "when the parent dies) (default: on with --socket, where the server spawned this worker; off otherwise)",
    )
    parser.add_argument("--no-reconnect", dest="reconnect", action="store_false",
                        help="with --connect: exit when the server closes the connection instead of reconnecting")
    args = parser.parse_args()
    if args.connect:
        try:
            address = parse_address(args.connect)
        except ValueError as exc:
            parser.error(f"--connect: {exc}")
        connect_token = worker_token()  # before the slow model load: a missing token is reported at once
    logging.basicConfig(level=logging.INFO, format="%(asctime)s lathe-worker %(levelname)s %(message)s")
    if args.list_models:
        registry = ModelRegistry(Path(args.models_dir))
        roots = [str(registry.models_dir.resolve()), str(registry.hf_cache)]
        print(json.dumps({"models": registry.catalogue(args.describe), "roots": roots}))
        return
    owned = args.socket is not None if args.owned is None else args.owned
    if owned:
        watch_parent(PARENT_PID)  # before loading the model, which can take minutes
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    group = WorkerGroup(device) if group_size() > 1 else None
    try:
        engine = Engine(ModelRegistry(Path(args.models_dir)), device=group.device if group else device, dtype=dtype,
                        max_batch_tokens=args.max_batch_tokens, sharding=group.tp if group else None,
                        max_resident_adapters=args.max_resident_adapters, max_host_adapters=args.max_host_adapters,
                        spill_dir=Path(args.spill_dir) if args.spill_dir else None)
    except ValueError as exc:
        parser.error(str(exc))
    if args.model:
        engine.load_model(args.model)  # on every rank: each reads its own slices
    handlers = group.handlers(engine) if group else Handlers(engine)
    if group is not None and not group.is_leader:
        group.follow(handlers)
        return
    if args.connect:
        reason = run_connected(handlers, engine, address, connect_token, args.models_dir, args.reconnect)
    else:
        token = os.environ.get("LATHE_WORKER_TOKEN") or None
        reason = asyncio.run(serve(handlers, args.socket, args.host, args.port, token, exit_on_disconnect=owned))
    if reason != "shutdown":
        # Ops may still be queued on the compute thread; nobody is left to read their replies.
        engine.placement.close()  # os._exit below skips the finalizer that would remove spilled adapters
        exit_now(reason)


def run_connected(handlers: Handlers, engine: Engine, address: tuple[str, int], token: str, models_dir: str, reconnect: bool) -> str:
    """Serves a server over an outbound connection; exits with status 2 when it refuses the token."""
    registry = ModelRegistry(Path(models_dir))

    def hello() -> dict[str, object]:
        # Re-read on every (re)connect: models added meanwhile are announced.
        return {"token": token, "pid": os.getpid(), "hostname": socket.gethostname(),
                "devices": [describe_device(engine.device)], "models": registry.catalogue(), "loaded": engine.model_name}

    def drop_adapters() -> None:
        # The server rebuilds its runs from snapshots; a stale slot would clash with a replayed create.
        for adapter in list(engine.adapters):
            engine.drop_adapter(adapter)

    async def run() -> str:
        return await connect_and_serve(WorkerServer(handlers), *address, hello, drop_adapters, reconnect)

    try:
        return asyncio.run(run())
    except RegistrationRefused as exc:
        print(f"lathe-worker: the server at {address[0]}:{address[1]} refused this worker ({exc}); "
              "check the worker token (LATHE_WORKER_TOKEN / lathe worker --token)", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
