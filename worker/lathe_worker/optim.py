"""AdamW per adapter slot with Tinker's `AdamParams` (protocol §4.3) and global grad-norm clipping.

Tinker says its optimizer is "identical to torch.optim.AdamW", so this is exactly that, over exactly one
adapter's parameters, with the hyperparameters of each `optim_step` request set on the param group
before stepping. Parameters without a gradient are skipped, as torch does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from .errors import UserError


@dataclass(frozen=True)
class AdamParams:
    """Tinker's `AdamParams` with its SDK defaults (the SDK always sends all six)."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0  # decoupled (AdamW)
    grad_clip_norm: float = 0.0  # global-norm clipping; 0 = off

    @classmethod
    def from_wire(cls, d: dict) -> "AdamParams":
        """Validate a wire `adam_params` map; missing fields take the defaults."""
        names = {f.name for f in fields(cls)}
        for key in d:
            if key not in names:
                raise UserError("invalid_adam_params", f"unknown adam_params field {key!r}; "
                                f"valid: {', '.join(sorted(names))}")
        values: dict[str, float] = {}
        for key, value in d.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError("invalid_adam_params", f"adam_params.{key} must be a finite number, got {value!r}")
            values[key] = float(value)
        hp = cls(**values)
        for key, ok, rule in (
            ("learning_rate", hp.learning_rate >= 0, ">= 0"),
            ("beta1", 0 <= hp.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= hp.beta2 < 1, "in [0, 1)"),
            ("eps", hp.eps > 0, "> 0"),
            ("weight_decay", hp.weight_decay >= 0, ">= 0"),
            ("grad_clip_norm", hp.grad_clip_norm >= 0, ">= 0 (0 = off)"),
        ):
            if not ok:
                raise UserError("invalid_adam_params", f"adam_params.{key} must be {rule}, got {getattr(hp, key)}")
        return hp


_STATE_KEY = re.compile(r"^state\.(\d+)\.(exp_avg|exp_avg_sq|step)$")


class AdapterOptimizer:
    """AdamW state for one adapter slot: torch.optim.AdamW over exactly this adapter's parameters."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = list(params)
        d = AdamParams()
        self.opt = torch.optim.AdamW(self.params, lr=d.learning_rate, betas=(d.beta1, d.beta2), eps=d.eps,
                                     weight_decay=d.weight_decay)

    def step(self, hp: AdamParams) -> dict[str, float]:
        """One AdamW step on the accumulated gradients, then clear them. Returns `name:reduction` metrics;
        `grad_norm:mean` is the global norm before clipping."""
        metrics = {"learning_rate:mean": hp.learning_rate}
        with_grad = [p for p in self.params if p.grad is not None]
        if not with_grad:  # nothing was accumulated: torch would skip every parameter anyway
            return {**metrics, "grad_norm:mean": 0.0, "step_skipped:max": 1.0}
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in with_grad]))
        if not math.isfinite(norm):
            # Refuse before touching weights or moments; drop the poisoned gradients so that the adapter
            # can recover with a fresh forward_backward.
            self.opt.zero_grad(set_to_none=True)
            raise UserError("non_finite_gradient", f"the accumulated gradient norm is {norm}; optimizer step "
                            "refused, weights and optimizer state unchanged, gradients discarded")
        if hp.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(with_grad, hp.grad_clip_norm)
        group = self.opt.param_groups[0]
        group.update(lr=hp.learning_rate, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return {**metrics, "grad_norm:mean": norm}

    def state_dict(self) -> dict[str, Tensor]:
        """Flat `state.{param_index}.{exp_avg|exp_avg_sq|step}` -> tensor copies, for safetensors."""
        out: dict[str, Tensor] = {}
        for i, p in enumerate(self.params):
            for name, value in self.opt.state.get(p, {}).items():
                out[f"state.{i}.{name}"] = value.detach().clone().contiguous()
        return out

    def load_state_dict(self, d: dict[str, Tensor]) -> None:
        """Inverse of `state_dict` (replaces all state). Raises UserError when it does not fit these params."""
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in d.items():
            m = _STATE_KEY.match(key)
            if m is None or int(m.group(1)) >= len(self.params):
                raise UserError("invalid_optimizer_state", f"unexpected optimizer state key {key!r}")
            i, name = int(m.group(1)), m.group(2)
            expected = torch.Size([]) if name == "step" else self.params[i].shape
            if value.shape != expected:
                raise UserError("invalid_optimizer_state", f"optimizer state {key!r} has shape {list(value.shape)}, "
                                f"expected {list(expected)}")
            state.setdefault(i, {})[name] = value.detach().clone()
        for i, entry in state.items():
            if set(entry) != {"exp_avg", "exp_avg_sq", "step"}:
                raise UserError("invalid_optimizer_state", f"optimizer state for parameter {i} is incomplete: "
                                f"has {sorted(entry)}")
            entry["step"] = entry["step"].float().cpu()  # torch keeps a float32 CPU step (capturable=False)
        groups = self.opt.state_dict()["param_groups"]
        self.opt.load_state_dict({"state": state, "param_groups": groups})
