"""One-shot GPU benchmark of the Lathe engine (one NVIDIA H200-class GPU, < 10 minutes).

Phases (each guarded: a failure is recorded and the remaining phases still run):
  correctness  bf16 vs float32 on the device for a small Qwen3-shaped model: logits / logprobs max and mean
               abs diff, forward_backward loss relative diff, LoRA gradient cosine, greedy-token agreement.
               Fails loudly (phase status FAIL, exit code 1) when wildly off.
  train        Engine.forward_backward + optim_step tokens/s and MFU, LoRA rank 32 on all targets, random
               bf16 weights initialised on the device: Qwen3-0.6B-shaped (8 x 2048 tokens) and
               Qwen3-8B-shaped (4 x 2048 tokens).
  sample       Engine.sample tokens/s, 64 (0.6B) / 32 (8B) prompts x 128 new tokens, 4 adapters round-robin.
  ratios       the three ratio benchmarks of bench/python (engine-train vs transformers + PEFT, engine-multi-adapter,
               engine-sample vs transformers `generate`) with their default shapes, both sides on this GPU in
               bfloat16, each in its own process. Needs transformers and peft (the H200 image has both);
               without them the phase is skipped and says so.

MFU = model FLOPs / (step time * peak), model FLOPs per token = 6 * N + 12 * L * H * hd * T (the usual
PaLM/nanoGPT convention: N = parameters that take part in a matmul per token, i.e. all linear layers plus
the LM head, not the embedding lookup; the attention term counts the full T x T score matrix). LoRA
training does not compute base-weight gradients, so the FLOPs it executes are ~2/3 of that; `mfu_executed`
counts 4 * N + the chunked LM head's recomputation + attention instead.

Usage:  bash bench/gpu/run.sh                 (sets up Python, then runs this)
        python bench/gpu/gpu_bench.py [--quick] [--device cpu] [--phases correctness,ratios,train,sample]
Results: $OUT/gpu_results.json if $OUT is set, else bench/gpu/last_results.json; a markdown table on stdout.

Why one file of ~570 lines: a one-shot script for a short, scarce GPU session; its phases share the model
builders, the timing helpers and the result table, and one file read top to bottom is what such a session
needs to check and run.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "worker"))

import torch  # noqa: E402


def _stub_safetensors() -> None:
    """The engine imports safetensors for checkpoints, which this benchmark never touches. On an offline box
    without it, install an inert stand-in rather than fail (any real use raises)."""
    import types

    def unavailable(*_a, **_k):
        raise RuntimeError("safetensors is not installed (stubbed by gpu_bench.py)")

    st, st_torch = types.ModuleType("safetensors"), types.ModuleType("safetensors.torch")
    st.SafetensorError = type("SafetensorError", (Exception,), {})
    st.safe_open = unavailable
    st_torch.load_file = st_torch.save_file = unavailable
    st.torch = st_torch
    sys.modules["safetensors"], sys.modules["safetensors.torch"] = st, st_torch
    print("note: safetensors missing; using an inert stub (checkpoints are not used here)", file=sys.stderr)


try:
    import safetensors.torch  # noqa: F401,E402
except ImportError:
    _stub_safetensors()

from lathe_worker.engine import Engine  # noqa: E402
from lathe_worker.micro_batches import Datum, WorkItem  # noqa: E402
from lathe_worker.lora import LoraBatch, LoraConfig  # noqa: E402
from lathe_worker.models.config import ModelConfig  # noqa: E402
from lathe_worker.models.registry import ModelRegistry  # noqa: E402
from lathe_worker.models.transformer import Transformer, causal_padding_mask  # noqa: E402
from lathe_worker.optim import AdamParams  # noqa: E402
from lathe_worker.sample_request import SampleRequest, SamplingParams  # noqa: E402

H200_BF16_DENSE_TFLOPS = 989.0


def qwen3(hidden, layers, heads, kv, head_dim, inter, vocab, tied, max_pos=40960) -> ModelConfig:
    return ModelConfig(
        architecture="qwen3", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, rope_scaling=None, max_position_embeddings=max_pos,
        tie_word_embeddings=tied, qk_norm=True, attention_bias=False)


# name -> (config, train batch rows, train seq len, sample prompts); --quick swaps in the small shapes.
FULL = {
    "qwen3-0.6b": (qwen3(1024, 28, 16, 8, 128, 3072, 151936, True), 8, 2048, 64),
    "qwen3-8b": (qwen3(4096, 36, 32, 8, 128, 12288, 151936, False), 4, 2048, 32),
}
QUICK = {
    "qwen3-0.6b": (qwen3(128, 2, 4, 2, 32, 256, 2048, True), 2, 64, 4),
    "qwen3-8b": (qwen3(256, 2, 8, 2, 32, 512, 2048, False), 2, 64, 4),
}
CORRECTNESS = {False: qwen3(512, 4, 8, 4, 64, 1536, 151936, True), True: qwen3(64, 2, 4, 2, 16, 128, 1024, True)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def init_random(model: Transformer, seed: int) -> None:
    """Unit-scale normal weights (std 1/sqrt(fan_in), 4x on the output matrix), norms at 1, drawn on
    the model's own device (no CPU copy, no safetensors round trip)."""
    torch.manual_seed(seed)
    out_name = "model.embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, p.shape[-1] ** -0.5 * (4.0 if name == out_name else 1.0))


def make_engine(model: Transformer, name: str, device: torch.device, dtype: torch.dtype, tmp: Path) -> Engine:
    engine = Engine(registry=ModelRegistry(models_dir=tmp / "models"), device=device, dtype=dtype)
    engine.model, engine.model_name = model, name
    return engine


def params_info(cfg: ModelConfig) -> dict:
    D, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = D * q + 2 * D * kv + q * D + 3 * D * cfg.intermediate_size
    norms = L * (2 * D + 2 * cfg.head_dim) + D
    total = L * per_layer + V * D * (1 if cfg.tie_word_embeddings else 2) + norms
    return {"total": total, "matmul": L * per_layer + V * D, "head": V * D}


def flops_per_token(cfg: ModelConfig, seq: int) -> tuple[float, float]:
    """(model FLOPs per trained token by the 6N convention, FLOPs LoRA training actually executes)."""
    info = params_info(cfg)
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq
    return 6 * info["matmul"] + attn, 4 * info["matmul"] + 2 * info["head"] + attn


def batch_items(adapter: str, tokens: torch.Tensor) -> list[WorkItem]:
    return [WorkItem(adapter, "cross_entropy", None,
                     [Datum(tokens=s[:-1].clone(), inputs={"target_tokens": s[1:].clone()}) for s in tokens])]


def fb(engine: Engine, items: list[WorkItem]) -> list[dict]:
    out = engine.forward_backward(items, backward=True)
    for o in out:
        if isinstance(o, Exception):
            raise o
    return out


# ---------------------------------------------------------------------------------------------------
# (a) bf16 vs float32


def phase_correctness(args, device: torch.device, tmp: Path) -> dict:
    cfg = CORRECTNESS[args.quick]
    m32 = Transformer(cfg, dtype=torch.float32, device=device)
    init_random(m32, seed=1)
    m16 = copy.deepcopy(m32).to(torch.bfloat16)
    e32 = make_engine(m32, "random/small-fp32", device, torch.float32, tmp)
    e16 = make_engine(m16, "random/small-bf16", device, torch.bfloat16, tmp)
    gen = torch.Generator().manual_seed(7)
    b_init = None
    for engine in (e32, e16):
        engine.create_adapter("x", LoraConfig(rank=32, seed=3))
        with torch.no_grad():  # nonzero B so the LoRA path matters in forward and A gets gradients
            if b_init is None:
                b_init = [torch.randn(b.shape, generator=gen) * 0.02 for _, _, b in engine.adapters["x"].adapter.named_factors()]
            for (_, _, b), v in zip(engine.adapters["x"].adapter.named_factors(), b_init):
                b.copy_(v)

    B, T = (2, 32) if args.quick else (4, 512)
    lengths = torch.tensor([T - (T // 4) * (i % 3) for i in range(B)])  # right padding on some rows
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen)
    pos = torch.arange(T).expand(B, T)
    mask = causal_padding_mask(lengths, T)
    real = torch.arange(T)[None] < lengths[:, None]
    out: dict = {"model": f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}",
                 "tokens": int(lengths.sum())}

    logits, logprobs = {}, {}
    with torch.no_grad():
        for key, engine in (("fp32", e32), ("bf16", e16)):
            model, adapter = engine.model, engine.adapters["x"].adapter
            h = model(ids[:, :T].to(device), pos.to(device), mask.to(device), lora=LoraBatch.single(adapter, B))
            lg = model.lm_head_logits(h, adapter).float()[real.to(device)]
            logits[key], logprobs[key] = lg, lg.log_softmax(-1)
    d_logit = (logits["bf16"] - logits["fp32"]).abs()
    d_lp = (logprobs["bf16"] - logprobs["fp32"]).abs()
    out |= {
        "logits_std": float(logits["fp32"].std()),
        "logits_max_abs_diff": float(d_logit.max()), "logits_mean_abs_diff": float(d_logit.mean()),
        "logprobs_max_abs_diff": float(d_lp.max()), "logprobs_mean_abs_diff": float(d_lp.mean()),
        "argmax_agreement": float((logits["bf16"].argmax(-1) == logits["fp32"].argmax(-1)).float().mean()),
    }
    del logits, logprobs, d_logit, d_lp

    # Training path: forward_backward loss, per-token target logprobs, LoRA gradients.
    seqs = [ids[i, : int(lengths[i]) + 1] for i in range(B)]
    results, grads = {}, {}
    for key, engine in (("fp32", e32), ("bf16", e16)):
        item = WorkItem("x", "cross_entropy", None,
                        [Datum(tokens=s[:-1].clone(), inputs={"target_tokens": s[1:].clone()}) for s in seqs])
        results[key] = fb(engine, [item])[0]
        grads[key] = torch.cat([p.grad.flatten().float() for p in engine.adapters["x"].adapter.parameters()])
        engine.optim_step("x", AdamParams())
    l32, l16 = results["fp32"]["metrics"]["loss:sum"], results["bf16"]["metrics"]["loss:sum"]
    tl32 = torch.cat([o["logprobs"] for o in results["fp32"]["loss_fn_outputs"]])
    tl16 = torch.cat([o["logprobs"] for o in results["bf16"]["loss_fn_outputs"]])
    g32, g16 = grads["fp32"], grads["bf16"]
    out |= {
        "loss_fp32": l32, "loss_bf16": l16, "loss_rel_diff": abs(l16 - l32) / abs(l32),
        "target_logprobs_max_abs_diff": float((tl16 - tl32).abs().max()),
        "target_logprobs_mean_abs_diff": float((tl16 - tl32).abs().mean()),
        "grad_cosine": float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)),
        "grad_norm_rel_diff": float((g16.norm() - g32.norm()).abs() / g32.norm()),
    }

    # Greedy decoding agreement (informational: bf16 rounding legitimately flips near-ties eventually).
    prompts = [ids[i, :16 + 4 * i].clone() for i in range(min(B, 4))]
    toks = {}
    for key, engine in (("fp32", e32), ("bf16", e16)):
        reqs = [SampleRequest("x", p, 1, SamplingParams(max_tokens=32, temperature=0.0)) for p in prompts]
        toks[key] = [r["sequences"][0]["tokens"] for r in engine.sample(reqs)]
    prefixes = []
    for a, b in zip(toks["fp32"], toks["bf16"]):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefixes.append(n)
    out["greedy_agreeing_prefix"] = prefixes

    problems = []
    for name, value, ok in (
        ("logprobs_mean_abs_diff", out["logprobs_mean_abs_diff"], out["logprobs_mean_abs_diff"] < 0.25),
        ("target_logprobs_mean_abs_diff", out["target_logprobs_mean_abs_diff"], out["target_logprobs_mean_abs_diff"] < 0.25),
        ("loss_rel_diff", out["loss_rel_diff"], out["loss_rel_diff"] < 0.05),
        ("grad_cosine", out["grad_cosine"], out["grad_cosine"] > 0.9),
        ("argmax_agreement", out["argmax_agreement"], out["argmax_agreement"] > 0.8),
    ):
        if not (math.isfinite(value) and ok):
            problems.append(f"{name}={value:.4g}")
    for k, v in out.items():
        if isinstance(v, float):
            log(f"  correctness {k} = {v:.6g}")
    if problems:
        raise AssertionError("bf16 is wildly off from float32: " + ", ".join(problems))
    return out


# ---------------------------------------------------------------------------------------------------
# (b) training throughput and (c) sampling throughput


def build_model(cfg: ModelConfig, device: torch.device, seed: int) -> Transformer:
    model = Transformer(cfg, dtype=torch.bfloat16, device=device)
    init_random(model, seed)
    sync(device)
    return model


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def phase_train(args, name: str, engine: Engine, device: torch.device) -> dict:
    cfg, rows, seq, _ = (QUICK if args.quick else FULL)[name]
    if "train" not in engine.adapters:
        engine.create_adapter("train", LoraConfig(rank=args.rank, seed=0))  # all targets incl. lm_head
    hp = AdamParams(learning_rate=1e-5)
    warmup, steps = (1, 2) if args.quick else (args.train_warmup, args.train_steps)
    while True:
        gen = torch.Generator().manual_seed(5)
        data = [torch.randint(0, cfg.vocab_size, (rows, seq + 1), generator=gen) for _ in range(warmup + steps)]
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times, losses = [], []
            for i, tokens in enumerate(data):
                sync(device)
                t0 = time.perf_counter()
                res = fb(engine, batch_items("train", tokens))
                engine.optim_step("train", hp)
                sync(device)
                dt = time.perf_counter() - t0
                losses.append(res[0]["metrics"]["loss:sum"])
                if i >= warmup:
                    times.append(dt)
                log(f"  {name} train step {i} ({'timed' if i >= warmup else 'warm-up'}): {dt:.3f}s "
                    f"loss/token {losses[-1] / (rows * seq):.3f}")
            break
        except Exception as exc:  # OOM: halve the batch once or twice, report what ran
            if is_oom(exc) and rows > 1:
                log(f"  {name}: out of memory at {rows} x {seq}; retrying with {rows // 2} rows")
                engine.adapters["train"].optimizer.opt.zero_grad(set_to_none=True)
                rows //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            raise
    tokens = rows * seq
    step_s = sorted(times)[len(times) // 2]
    tps = tokens / (sum(times) / len(times))
    model_fpt, exec_fpt = flops_per_token(cfg, seq)
    peak = args.peak_tflops * 1e12
    out = {
        "batch": f"{rows}x{seq}", "tokens_per_step": tokens, "lora_rank": args.rank,
        "median_step_s": round(step_s, 4), "tokens_per_s": round(tps, 1),
        "model_tflops_per_s": round(model_fpt * tps / 1e12, 2),
        "mfu": round(model_fpt * tps / peak, 4) if device.type == "cuda" else None,
        "mfu_executed": round(exec_fpt * tps / peak, 4) if device.type == "cuda" else None,
        "loss_per_token_first_last": [round(losses[0] / tokens, 4), round(losses[-1] / tokens, 4)],
        "finite": all(math.isfinite(x) for x in losses),
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    engine.adapters["train"].optimizer.opt.zero_grad(set_to_none=True)
    if not out["finite"]:
        raise AssertionError(f"non-finite training loss: {losses}")
    return out


def phase_sample(args, name: str, engine: Engine, device: torch.device) -> dict:
    cfg, _, _, prompts = (QUICK if args.quick else FULL)[name]
    new, plen = (8, 16) if args.quick else (args.sample_new_tokens, args.sample_prompt_len)
    adapters = [f"s{k}" for k in range(args.sample_adapters)]
    for k, a in enumerate(adapters):
        if a not in engine.adapters:
            engine.create_adapter(a, LoraConfig(rank=args.rank, seed=10 + k))
    gen = torch.Generator().manual_seed(9)
    ps = [torch.randint(0, cfg.vocab_size, (plen - (i % 4) * (plen // 8),), generator=gen) for i in range(prompts)]

    def run(max_tokens: int) -> tuple[float, int]:
        reqs = [SampleRequest(adapters[i % len(adapters)] if adapters else None, p, 1,
                              SamplingParams(max_tokens=max_tokens, temperature=args.sample_temperature, seed=i))
                for i, p in enumerate(ps)]
        sync(device)
        t0 = time.perf_counter()
        res = engine.sample(reqs)
        sync(device)
        dt = time.perf_counter() - t0
        for r in res:
            if isinstance(r, Exception):
                raise r
        return dt, sum(len(r["sequences"][0]["tokens"]) for r in res)

    run(4)  # warm-up (kernels, allocator)
    dt, n = run(new)
    assert n == prompts * new, f"expected {prompts * new} sampled tokens, got {n} (no stop tokens were set)"
    # Prefill-only estimate, to split decode from prefill.
    dt1, _ = run(1)
    decode_s = max(dt - dt1, 1e-9)
    return {
        "prompts": prompts, "prompt_len": plen, "new_tokens": new, "adapters": len(adapters),
        "temperature": args.sample_temperature,
        "seconds": round(dt, 3), "tokens_per_s": round(n / dt, 1),
        "decode_tokens_per_s": round(prompts * (new - 1) / decode_s, 1),
        "ms_per_decode_step": round(1000 * decode_s / max(new - 1, 1), 2),
        "prefill_plus_first_token_s": round(dt1, 3),
    }


# ---------------------------------------------------------------------------------------------------
# (d) the ratio benchmarks of bench/python, on this device

RATIO_BENCHES = ("engine-train", "engine-multi-adapter", "engine-sample")
# Model shape of the --quick smoke test (the default, ~100M parameters, is what the targets are about).
RATIO_QUICK_SHAPE = ["--hidden", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "32",
                     "--intermediate", "256", "--vocab", "2048"]


def phase_ratios(args, device: torch.device) -> dict:
    missing = [m for m in ("transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        return {"status": "skipped", "error": f"{', '.join(missing)} not installed: the ratio baselines need them"}
    out: dict = {}
    for name in RATIO_BENCHES:
        script = ROOT / "bench" / "python" / f"{name.replace('-', '_')}.py"
        cmd = [sys.executable, "-u", str(script), "--device", str(device)] + (RATIO_QUICK_SHAPE if args.quick else [])
        log(f"  {name}: {' '.join(cmd[2:])}")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT / "worker", capture_output=True, text=True, timeout=args.ratio_timeout_s)
        except subprocess.TimeoutExpired:
            out[name] = {"status": "error", "error": f"timed out after {args.ratio_timeout_s}s"}
            continue
        lines = proc.stdout.strip().splitlines()
        for line in lines[:-1]:
            log(f"    {line}")
        try:
            summary = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
        except json.JSONDecodeError:
            summary = None
        if summary is None:
            out[name] = {"status": "error", "error": (proc.stderr or proc.stdout)[-1500:]}
            continue
        out[name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1), **summary}
    failed = [k for k, v in out.items() if v["status"] != "ok"]
    if failed:
        raise PhaseError(f"ratio benchmarks failed: {', '.join(failed)}: " +
                         " | ".join(out[k]["error"][-300:] for k in failed), partial={"benches": out})
    return {"benches": out}


# ---------------------------------------------------------------------------------------------------


class PhaseError(Exception):
    """A phase that failed after measuring something worth keeping (`partial` goes into the results)."""

    def __init__(self, message: str, partial: dict) -> None:
        super().__init__(message)
        self.partial = partial


def guarded(results: dict, key: str, fn, *a) -> None:
    log(f"phase {key} ...")
    t0 = time.perf_counter()
    try:
        out = fn(*a)
        results[key] = {"status": "ok", **out, "phase_s": round(time.perf_counter() - t0, 1)}
        log(f"phase {key}: ok ({results[key]['phase_s']}s)")
    except Exception as exc:  # noqa: BLE001 - report and go on with the other phases
        traceback.print_exc()
        status = "FAIL" if isinstance(exc, AssertionError) else "error"
        results[key] = {"status": status, "error": f"{type(exc).__name__}: {exc}"[:2000],
                        "phase_s": round(time.perf_counter() - t0, 1), **getattr(exc, "partial", {})}
        log(f"phase {key}: {status}: {exc}")


def markdown(results: dict) -> str:
    lines = ["| phase | status | key numbers |", "|---|---|---|"]
    for key, r in results["phases"].items():
        if r["status"] != "ok":
            nums = r.get("error", "")[:160].replace("|", "/")
        elif key == "correctness":
            nums = (f"logprobs max/mean abs diff {r['logprobs_max_abs_diff']:.3g}/{r['logprobs_mean_abs_diff']:.3g}, "
                    f"logits max/mean {r['logits_max_abs_diff']:.3g}/{r['logits_mean_abs_diff']:.3g} "
                    f"(std {r['logits_std']:.3g}), loss rel diff {r['loss_rel_diff']:.2e}, "
                    f"grad cos {r['grad_cosine']:.4f}, greedy prefix {r['greedy_agreeing_prefix']}")
        elif key.startswith("train"):
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            mfu_x = f"{100 * r['mfu_executed']:.1f}%" if r["mfu_executed"] is not None else "n/a"
            nums = (f"{r['tokens_per_s']:,.0f} tok/s, batch {r['batch']}, step {r['median_step_s']}s, "
                    f"{r['model_tflops_per_s']} TFLOP/s, MFU {mfu} (executed {mfu_x})"
                    + (f", peak {r['peak_mem_gib']} GiB" if "peak_mem_gib" in r else ""))
        elif key == "ratios":
            nums = ", ".join(f"{name} **{b['ratio']:.2f}** (target {b['target']}, {b['dtype']})"
                             for name, b in r["benches"].items())
        elif key.startswith("sample"):
            nums = (f"{r['tokens_per_s']:,.0f} tok/s ({r['prompts']} prompts x {r['new_tokens']} new, "
                    f"{r['adapters']} adapters), decode {r['decode_tokens_per_s']:,.0f} tok/s, "
                    f"{r['ms_per_decode_step']} ms/step")
        else:
            nums = json.dumps({k: v for k, v in r.items() if k != "status"})[:200]
        lines.append(f"| {key} | {r['status']} | {nums} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke test)")
    p.add_argument("--phases", default="correctness,ratios,train,sample")
    p.add_argument("--models", default="qwen3-0.6b,qwen3-8b")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--train-warmup", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--sample-new-tokens", type=int, default=128)
    p.add_argument("--sample-prompt-len", type=int, default=128)
    p.add_argument("--sample-adapters", type=int, default=4)
    p.add_argument("--sample-temperature", type=float, default=1.0)
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    p.add_argument("--ratio-timeout-s", type=float, default=150, help="per ratio benchmark process")
    p.add_argument("--budget-s", type=float, default=480, help="skip phases that would start after this")
    p.add_argument("--out", default=None, help="results JSON (default $OUT/gpu_results.json or bench/gpu/last_results.json)")
    args = p.parse_args()

    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("CUDA is not available to this Python (pass --device cpu --quick for a smoke test)", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be real float32
        torch.backends.cudnn.allow_tf32 = False
    elif args.quick:
        torch.set_num_threads(1)  # tiny shapes gain nothing from threads, and a busy CPU makes OpenMP crawl
    phases = set(args.phases.split(","))
    models = [m for m in args.models.split(",") if m]
    results: dict = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "quick": args.quick,
        "peak_tflops_bf16": args.peak_tflops, "phases": {},
    }
    log(f"device {results['device']}, torch {torch.__version__}, quick={args.quick}")
    tmp_dir = tempfile.TemporaryDirectory(prefix="lathe-gpu-bench-")
    tmp = Path(tmp_dir.name)

    def over_budget(key: str) -> bool:
        if time.perf_counter() - t_start > args.budget_s:
            results["phases"][key] = {"status": "skipped", "error": f"time budget of {args.budget_s}s used up"}
            return True
        return False

    if "correctness" in phases and not over_budget("correctness"):
        guarded(results["phases"], "correctness", phase_correctness, args, device, tmp)
    if "ratios" in phases and not over_budget("ratios"):
        guarded(results["phases"], "ratios", phase_ratios, args, device)
    for name in models:
        if not ({"train", "sample"} & phases):
            break
        if over_budget(f"train/{name}"):
            continue
        cfg = (QUICK if args.quick else FULL)[name][0]
        info = params_info(cfg)
        log(f"building {name}: {info['total'] / 1e9:.3f}B params (random bf16 on {device})")
        try:
            model = build_model(cfg, device, seed=2)
            engine = make_engine(model, f"random/{name}", device, torch.bfloat16, tmp)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            for key in ("train", "sample"):
                if key in phases:
                    results["phases"][f"{key}/{name}"] = {"status": "error", "error": f"build: {type(exc).__name__}: {exc}"}
            continue
        results.setdefault("models", {})[name] = {"params": info["total"], "matmul_params": info["matmul"],
                                                  "config": {k: v for k, v in vars(cfg).items() if k != "rope_scaling"}}
        if "train" in phases and not over_budget(f"train/{name}"):
            guarded(results["phases"], f"train/{name}", phase_train, args, name, engine, device)
        if "sample" in phases and not over_budget(f"sample/{name}"):
            guarded(results["phases"], f"sample/{name}", phase_sample, args, name, engine, device)
        del engine, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    tmp_dir.cleanup()

    results["total_s"] = round(time.perf_counter() - t_start, 1)
    out_path = Path(args.out) if args.out else (
        Path(os.environ["OUT"]) / "gpu_results.json" if os.environ.get("OUT") else ROOT / "bench" / "gpu" / "last_results.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"## Lathe GPU bench: {results['device']}, torch {results['torch']}, {results['when']}"
          f"{' (QUICK smoke test)' if args.quick else ''}")
    print()
    print(markdown(results))
    print()
    print(f"results: {out_path}  (total {results['total_s']}s)")
    bad = [k for k, r in results["phases"].items() if r["status"] not in ("ok",)]
    if bad:
        print(f"NOT OK: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
