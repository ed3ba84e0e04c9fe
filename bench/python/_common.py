"""Shared helpers for the engine benchmarks (not a benchmark itself: `npm run bench` skips `_*.py`).

Every benchmark builds the SAME random weights for both sides: a transformers `Qwen3ForCausalLM` is
initialised from a seed, written with `save_pretrained` into a temp dir, and our engine loads that
folder through its normal `ModelRegistry` -> `load_model` path. LoRA factors are copied from our
adapters into the PEFT model, so both sides train / sample exactly the same function.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

WORKER = Path(__file__).resolve().parents[2] / "worker"
if str(WORKER) not in sys.path:
    sys.path.insert(0, str(WORKER))

# Like `python -m lathe_worker`, re-execute once with glibc malloc tuned (before torch is imported), so
# the benchmark process allocates the way the real worker does. Both sides of every benchmark run in
# this one process, so both get it. LATHE_MALLOC_TUNED=0 opts out (glibc defaults).
from lathe_worker.malloc_env import reexec_with_malloc_tuning  # noqa: E402

reexec_with_malloc_tuning()

import torch  # noqa: E402
import warnings  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# PEFT warns that a LoRA on a tied lm_head complicates merging; irrelevant here (nothing is merged).
warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def add_model_args(p, hidden=768, layers=12, heads=12, kv_heads=4, head_dim=64, intermediate=2048,
                   vocab=32000, tied=True) -> None:
    g = p.add_argument_group("model (Qwen3-shaped, random weights) and run")
    g.add_argument("--hidden", type=int, default=hidden)
    g.add_argument("--layers", type=int, default=layers)
    g.add_argument("--heads", type=int, default=heads)
    g.add_argument("--kv-heads", type=int, default=kv_heads)
    g.add_argument("--head-dim", type=int, default=head_dim)
    g.add_argument("--intermediate", type=int, default=intermediate)
    g.add_argument("--vocab", type=int, default=vocab)
    g.add_argument("--untied", action="store_true", default=not tied, help="separate lm_head (default: tied)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=0,
                   help="torch threads (default 0 = auto: torch's default, or 1 when the machine is already busy)")
    g.add_argument("--device", default="cpu", help="where both sides run: cpu (default) or cuda[:N]")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights and activations of both sides (auto: float32 on CPU, bfloat16 on CUDA)")
    g.add_argument("--profile", action="store_true",
                   help="after the timed part, print a torch.profiler table of one call of each side")
    g.add_argument("--profile-rows", type=int, default=25)


def parse_bench_args(doc: str, add_args: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """Parse a benchmark's command line (its docstring as help, the model flags, then its own flags
    added by `add_args`) and resolve it with `setup`."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_args(p)
    args = p.parse_args()
    setup(args)
    return args


def setup(args) -> None:
    """Resolve --device/--dtype into torch objects (args.device, args.dtype) and pick CPU threads.

    On CUDA the float32 reference must be real float32, so TF32 stays off for both sides."""
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available to this Python")
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device.type == "cuda" else "float32"
    args.dtype = getattr(torch, args.dtype)
    if args.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    setup_threads(args)


def tolerance(args, float32: float, bfloat16: float) -> float:
    """The agreement a check may demand at the benchmark's precision."""
    return float32 if args.dtype == torch.float32 else bfloat16


def busy_cpus(samples: int = 10, interval: float = 0.1) -> float:
    """Mean number of OTHER runnable tasks over ~1 s (from /proc/loadavg's running count, minus us)."""
    counts = []
    for _ in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        counts.append(max(0, running - 1))
        time.sleep(interval)
    return sum(counts) / len(counts)


def setup_threads(args) -> None:
    """Explicit --threads wins. Auto: when other processes already keep CPUs busy (on average at least
    half the cores have another runnable task), use 1 thread: with OpenMP threads on an oversubscribed
    machine every parallel op waits for a descheduled thread and step times swing by 3-5x; one thread is
    slower but stable. The interleaved ratio stays fair either way."""
    if args.threads:
        torch.set_num_threads(args.threads)
        return
    cores = os.cpu_count() or 1
    others = busy_cpus()
    if cores > 1 and others >= cores / 2:
        torch.set_num_threads(1)
        print(f"note: ~{others:.1f} other runnable tasks on {cores} cores: using 1 torch thread "
              f"(pass --threads N to force)")


def hf_config(args, max_pos: int = 4096):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, rms_norm_eps=1e-6, rope_theta=1_000_000.0, max_position_embeddings=max_pos,
        tie_word_embeddings=not args.untied, attention_bias=False, use_sliding_window=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def build_hf_model(args):
    """A Qwen3ForCausalLM with unit-scale random weights (HF's std=0.02 init gives near-uniform
    next-token distributions, which would make greedy-token comparisons meaningless)."""
    from transformers import Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    cfg = hf_config(args)
    cfg._attn_implementation = "sdpa"
    hf = Qwen3ForCausalLM(cfg)
    gen = torch.Generator().manual_seed(args.seed)
    out_name = "lm_head.weight" if args.untied else "model.embed_tokens.weight"
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                std = p.shape[-1] ** -0.5 * (4.0 if name == out_name else 1.0)
                p.normal_(0.0, std, generator=gen)
    if not args.untied:
        hf.tie_weights()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf.eval()


def count_params(model) -> int:
    """Unique parameters (a tied embedding counts once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


class SharedModel:
    """HF model + temp folder + our Engine loaded from that folder through ModelRegistry."""

    def __init__(self, args) -> None:
        from lathe_worker.engine import Engine
        from lathe_worker.models.registry import ModelRegistry

        t0 = time.perf_counter()
        self.hf = build_hf_model(args)
        self.tmp = tempfile.TemporaryDirectory(prefix="lathe-bench-")
        folder = Path(self.tmp.name) / "model"
        self.hf.save_pretrained(folder)
        # Both sides at the benchmark's device and precision: HF casts its float32 weights, our engine
        # loads the float32 folder with its own cast, so both hold the same rounded values.
        self.hf.to(device=args.device, dtype=args.dtype)
        self.engine = Engine(registry=ModelRegistry(models_dir=Path(self.tmp.name) / "models"),
                             device=args.device, dtype=args.dtype)
        self.engine.load_model(str(folder))
        self.params = count_params(self.hf)
        ours = count_params(self.engine.model)
        assert ours == self.params, f"param count differs: ours {ours} vs HF {self.params}"
        self.setup_s = time.perf_counter() - t0

    def close(self) -> None:
        self.tmp.cleanup()


def make_peft(hf, rank: int, train_unembed: bool, adapter_names=("default",)):
    """Wrap `hf` with PEFT LoRA (alpha 32 like ours, no dropout) on the same targets."""
    from peft import LoraConfig, get_peft_model

    targets = LORA_TARGETS + (["lm_head"] if train_unembed else [])
    cfg = LoraConfig(r=rank, lora_alpha=32, lora_dropout=0.0, target_modules=targets, bias="none")
    model = get_peft_model(hf, cfg, adapter_name=adapter_names[0])
    for name in adapter_names[1:]:
        model.add_adapter(name, cfg)
    return model


@torch.no_grad()
def copy_adapter_to_peft(peft_model, adapter, name: str = "default") -> int:
    """Copy our adapter's A/B into PEFT adapter `name`; returns the number of modules copied."""
    n = 0
    for path, a, b in adapter.named_factors():
        module = peft_model.base_model.model.get_submodule(path)
        module.lora_A[name].weight.copy_(a)
        module.lora_B[name].weight.copy_(b)
        n += 1
    expected = sum(1 for m in peft_model.modules() if hasattr(m, "lora_A") and name in m.lora_A)
    assert n == expected, f"copied {n} LoRA modules, PEFT has {expected}"
    return n


def peft_trainable(peft_model):
    return [p for p in peft_model.parameters() if p.requires_grad]


def now() -> float:
    return time.perf_counter()


def cpu_now() -> float:
    """CPU seconds used by this process (all threads)."""
    return time.process_time()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device):
    """(fn(), wall seconds, process CPU seconds), after a garbage collection; waits for queued GPU work
    before and after so the wall time is the work's own."""
    collect()
    sync(device)
    t0, c0 = now(), cpu_now()
    result = fn()
    sync(device)
    return result, now() - t0, cpu_now() - c0


def print_profiles(fns: dict, args, what: str) -> None:
    """A torch.profiler table (self time) of one call of each side, CPU and (on CUDA) GPU activity."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.type == "cuda" else [])
    sort = "self_cuda_time_total" if args.device.type == "cuda" else "self_cpu_time_total"
    for side, fn in fns.items():
        with profile(activities=activities) as prof:
            fn()
            sync(args.device)
        print(f"---- profile of one {side} {what} ({sort}) ----")
        print(prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows))


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def median(xs) -> float:
    return statistics.median(xs)


def env_info(args) -> dict:
    return {
        "device": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu",
        "dtype": str(args.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "malloc_tuned": os.environ.get("LATHE_MALLOC_TUNED") == "1",
        "threads": torch.get_num_threads(),
        "loadavg_end": loadavg(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def compare_sides(times: dict, cpu: dict, fast: str, slow: str, *, work: float, unit: str, period: str,
                  ratio_label: str, target: float) -> dict:
    """Print and return how side `fast` compares with side `slow` over the timed periods.

    `work` is the units (e.g. tokens) done per side over all of them. Returns each side's units/s
    (keyed by side), `ratio` (fast over slow throughput), `cpu_ratio` (by process CPU time) and
    `best_ratio` (fastest period against fastest period: robust to outside load)."""
    rates = {side: work / sum(times[side]) for side in (fast, slow)}
    ratio = rates[fast] / rates[slow]
    cpu_ratio = sum(cpu[slow]) / sum(cpu[fast])
    best_ratio = min(times[slow]) / min(times[fast])
    for side in (fast, slow):
        print(f"{side + ':':<10}{rates[side]:8.1f} {unit}/s  (median {period} {median(times[side]):.2f}s)")
    print(f"ratio {ratio_label} = {ratio:.3f}  (target >= {target:g}); by process CPU time {cpu_ratio:.3f}; "
          f"fastest {period} vs fastest {period} {best_ratio:.3f}")
    return {**rates, "ratio": ratio, "cpu_ratio": cpu_ratio, "best_ratio": best_ratio}


def emit(result: dict) -> None:
    """The last stdout line of every benchmark: one JSON object."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=False), flush=True)


def collect() -> None:
    gc.collect()
