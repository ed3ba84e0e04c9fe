"""Tinker's built-in losses (protocol §6.3). All are per-token SUMS over every datum of a call: no
normalisation by length or batch. Notation: `lp` = learner log-prob of `target_tokens`, `q` = the
`logprobs` input (sampler log-probs), `A` = `advantages`, `r = exp(lp - q)`.

| loss_fn               | loss                                              | loss_fn_config (defaults)        |
|-----------------------|---------------------------------------------------|----------------------------------|
| `cross_entropy`       | `sum(-lp * weights)`, targets/weights [N] or [N,K] | none                             |
| `importance_sampling` | `-sum(r * A)`                                     | none                             |
| `ppo`                 | `-sum(min(r*A, clip(r, lo, hi)*A))`               | clip_low/high_threshold 0.8/1.2  |
| `cispo`               | `-sum(stopgrad(clip(r, lo, hi)) * lp * A)`        | clip_low/high_threshold 0.0/4.0  |
| `dro`                 | `-sum(lp*A - 0.5*beta*(lp - q)^2)`                | beta 0.05 (*)                    |

(*) Tinker documents no default for `beta`; 0.05 is ours (the value of its docs' example).
Keys of `loss_fn_inputs` that a loss does not use are ignored (clients may send extras).

The protocol package keeps the same names in TypeScript (`packages/protocol/src/loss-functions.ts`); a
test compares the two through this module's JSON form:

    python -m lathe_worker.losses --json   # {"cross_entropy": {}, "ppo": {"clip_low_threshold": 0.8, ...}, ...}
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import UserError
from .table_cli import print_table

LOSS_FUNCTIONS = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro")

_CONFIG_DEFAULTS: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
    "dro": {"beta": 0.05},
}
_RL_INPUTS = ("target_tokens", "logprobs", "advantages")


@dataclass
class LossResult:
    loss: Tensor  # scalar: per-token sum over all datums of the call
    metrics: dict[str, float]  # `name:reduction` keys, at least "loss:sum"


def _check_loss_fn(loss_fn: str) -> None:
    if loss_fn not in LOSS_FUNCTIONS:
        raise UserError("unknown_loss_fn", f"unknown loss_fn {loss_fn!r}; valid: {', '.join(LOSS_FUNCTIONS)}")


def resolve_config(loss_fn: str, config: dict | None) -> dict[str, float]:
    """The loss's config with defaults filled in. Raises UserError for unknown keys and bad values."""
    _check_loss_fn(loss_fn)
    defaults = _CONFIG_DEFAULTS[loss_fn]
    out = dict(defaults)
    for key, value in (config or {}).items():
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise UserError("invalid_loss_fn_config",
                            f"unknown loss_fn_config key {key!r} for {loss_fn} (accepted: {allowed})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError("invalid_loss_fn_config", f"loss_fn_config[{key!r}] must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError("invalid_loss_fn_config", f"loss_fn_config[{key!r}] must be finite, got {value}")
        out[key] = float(value)
    if "clip_low_threshold" in out and out["clip_low_threshold"] > out["clip_high_threshold"]:
        raise UserError("invalid_loss_fn_config",
                        f"loss_fn_config clip_low_threshold ({out['clip_low_threshold']}) exceeds "
                        f"clip_high_threshold ({out['clip_high_threshold']})")
    return out


def validate_loss_inputs(loss_fn: str, input_len: int, inputs: dict[str, Tensor], config: dict | None,
                         vocab_size: int) -> None:
    """Check one datum's `loss_fn_inputs` (and the call's config) before any compute. Raises UserError."""
    resolve_config(loss_fn, config)
    required = ("target_tokens",) if loss_fn == "cross_entropy" else _RL_INPUTS
    for key in required:
        if key not in inputs:
            raise UserError("missing_loss_fn_input", f"loss_fn_inputs is missing {key!r} (required by {loss_fn}: "
                                                     f"{', '.join(required)})")
    targets = inputs["target_tokens"]
    if targets.dtype != torch.int64:
        raise UserError("invalid_loss_fn_input", f"loss_fn_inputs['target_tokens'] must be int64, got {targets.dtype}")
    allowed_dims = (1, 2) if loss_fn == "cross_entropy" else (1,)
    if targets.dim() not in allowed_dims:
        raise UserError("invalid_loss_fn_input", f"loss_fn_inputs['target_tokens'] must be "
                        f"{' or '.join(f'{d}-D' for d in allowed_dims)} for {loss_fn}, got shape {list(targets.shape)}")
    if targets.shape[0] != input_len:
        raise UserError("invalid_loss_fn_input", f"loss_fn_inputs['target_tokens'] has first dimension "
                        f"{targets.shape[0]} but model_input has length {input_len}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab_size):
        bad = int(targets[(targets < 0) | (targets >= vocab_size)][0])
        raise UserError("invalid_loss_fn_input",
                        f"loss_fn_inputs['target_tokens'] holds token id {bad} outside [0, {vocab_size})")
    floats = ("weights",) if loss_fn == "cross_entropy" else _RL_INPUTS[1:]
    for key in floats:
        if key not in inputs:
            continue  # only cross_entropy's optional weights can be absent here
        value = inputs[key]
        if value.dtype != torch.float32:
            raise UserError("invalid_loss_fn_input", f"loss_fn_inputs[{key!r}] must be float32, got {value.dtype}")
        if value.shape != targets.shape:
            raise UserError("invalid_loss_fn_input", f"loss_fn_inputs[{key!r}] has shape {list(value.shape)} "
                            f"but target_tokens has shape {list(targets.shape)}")
        if not bool(torch.isfinite(value).all()):
            raise UserError("non_finite_loss_fn_input", f"loss_fn_inputs[{key!r}] contains NaN or inf")


def _ratio(lp: Tensor, q: Tensor, adv: Tensor) -> Tensor:
    # Tokens with A == 0 (prompts) contribute nothing; zero their log-ratio so that exp() cannot overflow
    # there and turn 0 * inf into a NaN loss or gradient. Exact for every token with A != 0.
    return torch.exp(torch.where(adv != 0, lp - q, torch.zeros_like(lp)))


def compute_loss(loss_fn: str, logprobs: list[Tensor], inputs: list[dict[str, Tensor]],
                 config: dict[str, float] | None, with_metrics: bool = True) -> LossResult:
    """Sum of `loss_fn` over the datums. `logprobs[i]`: datum i's learner log-probs of its targets
    ([N_i] or [N_i, K], with grad); `inputs[i]`: its validated `loss_fn_inputs`. Metrics read values
    back from the device; `with_metrics=False` (a micro-batch's loss for backward) skips that."""
    cfg = resolve_config(loss_fn, config)
    if len(logprobs) != len(inputs):
        raise ValueError(f"{len(logprobs)} logprob tensors for {len(inputs)} datums")
    terms: list[Tensor] = []
    clipped: list[Tensor] = []  # ppo/cispo: per datum, tokens with A != 0 whose ratio lies outside [lo, hi]
    active: list[Tensor] = []  # ... and tokens with A != 0 (summed once at the end: one device sync)
    for lp, inp in zip(logprobs, inputs):
        lp = lp.float()
        if loss_fn == "cross_entropy":
            w = inp.get("weights")
            terms.append(-(lp * w.to(lp)).sum() if w is not None else -lp.sum())
            continue
        q, adv = inp["logprobs"].to(lp), inp["advantages"].to(lp)
        if loss_fn == "importance_sampling":
            terms.append(-(_ratio(lp, q, adv) * adv).sum())
        elif loss_fn in ("ppo", "cispo"):
            lo, hi = cfg["clip_low_threshold"], cfg["clip_high_threshold"]
            r = _ratio(lp, q, adv)
            r_clip = r.clamp(lo, hi)
            if loss_fn == "ppo":
                terms.append(-torch.minimum(r * adv, r_clip * adv).sum())
            else:
                terms.append(-(r_clip.detach() * lp * adv).sum())
            mask = adv != 0
            clipped.append((((r.detach() < lo) | (r.detach() > hi)) & mask).sum())
            active.append(mask.sum())
        else:  # dro
            terms.append(-(lp * adv - 0.5 * cfg["beta"] * (lp - q) ** 2).sum())
    loss = torch.stack(terms).sum() if terms else torch.zeros(())
    if not with_metrics:
        return LossResult(loss=loss, metrics={})
    metrics = {"loss:sum": float(loss.detach())}
    if loss_fn in ("ppo", "cispo"):
        n_active = float(torch.stack(active).sum()) if active else 0.0
        metrics["clip_fraction:mean"] = float(torch.stack(clipped).sum()) / n_active if n_active else 0.0
    return LossResult(loss=loss, metrics=metrics)


def as_json() -> dict[str, dict[str, float]]:
    """Each loss function, in `LOSS_FUNCTIONS` order, with its `loss_fn_config` defaults.

    >>> as_json()["ppo"]
    {'clip_low_threshold': 0.8, 'clip_high_threshold': 1.2}
    """
    return {name: dict(_CONFIG_DEFAULTS[name]) for name in LOSS_FUNCTIONS}


def main(argv: list[str] | None = None) -> int:
    return print_table(argv, "python -m lathe_worker.losses", "the worker's loss functions", as_json(),
                       lambda name, defaults: f"{name:20} {', '.join(f'{k}={v}' for k, v in defaults.items()) or '-'}")


if __name__ == "__main__":
    sys.exit(main())
