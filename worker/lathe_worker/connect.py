"""Connect mode: the worker dials the server (`python -m lathe_worker --connect HOST:PORT`), so a
machine behind NAT can lend its accelerator. The first frame is a `register` request carrying the
worker token (`LATHE_WORKER_TOKEN`), the devices it computes on and the models it can load; after
the server's reply the direction flips and the server sends ops over the same connection, served
by the same request/reply loop as a listening worker (`WorkerServer.serve_connection`).

Lifecycle (chosen so that a server restart needs no worker restart):
- the server is not up yet: retry with capped exponential backoff, for ever;
- the server refuses the token: exit at once with `RegistrationRefused` (status 2 in `__main__`),
  since retrying cannot help;
- the connection closes (server stopped or restarted): the worker drops its adapters (the server
  rebuilds runs from snapshots, and stale slots would clash with them), keeps its loaded base
  model, and reconnects with backoff; `--no-reconnect` exits with status 0 instead;
- the `shutdown` op: exit."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Callable

from .errors import UserError
from .protocol import HEADER, MAX_FRAME_BYTES, pack_frame, unpack_body
from .server import WorkerServer

log = logging.getLogger("lathe_worker")

PROTOCOL_VERSION = 1
FIRST_RETRY_SECONDS = 0.25
MAX_RETRY_SECONDS = 10.0
REGISTER_TIMEOUT_SECONDS = 30.0


class RegistrationRefused(Exception):
    """The server answered `register` with an error (a wrong token): retrying cannot help."""


def parse_address(value: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[V6]:PORT`) -> (host, port); raises ValueError naming the problem."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_FRAME_BYTES:
        raise UserError("frame_too_large", f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return unpack_body(await reader.readexactly(length))


async def register(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: dict[str, Any]) -> str:
    """Sends the `register` frame and returns the worker id the server assigned."""
    writer.write(pack_frame({"op": "register", "id": 0, "protocol": PROTOCOL_VERSION, **hello}))
    await writer.drain()
    reply = await asyncio.wait_for(read_frame(reader), REGISTER_TIMEOUT_SECONDS)
    if reply.get("ok") is not True:
        error = reply.get("error") or {}
        raise RegistrationRefused(f"{error.get('code', 'refused')}: {error.get('message', 'the server refused this worker')}")
    return str(reply.get("worker_id", "?"))


async def connect_and_serve(
    state: WorkerServer,
    host: str,
    port: int,
    hello: Callable[[], dict[str, Any]],
    on_disconnect: Callable[[], None],
    reconnect: bool = True,
) -> str:
    """Dial `host:port`, register with `hello()`'s fields, serve the server's ops; repeat after a
    disconnect while `reconnect`. Returns why it stopped; raises RegistrationRefused."""
    delay = FIRST_RETRY_SECONDS
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        except OSError as exc:
            log.info("server %s:%d not reachable (%s); retrying in %.2fs", host, port, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)
            continue
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            worker_id = await register(reader, writer, hello())
        except RegistrationRefused:
            writer.close()
            raise
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, UserError) as exc:
            writer.close()
            log.warning("registration with %s:%d failed (%s); retrying in %.2fs", host, port, exc or type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)
            continue
        delay = FIRST_RETRY_SECONDS
        # Tests and the CLI wait for this exact line.
        print(f"lathe-worker connected to tcp:{host}:{port} as {worker_id}", flush=True)
        serving = asyncio.ensure_future(state.serve_connection(reader, writer))
        stopped = asyncio.ensure_future(state.stopped.wait())
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if state.stopped.is_set():
            return state.stop_reason  # the shutdown op: the caller exits without waiting for the connection
        stopped.cancel()
        on_disconnect()
        if not reconnect:
            return "the server closed its connection"
        log.warning("the server at %s:%d closed the connection; reconnecting", host, port)


def worker_token() -> str:
    token = os.environ.get("LATHE_WORKER_TOKEN")
    if not token:
        raise SystemExit("lathe-worker: --connect needs the server's worker token in LATHE_WORKER_TOKEN "
                         "(lathe serve --worker-port prints it)")
    return token

