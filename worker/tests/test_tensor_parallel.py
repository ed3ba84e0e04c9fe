"""A tensor-parallel group (2 processes, gloo on CPU) computes what one process computes: losses,
LoRA gradients, weights after optimizer steps, greedy and seeded samples."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lathe_worker.models.loading import save_model
from lathe_worker.models.tiny import TINY_MODELS, init_weights
from lathe_worker.models.transformer import Transformer
from small_model import SMALL_CONFIG, make_engine
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
        assert got["tokens"] == want["tokens"]
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
