"""The worker as a process: `python -m lathe_worker` over a unix socket and over TCP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import pytest

from lathe_worker.protocol import HEADER, encode_tensor, pack_frame

from small_model import random_tokens, write_small_model

import torch

WORKER_DIR = Path(__file__).resolve().parents[1]


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.next_id = 0

    def send_raw(self, body: bytes) -> None:
        self.sock.sendall(HEADER.pack(len(body)) + body)

    def receive(self) -> dict:
        header = self._read(HEADER.size)
        return msgpack.unpackb(self._read(HEADER.unpack(header)[0]), raw=False, strict_map_key=False)

    def call(self, op: str, **fields) -> dict:
        self.next_id += 1
        self.sock.sendall(pack_frame({"op": op, "id": self.next_id, **fields}))
        reply = self.receive()
        assert reply["id"] == self.next_id
        return reply

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("worker closed the connection")
            data += chunk
        return data


def start_worker(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lathe_worker", *args],
        cwd=WORKER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    line = proc.stdout.readline()
    assert "lathe-worker listening on" in line, line
    return proc, line.strip().rsplit(" ", 1)[1]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return write_small_model(tmp_path_factory.mktemp("small") / "model")


@pytest.fixture()
def unix_worker(model_folder, tmp_path):
    socket_path = str(tmp_path / "w.sock")
    proc, _ = start_worker(["--socket", socket_path, "--models-dir", str(tmp_path / "models")])
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(socket_path)
    yield proc, Connection(sock)
    proc.kill()
    proc.wait()


def datum(tokens: list[int]) -> dict:
    t = torch.tensor(tokens)
    return {"tokens": encode_tensor(t[:-1]), "loss_fn_inputs": {"target_tokens": encode_tensor(t[1:]), "weights": encode_tensor(torch.ones(len(tokens) - 1))}}


def test_bad_requests_get_error_replies_and_the_worker_keeps_serving(unix_worker, model_folder):
    proc, conn = unix_worker
    assert conn.call("hello")["ok"]
    assert conn.call("load_model", model=str(model_folder))["vocab_size"] == 512
    assert conn.call("create_adapter", adapter="a", lora={"rank": 4, "seed": 1})["ok"]
    assert conn.call("create_adapter", adapter="b", lora={"rank": 8})["ok"]

    # A malformed frame: an error reply without an id, and the stream stays usable.
    conn.send_raw(b"\xc1\xc1")
    reply = conn.receive()
    assert reply["ok"] is False and reply["id"] is None and reply["error"]["code"] == "malformed_frame"

    cases = {
        "unknown_op": conn.call("teleport"),
        "unknown_adapter": conn.call("optim_step", adapter="zzz", adam_params={}),
        "invalid_lora_rank": conn.call("create_adapter", adapter="c", lora={"rank": 6}),
        "missing_field": conn.call("load_model"),
        "invalid_field": conn.call("forward_backward", items=[]),
    }
    for code, reply in cases.items():
        assert reply["ok"] is False and reply["error"]["code"] == code, reply
        assert reply["error"]["category"] == "user" and reply["error"]["message"]
    bad_naming = conn.call("export_peft", adapter="a", path=str(model_folder.parent / "x"), naming="hf")
    assert bad_naming["ok"] is False and bad_naming["error"]["code"] == "invalid_field" and "naming" in bad_naming["error"]["message"]

    # Per-item errors inside one batch; the good items of other adapters still train.
    nan_weights = datum(random_tokens(6, 1))
    nan_weights["loss_fn_inputs"]["weights"] = encode_tensor(torch.tensor([1.0, float("nan"), 1, 1, 1]))
    too_long = datum(list(range(70)))
    bad_shape = datum(random_tokens(6, 2))
    bad_shape["loss_fn_inputs"]["weights"] = encode_tensor(torch.ones(3))
    oov = datum([9999, 1, 2, 3])
    reply = conn.call("forward_backward", items=[
        {"adapter": "a", "loss_fn": "cross_entropy", "data": [nan_weights]},
        {"adapter": "a", "loss_fn": "cross_entropy", "data": [too_long]},
        {"adapter": "b", "loss_fn": "cross_entropy", "data": [datum(random_tokens(9, 3))]},
        {"adapter": "a", "loss_fn": "cross_entropy", "data": [bad_shape]},
        {"adapter": "a", "loss_fn": "cross_entropy", "data": [oov]},
        {"adapter": "a", "loss_fn": "kl_magic", "data": [datum([1, 2, 3])]},
        {"adapter": "a", "loss_fn": "cross_entropy", "data": [{"tokens": {"dtype": "int64", "shape": [4], "data": b"\x00"}, "loss_fn_inputs": {}}]},
    ])
    assert reply["ok"]
    results = reply["results"]
    assert results[2]["ok"] and results[2]["loss_fn_outputs"][0]["logprobs"]["shape"] == [8]
    for index in (0, 1, 3, 4, 5, 6):
        assert results[index]["ok"] is False, (index, results[index])
    assert "finite" in results[0]["error"]["message"].lower() or "nan" in results[0]["error"]["message"].lower()
    assert results[1]["error"]["code"] == "context_too_long"
    assert "weights" in results[3]["error"]["message"]
    assert results[4]["error"]["code"] == "token_out_of_vocab"
    assert "kl_magic" in results[5]["error"]["message"]
    assert results[6]["error"]["code"] == "invalid_tensor"

    step = conn.call("optim_step", adapter="b", adam_params={"learning_rate": 1e-3})
    assert step["ok"], step
    bad_adam = conn.call("optim_step", adapter="b", adam_params={"learning_rate": float("nan")})
    assert bad_adam["ok"] is False and "learning_rate" in bad_adam["error"]["message"]

    # Dimuon over the wire: chosen at creation, reported back, stepped with optimizer_params only.
    dimuon = {"type": "dimuon", "version": 1}
    assert conn.call("create_adapter", adapter="d", lora={"rank": 4}, optimizer={"type": "dimuon"})["optimizer"] == dimuon
    assert conn.call("forward_backward", items=[{"adapter": "d", "loss_fn": "cross_entropy", "data": [datum(random_tokens(9, 4))]}])["ok"]
    wrong = conn.call("optim_step", adapter="d", adam_params={"learning_rate": 1e-3})
    assert wrong["ok"] is False and wrong["error"]["category"] == "user" and wrong["error"]["message"].startswith("adam_params:")
    step = conn.call("optim_step", adapter="d", optimizer_params={"type": "dimuon", "learning_rate": 1e-2, "beta1": 0.9})
    assert step["ok"] and step["metrics"]["grad_norm:mean"] > 0, step
    unknown = conn.call("create_adapter", adapter="e", lora={"rank": 4}, optimizer={"type": "lion"})
    assert unknown["ok"] is False and "optimizer.type" in unknown["error"]["message"]

    sample = conn.call("sample", items=[{"adapter": "b", "prompt": encode_tensor(torch.tensor([1, 2, 3])), "num_samples": 2, "sampling_params": {"max_tokens": 4, "seed": 1}}])
    seqs = sample["results"][0]["sequences"]
    assert len(seqs) == 2 and seqs[0]["tokens"]["shape"] == [4] and seqs[0]["stop_reason"] == "length"

    # Sampling extras over the wire: every new output is a tensor.
    targets = torch.tensor([[-1, -1], [7, -1], [8, 9]])
    extras = conn.call("sample", items=[
        {"adapter": "b", "prompt": encode_tensor(torch.tensor([1, 2, 3, 4])), "num_samples": 2,
         "sampling_params": {"max_tokens": 3, "seed": 1}, "topk_sample_logprobs": 2, "prompt_alt_tokens_k": 3,
         "target_prompt_logprobs": encode_tensor(targets), "prompt_logprobs": True, "prompt_logprobs_last_n": 2},
        {"adapter": "b", "prompt": encode_tensor(torch.tensor([1, 2, 3])), "sampling_params": {"max_tokens": 1},
         "target_prompt_logprobs": encode_tensor(torch.tensor([[0.5], [1.0]]))},
    ])["results"]
    got = extras[0]
    assert got["ok"], got
    assert [(s["topk_logprobs"]["token_ids"]["dtype"], s["topk_logprobs"]["token_ids"]["shape"],
             s["topk_logprobs"]["logprobs"]["shape"]) for s in got["sequences"]] == [("int64", [3, 2], [3, 2])] * 2
    assert (got["target_prompt_logprobs"]["dtype"], got["target_prompt_logprobs"]["shape"]) == ("float32", [3, 2])
    assert {k: (v["dtype"], v["shape"]) for k, v in got["prompt_alt_tokens"].items()} == \
        {"tokens": ("int64", [3, 3]), "logprobs": ("float32", [3, 3])}
    assert got["prompt_logprobs"][:2] == [None, None] and None not in got["prompt_logprobs"][2:]
    assert extras[1]["ok"] is False and "target_prompt_logprobs" in extras[1]["error"]["message"]

    stats = conn.call("stats")
    assert {a["adapter"]: a["optimizer"] for a in stats["adapters"]} == {"a": {"type": "adamw"}, "b": {"type": "adamw"}, "d": dimuon}
    assert conn.call("shutdown")["ok"]
    assert proc.wait(timeout=30) == 0


def test_tcp_worker_requires_its_token(model_folder, tmp_path):
    proc, where = start_worker(["--port", "0", "--models-dir", str(tmp_path)], env={"LATHE_WORKER_TOKEN": "s3cret"})
    try:
        host, port = where.removeprefix("tcp:").rsplit(":", 1)
        wrong = Connection(socket.create_connection((host, int(port))))
        reply = wrong.call("stats")
        assert reply["ok"] is False and reply["error"]["code"] == "unauthorized"
        right = Connection(socket.create_connection((host, int(port))))
        assert right.call("hello", token="s3cret")["ok"]
        assert right.call("stats")["ok"]
        # A TCP worker is not owned by one server: it outlives a closed connection, for the next one.
        right.sock.close()
        again = Connection(socket.create_connection((host, int(port))))
        assert again.call("hello", token="s3cret")["ok"] and again.call("stats")["ok"]
    finally:
        proc.kill()
        proc.wait()


def wait_for_eof(sock: socket.socket, timeout_s: float = 60) -> None:
    """Block until the peer's end of `sock` is closed, which happens when the worker process exits."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass  # also a closed peer


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie left for a re-parented reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_until_gone(pid: int, timeout_s: float = 30) -> bool:
    """Polls until `pid` has exited: its socket closes a moment before the process is gone."""
    deadline = time.monotonic() + timeout_s
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_worker_exits_when_its_parent_dies(tmp_path):
    """The server is killed -9 (no shutdown, no clean close): its worker must not linger. The test,
    not the parent, holds the worker's connection, so only the parent's death can end it."""
    socket_path = str(tmp_path / "w.sock")
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import subprocess, sys, time
            worker = subprocess.Popen([sys.executable, "-m", "lathe_worker", *sys.argv[1:]], stderr=subprocess.DEVNULL)
            print(worker.pid, flush=True)
            time.sleep(3600)
        """), "--socket", socket_path, "--models-dir", str(tmp_path / "models")],
        cwd=WORKER_DIR, stdout=subprocess.PIPE, text=True,
    )
    worker_pid = None
    try:
        worker_pid = int(parent.stdout.readline())
        assert "lathe-worker listening on" in parent.stdout.readline()  # the worker shares the pipe
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(socket_path)
        assert Connection(sock).call("hello")["ok"]
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_for_eof(sock)
        assert wait_until_gone(worker_pid)
    finally:
        parent.kill()
        parent.wait()
        if worker_pid is not None and not process_gone(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def test_spawned_worker_exits_when_its_server_connection_closes(tmp_path):
    proc, _ = start_worker(["--socket", str(tmp_path / "w.sock"), "--models-dir", str(tmp_path / "models")])
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(tmp_path / "w.sock"))
        assert Connection(sock).call("hello")["ok"]
        sock.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
