"""A tensor-parallel group (2 processes, gloo on CPU) computes what one process computes: losses,
LoRA gradients, weights after optimizer steps, greedy and seeded samples."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lathe_worker.lora import LoraConfig
from lathe_worker.models.loading import save_model
from lathe_worker.models.tiny import TINY_MODELS, init_weights
from lathe_worker.models.transformer import Transformer
from lathe_worker.optim import AdamParams
from lathe_worker.protocol import decode_tensor, encode_tensor
from lathe_worker.sample_request import SampleRequest, SamplingParams
from small_model import SMALL_CONFIG, make_engine, random_tokens, sft_item
from test_worker_process import Connection, datum
from tolerance import assert_close_rel
import tp_scenario

TESTS_DIR = Path(__file__).resolve().parent
WORLD = 2
GROUP_TIMEOUT_S = 120  # a wedged collective must fail the test, never hang CI

# Llama layout with an untied LM head and attention biases (column biases sliced, row biases added once).
SMALL_LLAMA = replace(TINY_MODELS["lathe/tiny-llama3"], vocab_size=512, max_position_embeddings=64, attention_bias=True)


def _write(config, folder: Path) -> Path:
    model = Transformer(config)
    init_weights(model, seed=11)
    save_model(model, folder)
    return folder


def _run_group(folder: Path, out_dir: Path) -> list[dict]:
    store = out_dir / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LATHE_MALLOC_TUNED": "0"}
    procs = [subprocess.Popen([sys.executable, str(TESTS_DIR / "tp_scenario.py"), str(folder), str(out_dir), str(store),
                               str(rank), str(WORLD)], env=env, stderr=subprocess.PIPE, text=True)
             for rank in range(WORLD)]
    errors = []
    try:
        for rank, proc in enumerate(procs):
            _, stderr = proc.communicate(timeout=GROUP_TIMEOUT_S)
            if proc.returncode != 0:
                errors.append(f"rank {rank} exited {proc.returncode}:\n{stderr[-3000:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert not errors, "\n".join(errors)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


def _assert_same_record(actual: dict, expected: dict, rel: float) -> None:
    for got, want in zip(actual["steps"], expected["steps"], strict=True):
        assert_close_rel(torch.tensor(got["loss"]), torch.tensor(want["loss"]), rel)
        for g, w in zip(got["logprobs"], want["logprobs"], strict=True):
            assert_close_rel(g, w, rel)
        assert got["grads"].keys() == want["grads"].keys() and want["grads"]
        for name, grad in want["grads"].items():
            assert_close_rel(got["grads"][name], grad, rel)
        for name, weight in want["weights"].items():
            assert_close_rel(got["weights"][name], weight, rel)
    for got, want in zip(actual["samples"], expected["samples"], strict=True):
        assert got["tokens"] == want["tokens"], (got, want)
        for g, w in zip(got["logprobs"], want["logprobs"], strict=True):
            assert_close_rel(torch.tensor(g), torch.tensor(w), rel)
        if want["prompt_logprobs"] is not None:
            assert_close_rel(torch.tensor(got["prompt_logprobs"][1:]), torch.tensor(want["prompt_logprobs"][1:]), rel)


@pytest.mark.parametrize("config", [SMALL_CONFIG, SMALL_LLAMA], ids=["qwen3-tied", "llama-untied-bias"])
def test_sharded_group_computes_what_one_process_computes(config, tmp_path):
    folder = _write(config, tmp_path / "model")
    expected = tp_scenario.run(make_engine(folder))
    ranks = _run_group(folder, tmp_path)

    # Each rank holds its slice of every projection: half the heads and half the MLP columns.
    shapes = ranks[0]["shapes"]
    q_out = config.num_attention_heads * config.head_dim
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (q_out // WORLD, config.hidden_size)
    assert shapes["model.layers.0.self_attn.o_proj.weight"] == (config.hidden_size, q_out // WORLD)
    assert shapes["model.layers.1.mlp.down_proj.weight"] == (config.hidden_size, config.intermediate_size // WORLD)
    assert shapes["model.embed_tokens.weight"] == (config.vocab_size, config.hidden_size)  # replicated

    # Sums over the all-reduce run in another order than one process's matmuls: equal up to rounding.
    for rank in ranks:
        _assert_same_record(rank["record"], expected, rel=2e-4)
    # The ranks stay in lock-step: bit-identical replicas of every adapter, the same samples.
    for name, weight in ranks[0]["record"]["steps"][-1]["weights"].items():
        assert torch.equal(ranks[1]["record"]["steps"][-1]["weights"][name], weight), name
    assert [s["tokens"] for s in ranks[0]["record"]["samples"]] == [s["tokens"] for s in ranks[1]["record"]["samples"]]


def _wait_listening(proc: subprocess.Popen, timeout_s: float) -> None:
    """Read the group's stdout until rank 0 says it listens (bounded: a broken group must not hang CI)."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "lathe-worker listening on" in line:
                return
    raise AssertionError(f"the group did not start listening: {''.join(seen)[-2000:]}")


def _start_group(tmp_path: Path) -> tuple[subprocess.Popen, Connection]:
    """`torchrun --standalone --nproc-per-node 2 -m lathe_worker --socket ...` and a connection to rank 0."""
    socket_path = str(tmp_path / "w.sock")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LATHE_MALLOC_TUNED": "0"}
    with open(tmp_path / "group.stderr", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 str(WORLD), "-m", "lathe_worker", "--socket", socket_path, "--device", "cpu",
                                 "--models-dir", str(tmp_path / "models")],
                                cwd=TESTS_DIR.parent, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                start_new_session=True)  # its own process group: the ranks die with it
    try:
        _wait_listening(proc, GROUP_TIMEOUT_S)
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(GROUP_TIMEOUT_S)
        sock.connect(socket_path)
    except BaseException:
        _kill_group(proc)
        raise
    return proc, Connection(sock)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill torchrun and the ranks it started (a SIGKILLed torchrun cannot stop them itself)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # torchrun and every rank already exited
    proc.wait()


def test_shutdown_op_ends_every_rank(tmp_path):
    folder = _write(SMALL_CONFIG, tmp_path / "model")
    proc, conn = _start_group(tmp_path)
    try:
        assert conn.call("hello")["ok"]
        assert conn.call("load_model", model=str(folder))["ok"]
        assert conn.call("shutdown")["ok"]
        assert proc.wait(timeout=GROUP_TIMEOUT_S) == 0
    finally:
        _kill_group(proc)


def test_torchrun_group_serves_the_protocol_like_one_worker(tmp_path):
    """`torchrun --nproc-per-node 2 -m lathe_worker --socket ...`: rank 0 serves, rank 1 follows; the
    replies equal an in-process engine's, and closing the connection ends the whole group."""
    folder = _write(SMALL_CONFIG, tmp_path / "model")
    reference = make_engine(folder)
    proc, conn = _start_group(tmp_path)
    try:
        info = conn.call("load_model", model=str(folder))
        assert info["vocab_size"] == SMALL_CONFIG.vocab_size
        assert info["num_params"] == reference.model_info()["num_params"]  # the whole model, not rank 0's part
        assert conn.call("create_adapter", adapter="a", lora={"rank": 4, "seed": 3})["ok"]
        reference.create_adapter("a", LoraConfig(rank=4, seed=3))
        tokens = random_tokens(10, 4)
        item = {"adapter": "a", "loss_fn": "cross_entropy", "data": [datum(tokens)]}
        for step in range(2):
            reply = conn.call("forward_backward", items=[item])
            want = reference.forward_backward([sft_item("a", tokens)], backward=True)[0]
            got = reply["results"][0]
            assert_close_rel(torch.tensor(got["metrics"]["loss:sum"]), torch.tensor(want["metrics"]["loss:sum"]), 2e-4)
            assert conn.call("optim_step", adapter="a", adam_params={"learning_rate": 0.05})["ok"]
            reference.optim_step("a", AdamParams(learning_rate=0.05))
        # A seeded sample equals the reference's. An unseeded one succeeds only if both ranks drew the same tokens
        # (they compare them after each sample, and leave rather than decode out of step): rank 0 seeds it for all.
        prompt = random_tokens(5, 8)
        sample = {"adapter": "a", "prompt": encode_tensor(torch.tensor(prompt)), "num_samples": 2,
                  "sampling_params": {"max_tokens": 6, "seed": 21}}
        got = conn.call("sample", items=[sample, {**sample, "sampling_params": {"max_tokens": 6}}])["results"]
        want = reference.sample([SampleRequest("a", torch.tensor(prompt), 2, SamplingParams(max_tokens=6, seed=21))])[0]
        assert [decode_tensor(s["tokens"], "tokens").tolist() for s in got[0]["sequences"]] == [s["tokens"] for s in want["sequences"]]
        assert got[1]["ok"] and all(len(decode_tensor(s["tokens"], "tokens")) == 6 for s in got[1]["sequences"])
        # Save on rank 0, load on every rank; errors come back as on one worker.
        assert conn.call("save_adapter", adapter="a", path=str(tmp_path / "ckpt"))["ok"]
        assert conn.call("load_adapter", adapter="b", path=str(tmp_path / "ckpt"), include_optimizer=True)["ok"]
        reply = conn.call("forward", items=[{**item, "adapter": "b"}])
        want = reference.forward_backward([sft_item("a", tokens)], backward=False)[0]
        assert_close_rel(torch.tensor(reply["results"][0]["metrics"]["loss:sum"]), torch.tensor(want["metrics"]["loss:sum"]), 2e-4)
        assert conn.call("optim_step", adapter="zzz", adam_params={})["error"]["code"] == "unknown_adapter"
        assert conn.call("drop_adapter", adapter="b")["ok"]
        assert [a["adapter"] for a in conn.call("stats")["adapters"]] == ["a"]
        conn.sock.close()
        assert proc.wait(timeout=GROUP_TIMEOUT_S) == 0  # rank 0 exits on disconnect, rank 1 follows it
    finally:
        _kill_group(proc)
