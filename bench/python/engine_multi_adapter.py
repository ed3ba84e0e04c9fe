"""Multi-adapter batching: one mixed forward_backward over 4 adapters vs 4 single-adapter calls.

engine-multi-adapter: K adapters (default 4), each with its own data (default 2 sequences x 128 tokens).
  mixed:    Engine.forward_backward([item_0, ..., item_{K-1}]) (ONE call, one batch of K*2 rows)
            + K optim_steps
  separate: K x Engine.forward_backward([item_k]) + K optim_steps
Both sides own their own copies of the K adapters (same seeds), train on the same data and must give
the same per-adapter losses every round (checked to 1e-3 relative). Timed rounds alternate which side
runs first. ratio = separate_time / mixed_time (> 1: batching adapters together pays).
Last stdout line: JSON summary.
"""

from __future__ import annotations

import argparse

import _common as C
import torch


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--batch", type=int, default=2, help="sequences per adapter")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per side")
    # One warm-up round was not enough: the next mixed round still paid one-time costs (3.6 s vs 2.3 s).
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per side")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--no-unembed", action="store_true", help="no LoRA on lm_head")


def main() -> int:
    args = C.parse_bench_args(__doc__, add_args)

    from lathe_worker.micro_batches import Datum, WorkItem
    from lathe_worker.lora import LoraConfig
    from lathe_worker.optim import AdamParams

    shared = C.SharedModel(args)
    shared.hf = None  # only the engine is measured here
    C.collect()
    engine = shared.engine
    K, B, T, V = args.adapters, args.batch, args.seq, args.vocab
    for side in ("mixed", "separate"):
        for k in range(K):
            engine.create_adapter(f"{side}{k}", LoraConfig(rank=args.rank, seed=k, train_unembed=not args.no_unembed))
    hp = AdamParams(learning_rate=1e-4, beta1=0.9, beta2=0.95, eps=1e-12)
    tokens_per_round = K * B * T
    print(f"model: Qwen3-shaped, {shared.params:,} params ({shared.params / 1e6:.1f}M), hidden {args.hidden}, "
          f"{args.layers} layers, vocab {V}; setup {shared.setup_s:.1f}s")
    print(f"{K} adapters x {B} sequences x {T} tokens = {tokens_per_round} tokens/round, LoRA rank {args.rank}; "
          f"{args.warmup} warm-up + {args.rounds} timed rounds per side; {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads")

    gen = torch.Generator().manual_seed(2000 + args.seed)
    total = args.warmup + args.rounds
    data = [[torch.randint(0, V, (B, T + 1), generator=gen) for _ in range(K)] for _ in range(total)]

    def items(side: str, rnd: int) -> list[WorkItem]:
        return [WorkItem(f"{side}{k}", "cross_entropy", None,
                         [Datum(tokens=s[:-1].clone(), inputs={"target_tokens": s[1:].clone()}) for s in data[rnd][k]])
                for k in range(K)]

    def check(outs) -> list[float]:
        for o in outs:
            if isinstance(o, Exception):
                raise o
        return [o["metrics"]["loss:sum"] for o in outs]

    def mixed(rnd: int) -> list[float]:
        losses = check(engine.forward_backward(items("mixed", rnd), backward=True))
        for k in range(K):
            engine.optim_step(f"mixed{k}", hp)
        return losses

    def separate(rnd: int) -> list[float]:
        losses = [check(engine.forward_backward([item], backward=True))[0] for item in items("separate", rnd)]
        for k in range(K):
            engine.optim_step(f"separate{k}", hp)
        return losses

    fns = {"mixed": mixed, "separate": separate}
    times = {"mixed": [], "separate": []}
    cpu = {"mixed": [], "separate": []}
    worst = 0.0
    # Mixed and separate batches may reach different kernels, whose rounding differs in bfloat16.
    tol = C.tolerance(args, float32=1e-3, bfloat16=3e-2)
    for rnd in range(total):
        order = ("mixed", "separate") if rnd % 2 == 0 else ("separate", "mixed")
        losses = {}
        for side in order:
            losses[side], dt, dc = C.measure(lambda: fns[side](rnd), args.device)
            if rnd >= args.warmup:
                times[side].append(dt)
                cpu[side].append(dc)
        rel = max(abs(m - s) / abs(s) for m, s in zip(losses["mixed"], losses["separate"]))
        worst = max(worst, rel)
        tag = "warm-up" if rnd < args.warmup else "timed"
        print(f"round {rnd} ({tag}): losses {', '.join(f'{x:.2f}' for x in losses['mixed'])}  "
              f"(mixed vs separate max rel diff {rel:.1e})")
        assert rel < tol, f"mixed and separate losses differ: {losses}"
        if rnd >= args.warmup:
            print(f"  wall: mixed {times['mixed'][-1]:.2f}s  separate {times['separate'][-1]:.2f}s   "
                  f"cpu: mixed {cpu['mixed'][-1]:.2f}s  separate {cpu['separate'][-1]:.2f}s   load {C.loadavg()}")

    if args.profile:
        C.print_profiles({side: lambda f=fn: f(total - 1) for side, fn in fns.items()}, args, "round")

    r = C.compare_sides(times, cpu, "mixed", "separate", work=args.rounds * tokens_per_round, unit="tokens",
                        period="round", ratio_label="separate/mixed time", target=1.5)
    shared.close()
    C.emit({
        "bench": "engine-multi-adapter",
        "ratio": round(r["ratio"], 4),
        "baseline": f"{K} single-adapter forward_backward calls + {K} optim_steps, same engine/data",
        "mixed_tokens_per_s": round(r["mixed"], 2),
        "separate_tokens_per_s": round(r["separate"], 2),
        "cpu_time_ratio": round(r["cpu_ratio"], 4),
        "best_round_ratio": round(r["best_ratio"], 4),
        "params": shared.params,
        "adapters": K,
        "batch_per_adapter": B,
        "seq": T,
        "rank": args.rank,
        "rounds": args.rounds,
        "mixed_round_s": [round(t, 4) for t in times["mixed"]],
        "separate_round_s": [round(t, 4) for t in times["separate"]],
        "max_loss_rel_diff": worst,
        "target": 1.5,
        **C.env_info(args),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
