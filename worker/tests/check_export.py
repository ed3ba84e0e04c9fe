"""Checks an exported checkpoint against logprobs Lathe computed with the adapter (run by the CLI's
manage test): `--merged DIR` loads the merged folder with transformers alone; `--peft DIR` loads the
adapter with peft onto the transformers model of `--base` (give one or both). Exits 1 naming the
difference if the logprobs of the target tokens are not Lathe's within `--rel`, or if the adapter changes nothing
(then the comparison would mean nothing).

`python check_export.py --base BASE_DIR [--merged DIR] [--peft DIR] --expect expect.json`, where
expect.json is `{"sequences": [[token, ...], ...], "logprobs": [[lp of token 1, ...], ...]}`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tolerance import assert_close_rel


def target_logprobs(model, sequences: list[list[int]]) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq[:-1]])
            logits = model(input_ids=ids).logits[0].double()
            rows.append(torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(seq[1:])[:, None])[:, 0])
    return torch.cat(rows)


def load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def check(name: str, got: torch.Tensor, want: torch.Tensor, rel: float) -> bool:
    print(f"{name}: max |exported - lathe| = {float((got - want).abs().max()):.3g}")
    try:
        assert_close_rel(got, want, rel=rel)
    except AssertionError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--merged", type=Path)
    parser.add_argument("--peft", type=Path)
    parser.add_argument("--expect", type=Path, required=True)
    parser.add_argument("--rel", type=float, default=1e-4)
    args = parser.parse_args()
    expect = json.loads(args.expect.read_text())
    want = torch.tensor([lp for row in expect["logprobs"] for lp in row], dtype=torch.float64)

    base = load(args.base)
    adapter_effect = float((want - target_logprobs(base, expect["sequences"])).abs().max())
    print(f"the adapter moves logprobs by up to {adapter_effect:.3g}")
    if adapter_effect < 1e-3:
        print("the adapter barely changes the logprobs, so this check would mean nothing", file=sys.stderr)
        return 1
    ok = True
    if args.merged is not None:
        ok &= check("merged", target_logprobs(load(args.merged), expect["sequences"]), want, args.rel)
    if args.peft is not None:
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(base, args.peft).eval()  # base is not used after this
        ok &= check("peft", target_logprobs(peft_model, expect["sequences"]), want, args.rel)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
