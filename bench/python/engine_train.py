"""LoRA training tokens/s: Engine.forward_backward + optim_step vs a transformers + PEFT loop.

engine-train: LoRA training throughput (forward_backward + optim_step) of our Engine against a plain
transformers + PEFT training loop, same random weights, same LoRA (rank, targets, initial A), same data.

  lathe:    Engine.forward_backward([one WorkItem with B datums], backward=True) + Engine.optim_step
  baseline: peft_model(input_ids).logits -> sum cross-entropy -> backward -> torch.optim.AdamW.step

Both use the cross_entropy loss as a per-token SUM, AdamW(lr, betas=(0.9, 0.95), eps=1e-12, wd=0). The
first step's loss must agree to 1e-3 relative (apples to apples), later steps are reported. Timed
steps alternate which side runs first. ratio = lathe tokens/s / baseline tokens/s (> 1: we are faster).
Last stdout line: JSON summary.
"""

from __future__ import annotations

import argparse

import _common as C
import torch
import torch.nn.functional as F


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=3, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side (the first checks the loss)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--no-unembed", action="store_true", help="no LoRA on lm_head (default: attn+mlp+lm_head)")
    p.add_argument("--lr", type=float, default=1e-4)


def main() -> int:
    args = C.parse_bench_args(__doc__, add_args)

    from lathe_worker.micro_batches import Datum, WorkItem
    from lathe_worker.lora import LoraConfig
    from lathe_worker.optim import AdamParams

    shared = C.SharedModel(args)
    engine, hf = shared.engine, shared.hf
    V = args.vocab
    train_unembed = not args.no_unembed
    engine.create_adapter("bench", LoraConfig(rank=args.rank, seed=1, train_unembed=train_unembed))
    adapter = engine.adapters["bench"].adapter
    peft_model = C.make_peft(hf, args.rank, train_unembed)
    n_lora = C.copy_adapter_to_peft(peft_model, adapter)
    peft_model.train()
    params = C.peft_trainable(peft_model)
    lora_params = sum(p.numel() for p in adapter.parameters())
    assert sum(p.numel() for p in params) == lora_params, "PEFT and lathe train different parameter counts"
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    hp = AdamParams(learning_rate=args.lr, beta1=0.9, beta2=0.95, eps=1e-12, weight_decay=0.0)

    B, T = args.batch, args.seq
    tokens_per_step = B * T
    print(f"model: Qwen3-shaped, {shared.params:,} params ({shared.params / 1e6:.1f}M), hidden {args.hidden}, "
          f"{args.layers} layers, {args.heads}/{args.kv_heads} heads, vocab {V}, "
          f"{'untied' if args.untied else 'tied'}; setup {shared.setup_s:.1f}s")
    print(f"LoRA rank {args.rank} on {n_lora} modules ({lora_params:,} params); batch {B} x {T} = "
          f"{tokens_per_step} tokens/step; {args.warmup} warm-up + {args.steps} timed steps per side; "
          f"torch {torch.__version__}, {args.device} {args.dtype}, {torch.get_num_threads()} threads")

    total_steps = args.warmup + args.steps
    gen = torch.Generator().manual_seed(1000 + args.seed)
    batches = [torch.randint(0, V, (B, T + 1), generator=gen) for _ in range(total_steps)]

    def lathe_step(seqs: torch.Tensor) -> float:
        item = WorkItem("bench", "cross_entropy", None,
                        [Datum(tokens=s[:-1].clone(), inputs={"target_tokens": s[1:].clone()}) for s in seqs])
        out = engine.forward_backward([item], backward=True)[0]
        if isinstance(out, Exception):
            raise out
        engine.optim_step("bench", hp)
        return out["metrics"]["loss:sum"]

    def baseline_step(seqs: torch.Tensor) -> float:
        seqs = seqs.to(args.device)
        logits = peft_model(input_ids=seqs[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, V), seqs[:, 1:].reshape(-1), reduction="sum")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    times = {"lathe": [], "baseline": []}
    cpu = {"lathe": [], "baseline": []}  # process CPU time: less sensitive to other load on a shared box
    losses = {"lathe": [], "baseline": []}
    tol = C.tolerance(args, float32=1e-3, bfloat16=3e-2)
    for step in range(total_steps):
        order = ("lathe", "baseline") if step % 2 == 0 else ("baseline", "lathe")
        for side in order:
            fn = lathe_step if side == "lathe" else baseline_step
            loss, dt, dc = C.measure(lambda: fn(batches[step]), args.device)
            losses[side].append(loss)
            if step >= args.warmup:
                times[side].append(dt)
                cpu[side].append(dc)
        rel = abs(losses["lathe"][-1] - losses["baseline"][-1]) / abs(losses["baseline"][-1])
        tag = "warm-up" if step < args.warmup else "timed"
        print(f"step {step} ({tag}): loss lathe {losses['lathe'][-1]:.4f} baseline {losses['baseline'][-1]:.4f} "
              f"(rel diff {rel:.2e})")
        if step == 0:
            assert rel < tol, f"initial losses differ: lathe {losses['lathe'][0]} vs baseline {losses['baseline'][0]}"
        elif rel > tol:
            print(f"  WARNING: losses diverge after {step} updates (rel {rel:.2e})")
        if step >= args.warmup:
            print(f"  wall: lathe {times['lathe'][-1]:.2f}s  baseline {times['baseline'][-1]:.2f}s   "
                  f"cpu: lathe {cpu['lathe'][-1]:.2f}s  baseline {cpu['baseline'][-1]:.2f}s   load {C.loadavg()}")

    if args.profile:
        C.print_profiles({"lathe": lambda: lathe_step(batches[-1]),
                          "baseline": lambda: baseline_step(batches[-1])}, args, "step")

    r = C.compare_sides(times, cpu, "lathe", "baseline", work=args.steps * tokens_per_step, unit="tokens",
                        period="step", ratio_label="lathe/baseline", target=1.2)
    shared.close()
    C.emit({
        "bench": "engine-train",
        "ratio": round(r["ratio"], 4),
        "baseline": "transformers+peft training loop, same model/data",
        "lathe_tokens_per_s": round(r["lathe"], 2),
        "baseline_tokens_per_s": round(r["baseline"], 2),
        "params": shared.params,
        "lora_params": lora_params,
        "rank": args.rank,
        "batch": B,
        "seq": T,
        "steps": args.steps,
        "cpu_time_ratio": round(r["cpu_ratio"], 4),
        "best_step_ratio": round(r["best_ratio"], 4),
        "lathe_step_s": [round(t, 4) for t in times["lathe"]],
        "baseline_step_s": [round(t, 4) for t in times["baseline"]],
        "initial_loss": losses["lathe"][0],
        "initial_loss_rel_diff": abs(losses["lathe"][0] - losses["baseline"][0]) / abs(losses["baseline"][0]),
        "final_loss_rel_diff": abs(losses["lathe"][-1] - losses["baseline"][-1]) / abs(losses["baseline"][-1]),
        "target": 1.2,
        **C.env_info(args),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
