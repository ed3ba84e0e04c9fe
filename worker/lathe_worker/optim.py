"""Per-adapter-slot optimizers: AdamW (Tinker's `AdamParams`) and Dimuon (Tinker's `DimuonParams`, SDK >= 0.29).

AdamW: Tinker says its optimizer is "identical to torch.optim.AdamW", so this is exactly that, over
exactly one adapter's parameters, with the hyperparameters of each `optim_step` request set on the param
group before stepping.

Dimuon: Tinker's algorithm is not public; ours is a Muon-style orthogonalised update (see
`DimuonOptimizer`). Which optimizer a slot uses is fixed when it is created (`optimizer_config`:
`{"type": "adamw"}` or `{"type": "dimuon", "version": 1}`) and recorded with its saved state.

Both: global grad-norm clipping, a non-finite gradient refused before anything changes, parameters
without a gradient skipped (as torch does).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from typing import Any

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
        hp = cls(**_finite_numbers(d, cls, "adam_params", code="invalid_adam_params"))
        _check_rules(hp, "adam_params", code="invalid_adam_params", rules=(
            ("learning_rate", hp.learning_rate >= 0, ">= 0"),
            ("beta1", 0 <= hp.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= hp.beta2 < 1, "in [0, 1)"),
            ("eps", hp.eps > 0, "> 0"),
            ("weight_decay", hp.weight_decay >= 0, ">= 0"),
            ("grad_clip_norm", hp.grad_clip_norm >= 0, ">= 0 (0 = off)"),
        ))
        return hp


@dataclass(frozen=True)
class DimuonParams:
    """Tinker's `DimuonParams` (the wire `optimizer_params` of `optim_step`, `type: "dimuon"`).

    `learning_rate`, `grad_clip_norm` and `beta1` are what SDK >= 0.30.4 sends. `damping` and
    `rank_lr_correction_exponent` exist only in SDK 0.29.x and are accepted for it: `damping` (> 0)
    has no effect here, since our update has no row/column preconditioner to damp;
    `rank_lr_correction_exponent` e scales the learning rate by (32 / rank) ** e (0, the default when
    absent, = off). Omitted fields take these defaults on every step."""

    learning_rate: float
    grad_clip_norm: float = 0.0  # <= 0 disables clipping (the SDK's rule)
    beta1: float = 0.9
    damping: float = 1e-4
    rank_lr_correction_exponent: float = 0.0

    @classmethod
    def from_wire(cls, d: dict) -> "DimuonParams":
        """Validate a wire `optimizer_params` map (its `type` already checked and removed)."""
        values = _finite_numbers(d, cls, "optimizer_params", code="invalid_optimizer_params")
        if "learning_rate" not in values:
            raise UserError("invalid_optimizer_params", "optimizer_params.learning_rate is required")
        hp = cls(**values)
        _check_rules(hp, "optimizer_params", code="invalid_optimizer_params", rules=(
            ("learning_rate", hp.learning_rate >= 0, ">= 0"),
            ("beta1", 0 <= hp.beta1 < 1, "in [0, 1)"),
            ("damping", hp.damping > 0, "> 0"),
        ))
        return hp


def _finite_numbers(d: dict, cls: type, where: str, code: str) -> dict[str, float]:
    """The entries of wire map `d` as floats; each key must be a field of dataclass `cls` (else error `code`)."""
    names = {f.name for f in fields(cls)}
    for key in d:
        if key not in names:
            raise UserError(code, f"unknown {where} field {key!r}; valid: {', '.join(sorted(names))}")
    values: dict[str, float] = {}
    for key, value in d.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(code, f"{where}.{key} must be a finite number, got {value!r}")
        values[key] = float(value)
    return values


def _check_rules(hp: Any, where: str, code: str, rules: tuple[tuple[str, bool, str], ...]) -> None:
    for key, ok, rule in rules:
        if not ok:
            raise UserError(code, f"{where}.{key} must be {rule}, got {getattr(hp, key)}")


ADAMW = "adamw"
DIMUON = "dimuon"


def optimizer_config_from_wire(value: Any, where: str = "optimizer") -> dict[str, Any]:
    """Validate Tinker's `OptimizerConfig`: None or `{"type": "adamw"}` -> `{"type": "adamw"}`;
    `{"type": "dimuon", "version"?: 1}` -> `{"type": "dimuon", "version": 1}`.

    >>> optimizer_config_from_wire({"type": "dimuon"})
    {'type': 'dimuon', 'version': 1}
    """
    if value is None:
        return {"type": ADAMW}
    if not isinstance(value, dict):
        raise UserError("invalid_optimizer", f"{where} must be a map like {{\"type\": \"adamw\"}}")
    kind = value.get("type")
    allowed = {ADAMW: {"type"}, DIMUON: {"type", "version"}}
    if kind not in allowed:
        raise UserError("invalid_optimizer", f"{where}.type must be one of {sorted(allowed)}, got {kind!r}")
    extra = set(value) - allowed[kind]
    if extra:
        raise UserError("invalid_optimizer", f"unknown {where} keys for {kind}: {sorted(extra)}")
    if kind == ADAMW:
        return {"type": ADAMW}
    version = value.get("version", 1)
    if isinstance(version, bool) or version != 1:
        raise UserError("invalid_optimizer", f"{where}.version must be 1 for dimuon, got {version!r}")
    return {"type": DIMUON, "version": 1}


def optim_params_from_wire(request: dict[str, Any]) -> AdamParams | DimuonParams:
    """The step hyperparameters of an `optim_step` request: exactly one of `adam_params` (AdamW) or
    `optimizer_params` (`{"type": "dimuon", ...}`)."""
    given = [key for key in ("adam_params", "optimizer_params") if request.get(key) is not None]
    if len(given) != 1:
        raise UserError("missing_field" if not given else "invalid_field",
                        "optim_step needs exactly one of adam_params, optimizer_params")
    key = given[0]
    d = request[key]
    if not isinstance(d, dict):
        raise UserError("invalid_field", f"{key} must be a map")
    if key == "adam_params":
        return AdamParams.from_wire(d)
    d = dict(d)
    kind = d.pop("type", None)
    if kind != DIMUON:
        raise UserError("invalid_optimizer_params", f"optimizer_params.type must be 'dimuon' (AdamW steps send "
                        f"adam_params), got {kind!r}")
    return DimuonParams.from_wire(d)


_STATE_KEY = re.compile(r"^state\.(\d+)\.(\w+)$")


class SlotOptimizer:
    """What every slot optimizer shares: the gradient checks and clipping of a step, and the flat
    `state.{param_index}.{name}` tensor layout of its saved state. Subclasses set `config`, `params_type`,
    `wire_field` and `STATE_NAMES`, and implement `_apply`, `live_state` and `_install`."""

    config: dict[str, Any]
    params_type: type
    wire_field: str  # the optim_step field that carries this optimizer's step hyperparameters
    STATE_NAMES: frozenset[str]

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = list(params)

    @property
    def kind(self) -> str:
        return self.config["type"]

    def step(self, hp: Any) -> dict[str, float]:
        """One step on the accumulated gradients, then clear them. Returns `name:reduction` metrics;
        `grad_norm:mean` is the global norm before clipping."""
        if not isinstance(hp, self.params_type):
            sent = "adam_params" if isinstance(hp, AdamParams) else "optimizer_params"
            raise UserError("optimizer_mismatch", f"{sent}: this adapter uses the {self.kind} optimizer, whose step "
                            f"hyperparameters come as {self.wire_field}")
        metrics = {"learning_rate:mean": hp.learning_rate}
        with_grad = [p for p in self.params if p.grad is not None]
        if not with_grad:  # nothing was accumulated: torch would skip every parameter anyway
            return {**metrics, "grad_norm:mean": 0.0, "step_skipped:max": 1.0}
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in with_grad]))
        if not math.isfinite(norm):
            # Refuse before touching weights or moments; drop the poisoned gradients so that the adapter
            # can recover with a fresh forward_backward.
            self._clear_grads()
            raise UserError("non_finite_gradient", f"the accumulated gradient norm is {norm}; optimizer step "
                            "refused, weights and optimizer state unchanged, gradients discarded")
        if hp.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(with_grad, hp.grad_clip_norm)
        self._apply(with_grad, hp)
        self._clear_grads()
        return {**metrics, "grad_norm:mean": norm}

    def _clear_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict[str, Tensor]:
        """Flat `state.{param_index}.{name}` -> tensor copies, for safetensors."""
        return {f"state.{i}.{name}": value.detach().clone().contiguous()
                for i, entry in self.live_state().items() for name, value in entry.items()}

    def load_state_dict(self, d: dict[str, Tensor]) -> None:
        """Inverse of `state_dict` (replaces all state). Raises UserError when it does not fit these params."""
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in d.items():
            m = _STATE_KEY.match(key)
            if m is None or int(m.group(1)) >= len(self.params) or m.group(2) not in self.STATE_NAMES:
                raise UserError("invalid_optimizer_state", f"unexpected optimizer state key {key!r} for {self.kind}")
            i, name = int(m.group(1)), m.group(2)
            expected = torch.Size([]) if name == "step" else self.params[i].shape
            if value.shape != expected:
                raise UserError("invalid_optimizer_state", f"optimizer state {key!r} has shape {list(value.shape)}, "
                                f"expected {list(expected)}")
            state.setdefault(i, {})[name] = value.detach().clone()
        for i, entry in state.items():
            if set(entry) != self.STATE_NAMES:
                raise UserError("invalid_optimizer_state", f"optimizer state for parameter {i} is incomplete: "
                                f"has {sorted(entry)}")
        self._install(state)

    def _apply(self, with_grad: list[nn.Parameter], hp: Any) -> None:
        raise NotImplementedError

    def live_state(self) -> dict[int, dict[str, Tensor]]:
        """The state itself (not copies) by parameter index: replacing a tensor in an entry replaces it in
        the optimizer. Placement moves state between device, host and disk this way."""
        raise NotImplementedError

    def _install(self, state: dict[int, dict[str, Tensor]]) -> None:
        raise NotImplementedError


class AdapterOptimizer(SlotOptimizer):
    """AdamW state for one adapter slot: torch.optim.AdamW over exactly this adapter's parameters."""

    config = {"type": ADAMW}
    params_type = AdamParams
    wire_field = "adam_params"
    STATE_NAMES = frozenset({"exp_avg", "exp_avg_sq", "step"})

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__(params)
        d = AdamParams()
        self.opt = torch.optim.AdamW(self.params, lr=d.learning_rate, betas=(d.beta1, d.beta2), eps=d.eps,
                                     weight_decay=d.weight_decay)

    def _apply(self, with_grad: list[nn.Parameter], hp: AdamParams) -> None:
        group = self.opt.param_groups[0]
        group.update(lr=hp.learning_rate, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay)
        self.opt.step()

    def live_state(self) -> dict[int, dict[str, Tensor]]:
        return {i: self.opt.state[p] for i, p in enumerate(self.params) if self.opt.state.get(p)}

    def _install(self, state: dict[int, dict[str, Tensor]]) -> None:
        for entry in state.values():
            entry["step"] = entry["step"].float().cpu()  # torch keeps a float32 CPU step (capturable=False)
        groups = self.opt.state_dict()["param_groups"]
        self.opt.load_state_dict({"state": state, "param_groups": groups})


# Muon's quintic Newton-Schulz coefficients and step count (Keller Jordan's Muon), and the epsilon of the
# Frobenius normalisation before it.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
# Tinker's rank learning-rate correction is relative to this LoRA rank.
RANK_CORRECTION_REFERENCE = 32


def orthogonalize(m: Tensor) -> Tensor:
    """Approximately U V^T for m = U S V^T: NS_STEPS quintic Newton-Schulz iterations on m / ||m||_F, in
    float32, on the wide orientation (rows <= cols, so X X^T is the small Gram matrix). The iteration
    drives every non-zero singular value into roughly [0.7, 1.2] (it trades exactness for speed, as in
    Muon); a zero matrix stays zero.

    >>> q = orthogonalize(torch.randn(4, 64)); bool((q @ q.T).diagonal().sub(1).abs().max() < 0.5)
    True
    """
    x = m.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + NS_EPS)
    a, b, c = NS_COEFFICIENTS
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class DimuonOptimizer(SlotOptimizer):
    """Dimuon for one adapter slot: a Muon-style orthogonalised update of every LoRA matrix.

    For each parameter P (all LoRA factors are 2-D) with accumulated, clipped gradient G:

        M <- beta1 * M + (1 - beta1) * G        (EMA momentum, M starts at 0)
        P <- P - lr * (32 / rank) ** e * orthogonalize(M)

    with e = `rank_lr_correction_exponent` (0 unless an SDK 0.29 client sends it). Scale rule: no
    per-shape factor. A factor is [rank, in] (A) or [out, rank] (B), so orthogonalize(M) of a full-rank
    momentum has `rank` singular values near 1 and Frobenius norm about sqrt(rank): the "direction with
    Frobenius norm sqrt(rank)" that Tinker's `learning_rate` docstring (SDK 0.29.1) applies the learning
    rate to. (Muon's common sqrt(max(1, rows/cols)) would make every B step sqrt(out/rank) times larger
    than A's.) No weight decay: DimuonParams has none."""

    config = {"type": DIMUON, "version": 1}
    params_type = DimuonParams
    wire_field = "optimizer_params"
    STATE_NAMES = frozenset({"momentum_buffer", "step"})

    def __init__(self, params: list[nn.Parameter], rank: int) -> None:
        super().__init__(params)
        for p in self.params:
            if p.dim() != 2:
                raise ValueError(f"Dimuon updates 2-D matrices only, got a parameter of shape {list(p.shape)}")
        self.rank = rank
        self.state: dict[int, dict[str, Tensor]] = {}

    def _apply(self, with_grad: list[nn.Parameter], hp: DimuonParams) -> None:
        lr = hp.learning_rate * (RANK_CORRECTION_REFERENCE / self.rank) ** hp.rank_lr_correction_exponent
        index = {id(p): i for i, p in enumerate(self.params)}
        with torch.no_grad():
            for p in with_grad:
                entry = self.state.setdefault(index[id(p)], {
                    "momentum_buffer": torch.zeros_like(p, dtype=torch.float32),
                    "step": torch.zeros((), dtype=torch.float32),
                })
                momentum = entry["momentum_buffer"]
                momentum.mul_(hp.beta1).add_(p.grad.float(), alpha=1 - hp.beta1)
                p.sub_(orthogonalize(momentum).to(p.dtype), alpha=lr)
                entry["step"] += 1

    def live_state(self) -> dict[int, dict[str, Tensor]]:
        return self.state

    def _install(self, state: dict[int, dict[str, Tensor]]) -> None:
        self.state = {i: {"momentum_buffer": entry["momentum_buffer"].float().to(self.params[i].device),
                          "step": entry["step"].float().cpu()} for i, entry in state.items()}


def make_optimizer(config: dict[str, Any], params: list[nn.Parameter], rank: int) -> SlotOptimizer:
    """A fresh optimizer of the kind `config` (from `optimizer_config_from_wire`) names."""
    return DimuonOptimizer(params, rank) if config["type"] == DIMUON else AdapterOptimizer(params)


def state_metadata(optimizer: SlotOptimizer) -> dict[str, str]:
    """safetensors metadata recording which optimizer a saved state belongs to."""
    return {"optimizer": json.dumps(optimizer.config)}


def config_from_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """Inverse of `state_metadata`; state saved before Dimuon existed has no entry and is AdamW's."""
    raw = metadata.get("optimizer")
    try:
        return optimizer_config_from_wire(json.loads(raw) if raw else None, "saved optimizer")
    except ValueError:
        raise UserError("invalid_optimizer_state", f"saved optimizer metadata is not JSON: {raw!r}") from None
