"""Connect mode: `python -m lathe_worker --connect HOST:PORT` dials a server, registers with the
worker token, then serves the server's ops over that connection; a refused token exits at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from lathe_worker.connect import parse_address
from lathe_worker.protocol import HEADER, pack_frame

WORKER_DIR = Path(__file__).resolve().parents[1]
TOKEN = "test-token-123"


def read_frame(conn: socket.socket) -> dict:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the worker closed the connection")
            data += chunk
        return data

    (length,) = HEADER.unpack(exactly(HEADER.size))
    return msgpack.unpackb(exactly(length), raw=False, strict_map_key=False)


def start_connecting_worker(port: int, models_dir: Path, token: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lathe_worker", "--connect", f"127.0.0.1:{port}", "--models-dir", str(models_dir), *extra],
        cwd=WORKER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LATHE_WORKER_TOKEN": token},
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accept(listener: socket.socket, proc: subprocess.Popen, timeout: float = 120.0) -> socket.socket:
    listener.settimeout(timeout)
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        proc.kill()
        raise AssertionError(f"the worker never connected: {proc.communicate()[1]}") from None
    conn.settimeout(timeout)
    return conn


def test_parse_address_names_the_problem() -> None:
    assert parse_address("10.0.0.2:7001") == ("10.0.0.2", 7001)
    assert parse_address("[::1]:7001") == ("::1", 7001)
    for bad in ("nohost", "host:", ":7001", "host:99999", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def test_worker_dials_registers_and_serves_ops_then_reconnects(models_dir: Path) -> None:
    # The port is taken only after the worker starts: it must retry until the server is up.
    port = free_port()
    proc = start_connecting_worker(port, models_dir, TOKEN)
    try:
        time.sleep(0.1)  # gives the worker a chance to find nobody listening (not needed for correctness)
        listener = socket.create_server(("127.0.0.1", port))
        conn = accept(listener, proc)
        hello = read_frame(conn)
        assert hello["op"] == "register" and hello["token"] == TOKEN and hello["pid"] == proc.pid
        assert hello["devices"][0]["type"] == "cpu" and hello["devices"][0]["memory_bytes"] > 0
        assert "lathe/tiny-qwen3" in {m["model_name"] for m in hello["models"]}
        assert hello["loaded"] is None
        conn.sendall(pack_frame({"id": 0, "ok": True, "worker_id": "w1"}))
        assert proc.stdout.readline().strip() == f"lathe-worker connected to tcp:127.0.0.1:{port} as w1"

        # The server now sends ops over the same connection.
        conn.sendall(pack_frame({"op": "load_model", "id": 1, "model": "lathe/tiny-qwen3"}))
        conn.sendall(pack_frame({"op": "create_adapter", "id": 2, "adapter": "a", "lora": {"rank": 2}}))
        conn.sendall(pack_frame({"op": "stats", "id": 3}))
        replies = {r["id"]: r for r in (read_frame(conn) for _ in range(3))}
        assert all(r["ok"] for r in replies.values()), replies
        assert replies[3]["model"] == "lathe/tiny-qwen3"
        assert [a["adapter"] for a in replies[3]["adapters"]] == ["a"]

        # The server goes away: the worker registers again, with its model still loaded and no adapters.
        conn.close()
        conn = accept(listener, proc)
        again = read_frame(conn)
        assert again["op"] == "register" and again["loaded"] == "lathe/tiny-qwen3"
        conn.sendall(pack_frame({"id": 0, "ok": True, "worker_id": "w2"}))
        conn.sendall(pack_frame({"op": "stats", "id": 1}))
        assert read_frame(conn)["adapters"] == []

        conn.sendall(pack_frame({"op": "shutdown", "id": 2}))
        assert read_frame(conn)["ok"] is True
        assert proc.wait(timeout=60) == 0
        listener.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refused_token_exits_with_a_clear_message(models_dir: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    proc = start_connecting_worker(listener.getsockname()[1], models_dir, "wrong-token")
    try:
        conn = accept(listener, proc)
        assert read_frame(conn)["token"] == "wrong-token"
        conn.sendall(pack_frame({"id": 0, "ok": False, "error": {"code": "unauthorized", "message": "wrong worker token", "category": "user"}}))
        conn.close()
        assert proc.wait(timeout=60) == 2
        stderr = proc.stderr.read()
        assert "refused this worker (unauthorized: wrong worker token)" in stderr
        assert "LATHE_WORKER_TOKEN" in stderr
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_connect_without_a_token_fails_before_loading_anything(models_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LATHE_WORKER_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "lathe_worker", "--connect", "127.0.0.1:1", "--models-dir", str(models_dir)],
        cwd=WORKER_DIR, capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode != 0
    assert "LATHE_WORKER_TOKEN" in done.stderr
