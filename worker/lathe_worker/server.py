"""The socket server: reads frames from any number of connections and runs their ops one at a
time, in arrival order, on a single compute thread (the accelerator is one shared resource), while
the event loop keeps reading so that requests queue instead of blocking senders.

An owned worker (one the server spawned) must not outlive its server, or it would sit on the model's
memory forever: it exits when its last authenticated connection closes (`exit_on_disconnect`) and when
its parent process dies (`watch_parent`)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import UserError, WorkerError
from .handlers import Handlers
from .protocol import HEADER, MAX_FRAME_BYTES, error_reply, pack_frame, unpack_body

log = logging.getLogger("lathe_worker")

PARENT_POLL_SECONDS = 0.25


def exit_now(reason: str, code: int = 0) -> None:
    """Leave at once, without waiting for ops still queued on the compute thread (nobody is left to
    read their replies) or for interpreter clean-up."""
    log.warning("exiting: %s", reason)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def watch_parent(parent_pid: int, poll_seconds: float = PARENT_POLL_SECONDS) -> threading.Thread:
    """Exit the process once its parent `parent_pid` is gone (the process is re-parented, so
    `getppid()` changes), even while the compute thread is busy. Polling rather than Linux's
    PR_SET_PDEATHSIG: that signal fires when the parent *thread* that spawned us ends, which would
    kill a worker started from a short-lived thread, and it does not exist on macOS."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        exit_now(f"parent process {parent_pid} is gone")

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


class WorkerServer:
    def __init__(self, handlers: Handlers, token: str | None = None, exit_on_disconnect: bool = False) -> None:
        self.handlers = handlers
        self.token = token
        self.exit_on_disconnect = exit_on_disconnect
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self.stopped = asyncio.Event()
        self.stop_reason = "shutdown"
        self.connected = 0  # authenticated connections now open

    def stop(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.stop_reason = reason
            self.stopped.set()

    def run_op(self, request: dict[str, Any]) -> dict[str, Any]:
        request_id = request.get("id")
        try:
            return {"id": request_id, "ok": True, **self.handlers.handle(request)}
        except WorkerError as exc:
            return error_reply(request_id, exc.to_reply())
        except Exception as exc:  # a bug or resource failure: report it, keep serving
            log.error("op %r failed:\n%s", request.get("op"), traceback.format_exc())
            return error_reply(request_id, WorkerError("internal", f"{type(exc).__name__}: {exc}").to_reply())

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        write_lock = asyncio.Lock()
        authenticated = self.token is None
        if authenticated:
            self.connected += 1
        pending: set[asyncio.Task[None]] = set()

        async def send(message: dict[str, Any]) -> None:
            async with write_lock:
                writer.write(pack_frame(message))
                await writer.drain()

        async def execute(request: dict[str, Any]) -> None:
            reply = await loop.run_in_executor(self.compute, self.run_op, request)
            await send(reply)
            if request.get("op") == "shutdown":
                self.stop("shutdown")

        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                (length,) = HEADER.unpack(header)
                if length > MAX_FRAME_BYTES:
                    # The stream cannot be resynchronised after an absurd length: say why, then close.
                    await send(error_reply(None, UserError("frame_too_large", f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}").to_reply()))
                    break
                body = await reader.readexactly(length)
                try:
                    request = unpack_body(body)
                except UserError as exc:
                    await send(error_reply(None, exc.to_reply()))
                    continue
                if not authenticated:
                    token = request.get("token")
                    if request.get("op") != "hello" or not isinstance(token, str) or not hmac.compare_digest(token, self.token or ""):
                        await send(error_reply(request.get("id"), UserError("unauthorized", "send hello with the worker token first").to_reply()))
                        break
                    authenticated = True
                    self.connected += 1
                # Ops are queued on the single compute thread in arrival order.
                task = asyncio.ensure_future(execute(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        finally:
            if authenticated:
                self.connected -= 1
                if self.exit_on_disconnect and self.connected == 0:
                    self.stop("the server closed its connection")
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            writer.close()


async def serve(
    handlers: Handlers, socket_path: str | None, host: str, port: int | None, token: str | None,
    exit_on_disconnect: bool = False,
) -> str:
    """Serve until stopped; returns why ("shutdown" for the shutdown op)."""
    server_state = WorkerServer(handlers, token, exit_on_disconnect)
    if socket_path:
        server = await asyncio.start_unix_server(server_state.serve_connection, path=socket_path, limit=1 << 20)
        where = f"unix:{socket_path}"
    else:
        server = await asyncio.start_server(server_state.serve_connection, host=host, port=port or 0, limit=1 << 20)
        where = "tcp:%s:%d" % server.sockets[0].getsockname()[:2]
    # The parent process waits for this exact line before connecting.
    print(f"lathe-worker listening on {where}", flush=True)
    await server_state.stopped.wait()
    server.close()  # not wait_closed(): that would wait for connections still draining queued ops
    return server_state.stop_reason
