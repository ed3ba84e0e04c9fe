"""Peak memory (and time) of the LM head + loss, forward + backward: chunked vs naive full logits.

Both variants compute the same cross-entropy-style loss `sum(-w * log_softmax(head(h))[target])` with a
LoRA'd head (frozen W [V, D] + trainable A, B), so gradients reach `hidden` and the adapter.
  naive:   one [N, V] logits tensor, log_softmax, gather (what a plain implementation does)
  chunked: lathe_worker.logprobs.target_logprobs (chunks of `chunk_tokens`, logits recomputed in backward)
Each variant runs in a fresh subprocess; its peak is the growth of ru_maxrss (the process's high-water
resident set) across forward + backward, measured after the inputs and weights already exist.
RSS includes allocator slack: with small vocabularies (chunks under glibc's 32 MiB dynamic mmap threshold)
freed chunks stay in the heap and the chunked peak creeps up with N; at the default 151936 vocabulary every
[chunk, V] buffer is mmapped and returned, so the number is the live peak.
The last stdout line is a JSON summary. Usage: npm run bench -- engine-chunked-head [--tokens N ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "worker"


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(a: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(WORKER))
    from lathe_worker.logprobs import target_logprobs

    torch.manual_seed(0)
    weight = torch.randn(a.vocab, a.hidden) / a.hidden**0.5  # frozen base lm_head
    lora_a = (torch.randn(16, a.hidden) * 0.02).requires_grad_()
    lora_b = (torch.randn(a.vocab, 16) * 0.02).requires_grad_()
    hidden = torch.randn(a.tokens, a.hidden, requires_grad=True)
    targets = torch.randint(0, a.vocab, (a.tokens,))
    weights = torch.rand(a.tokens)

    def head(h: torch.Tensor) -> torch.Tensor:
        # y = W h + 2 * B (A h), written to allocate one [n, V] tensor (mm does not save its output)
        return (h @ weight.T).addmm_(h @ lora_a.T, lora_b.T, alpha=2.0)

    def loss_of(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if a.variant == "naive":
            lp = torch.log_softmax(head(h).float(), dim=-1).gather(-1, t[:, None]).squeeze(-1)
        else:
            lp = target_logprobs(h, head, t, chunk_tokens=a.chunk_tokens)
        return -(lp * w).sum()

    # Warm up on 8 tokens (lazy imports, thread pools, kernels) outside the measurement.
    loss_of(hidden[:8].detach().requires_grad_(), targets[:8], weights[:8]).backward()
    lora_a.grad = lora_b.grad = None
    before = _maxrss_mib()
    t0 = time.perf_counter()
    loss = loss_of(hidden, targets, weights)
    loss.backward()
    seconds = time.perf_counter() - t0
    print(json.dumps({"peak_mib": _maxrss_mib() - before, "base_mib": before, "seconds": seconds,
                      "loss": float(loss.detach()), "grad_hidden_norm": float(hidden.grad.norm()),
                      "grad_lora_b_norm": float(lora_b.grad.norm())}))


def run_variant(a: argparse.Namespace, variant: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--tokens", str(a.tokens), "--vocab", str(a.vocab),
           "--hidden", str(a.hidden), "--chunk-tokens", str(a.chunk_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--chunk-tokens", type=int, default=1024)
    p.add_argument("--child", choices=["naive", "chunked"], dest="variant")
    a = p.parse_args()
    if a.variant:
        return child(a)

    full_logits_mib = a.tokens * a.vocab * 4 / 2**20
    print(f"LM head + loss fwd+bwd, float32 CPU: {a.tokens} tokens x vocab {a.vocab} x hidden {a.hidden} "
          f"(one full logits tensor = {full_logits_mib:.0f} MiB)")
    res = {}
    for variant in ("naive", "chunked"):
        r = res[variant] = run_variant(a, variant)
        print(f"  {variant:8s} peak +{r['peak_mib']:8.0f} MiB   {r['seconds']:6.2f} s   loss {r['loss']:.6g}")
    n, c = res["naive"], res["chunked"]
    rel = lambda x, y: abs(x - y) / max(abs(y), 1e-30)  # noqa: E731
    agree = max(rel(c[k], n[k]) for k in ("loss", "grad_hidden_norm", "grad_lora_b_norm"))
    ratio = n["peak_mib"] / c["peak_mib"]
    print(f"  peak memory ratio naive/chunked = {ratio:.2f}x; time ratio chunked/naive = "
          f"{c['seconds'] / n['seconds']:.2f}x; max relative difference of loss/grad norms = {agree:.1e}")
    print(json.dumps({
        "bench": "engine-chunked-head", "ratio": round(ratio, 3), "baseline": "naive full-logits LM head + loss",
        "metric": "peak RSS growth during forward+backward (ru_maxrss, fresh subprocess per variant)",
        "tokens": a.tokens, "vocab": a.vocab, "hidden": a.hidden, "chunk_tokens": a.chunk_tokens,
        "dtype": "float32", "device": "cpu", "naive_peak_mib": round(n["peak_mib"], 1),
        "chunked_peak_mib": round(c["peak_mib"], 1), "naive_seconds": round(n["seconds"], 3),
        "chunked_seconds": round(c["seconds"], 3), "max_rel_diff": agree,
    }))


if __name__ == "__main__":
    main()
