"""The engine: one base model and its adapter slots, and every protocol op as a method.

All input validation happens here, before anything touches the model, so that a bad request
becomes a `UserError` for that request alone and never leaves an adapter half-updated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint
from .adapter_slot import AdapterSlot
from .errors import UserError
from .lora import LoraAdapter, LoraConfig
from .losses import compute_loss, validate_loss_inputs
from .micro_batches import Chunk, WorkItem, plan_micro_batches, run_micro_batch
from .models.loading import ModelSharding, load_model
from .models.registry import ModelRegistry
from .models.transformer import Transformer
from .optim import AdamParams, DimuonParams
from .peft_export import export_peft
from .placement import Placement
from .sample_request import SampleRequest
from .sampler import sample_batch


@dataclass
class Engine:
    registry: ModelRegistry
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    # Rows × padded length processed per forward/backward pass; larger batches are split into
    # micro-batches whose gradients accumulate, so memory stays bounded.
    max_batch_tokens: int = 16384
    # Bytes of LM-head logits one micro-batch may keep from forward to backward instead of recomputing
    # them chunk by chunk (None: 512 MiB on CPU, 2 GiB on an accelerator). Bigger items recompute.
    head_logits_budget: int | None = None
    model_name: str | None = None
    model: Transformer | None = None
    adapters: dict[str, AdapterSlot] = field(default_factory=dict)
    # Token ids -> text, from the model folder's tokenizer.json; only stop strings need it.
    detokenize: Callable[[list[int]], str] | None = None
    op_counts: dict[str, int] = field(default_factory=dict)
    # How the base model is split over a tensor-parallel group (`parallel.TensorParallel`); None: whole.
    sharding: ModelSharding | None = None
    started_at: float = field(default_factory=time.time)
    # Capacity limits in adapters (None: unlimited): idle adapters beyond them move to host memory, then
    # to files in `spill_dir` (None: a private temporary folder), and come back when used (placement.py).
    max_resident_adapters: int | None = None
    max_host_adapters: int | None = None
    spill_dir: Path | None = None
    placement: Placement = field(init=False)

    def __post_init__(self) -> None:
        self.placement = Placement(self.adapters, self.device, self.max_resident_adapters, self.max_host_adapters,
                                   self.spill_dir)

    # ---- model and adapters -------------------------------------------------------------

    def load_model(self, name: str) -> dict[str, Any]:
        if self.model is not None:
            if name == self.model_name:
                return self.model_info()
            raise UserError(
                "model_already_loaded",
                f"this worker holds {self.model_name!r}; start another worker for {name!r}",
            )
        folder = self.registry.resolve(name)
        detokenize = _load_detokenizer(folder)  # before the model: a bad tokenizer must leave the worker empty
        self.model = load_model(folder, dtype=self.dtype, device=self.device, sharding=self.sharding)
        self.model_name, self.detokenize = name, detokenize
        return self.model_info()

    def model_info(self) -> dict[str, Any]:
        model = self._require_model()
        cfg = model.config
        return {
            "model": self.model_name,
            "architecture": cfg.architecture,
            "vocab_size": cfg.vocab_size,
            "max_context_length": cfg.max_position_embeddings,
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_hidden_layers,
            "num_params": sum(p.numel() for p in model.parameters()),
        }

    def create_adapter(self, adapter_id: str, config: LoraConfig, optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new adapter slot; `optimizer` is a validated optimizer config (`optimizer_config_from_wire`)."""
        model = self._require_model()
        if adapter_id in self.adapters:
            raise UserError("adapter_exists", f"adapter {adapter_id!r} already exists")
        config.validate()
        adapter = LoraAdapter.create(model, config, device=self.device)
        slot = self.adapters[adapter_id] = AdapterSlot.fresh(adapter, optimizer)
        self.placement.added(adapter_id)
        return {"adapter": adapter_id, "num_params": slot.num_params,
                "optimizer": slot.optimizer.config}

    def drop_adapter(self, adapter_id: str) -> dict[str, Any]:
        self._slot(adapter_id)
        del self.adapters[adapter_id]
        self.placement.forget(adapter_id)
        return {"adapter": adapter_id}

    def _require_model(self) -> Transformer:
        if self.model is None:
            raise UserError("no_model", "no model loaded; send load_model first")
        return self.model

    def _slot(self, adapter_id: str) -> AdapterSlot:
        slot = self.adapters.get(adapter_id)
        if slot is None:
            raise UserError("unknown_adapter", f"unknown adapter {adapter_id!r}")
        return slot

    def _adapter_or_base(self, adapter_id: str | None) -> LoraAdapter | None:
        return None if adapter_id is None else self._slot(adapter_id).adapter

    # ---- validation ------------------------------------------------------------------

    def validate_item(self, item: WorkItem) -> None:
        model = self._require_model()
        cfg = model.config
        self._adapter_or_base(item.adapter_id)
        if not item.data:
            raise UserError("empty_batch", "forward_backward needs at least one datum")
        for i, datum in enumerate(item.data):
            self.validate_tokens(datum.tokens, f"data[{i}].model_input")
            try:
                validate_loss_inputs(item.loss_fn, len(datum.tokens), datum.inputs, item.loss_config, cfg.vocab_size)
            except UserError as exc:
                raise UserError(exc.code, f"data[{i}]: {exc.message}") from None

    def validate_tokens(self, tokens: torch.Tensor, name: str, extra_len: int = 0) -> None:
        cfg = self._require_model().config
        if tokens.dim() != 1:
            raise UserError("invalid_shape", f"{name}: tokens must be 1-D, got shape {list(tokens.shape)}")
        if tokens.numel() == 0:
            raise UserError("empty_input", f"{name}: no tokens")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise UserError("invalid_dtype", f"{name}: token ids must be integers, got {tokens.dtype}")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= cfg.vocab_size:
            bad = low if low < 0 else high
            raise UserError(
                "token_out_of_vocab",
                f"{name}: token id {bad} is outside the vocabulary [0, {cfg.vocab_size})",
            )
        total = tokens.numel() + extra_len
        if total > cfg.max_position_embeddings:
            raise UserError(
                "context_too_long",
                f"{name}: {total} tokens exceed the model's context length of {cfg.max_position_embeddings}",
            )

    # ---- training --------------------------------------------------------------------

    def forward_backward(self, items: list[WorkItem], backward: bool) -> list[dict[str, Any] | UserError]:
        """Run many callers' items as one batch. Returns a result or a UserError per item.

        Each item's numbers are bit-for-bit those it gets alone (see `plan_micro_batches`), so a run replayed after a
        crash, one request per call, retraces the weights it had. With `backward`, an item whose loss
        or gradients are not finite fails alone (`non_finite_loss`) and its adapter's gradients go back
        to what they were before the call: one poisoned request never reaches an optimizer step.
        """
        model = self._require_model()
        outcome: list[dict[str, Any] | UserError] = []
        valid: list[int] = []
        for index, item in enumerate(items):
            try:
                self.validate_item(item)
                valid.append(index)
                outcome.append({})
            except UserError as exc:
                outcome.append(exc)
        # Adapters' rows must be contiguous for grouped LoRA matmuls.
        valid.sort(key=lambda i: (items[i].adapter_id or ""))
        logprobs_per_item: dict[int, list[torch.Tensor]] = {i: [] for i in valid}
        # The adapters stay placed on the device until their gradients have been checked.
        with self.placement.using(items[i].adapter_id for i in valid):
            restorers = self._gradient_restorers({items[i].adapter_id for i in valid}) if backward else {}
            try:
                for micro in self._plan(items, valid):
                    with torch.set_grad_enabled(backward):
                        total = self._run_micro_batch(model, items, micro, logprobs_per_item)
                    if backward and total is not None and total.requires_grad:
                        total.backward()
            except BaseException:
                for restore in restorers.values():
                    restore()  # a half-run call (e.g. out of memory) must not leave its gradients behind
                raise
            # Metrics over the whole item, which may have spanned several micro-batches.
            for i in valid:
                item = items[i]
                result = compute_loss(
                    item.loss_fn,
                    [lp.detach() for lp in logprobs_per_item[i]],
                    [d.inputs for d in item.data],
                    item.loss_config,
                )
                outcome[i] = {
                    "loss_fn_outputs": [{"logprobs": lp.detach().float().cpu()} for lp in logprobs_per_item[i]],
                    "metrics": result.metrics,
                }
            if backward:
                self._drop_non_finite(items, valid, outcome, restorers)
        return outcome

    def _drop_non_finite(self, items: list[WorkItem], valid: list[int], outcome: list[dict[str, Any] | UserError],
                         restorers: dict[str, Callable[[], None]]) -> None:
        """Fails the items whose loss or adapter gradients are NaN/inf, restoring those adapters' gradients;
        marks the others' adapters as holding gradients for the next optim_step."""
        by_adapter: dict[str, list[int]] = {}
        for i in valid:
            if items[i].adapter_id is not None:
                by_adapter.setdefault(items[i].adapter_id, []).append(i)
        if not by_adapter:
            return
        # One device sync for every adapter of the call, not one per adapter.
        grads_finite = torch.stack([
            torch.stack([p.grad.isfinite().all() for p in self.adapters[adapter_id].adapter.parameters() if p.grad is not None]
                        or [torch.ones((), dtype=torch.bool, device=self.device)]).all()
            for adapter_id in by_adapter
        ]).tolist()
        for (adapter_id, indices), grads_ok in zip(by_adapter.items(), grads_finite):
            slot = self.adapters[adapter_id]
            losses = [float(outcome[i]["metrics"]["loss:sum"]) for i in indices]  # type: ignore[index]
            finite = grads_ok and all(math.isfinite(loss) for loss in losses)
            if finite:
                slot.pending_grad = True
                continue
            restorers[adapter_id]()
            # The items of one adapter share its gradient: none of them counts.
            for i in indices:
                outcome[i] = UserError(
                    "non_finite_loss",
                    f"the loss or its gradient is not finite (loss:sum {outcome[i]['metrics']['loss:sum']}); "  # type: ignore[index]
                    "this request was not applied (check logprobs/advantages for extreme values)",
                )

    def _gradient_restorers(self, adapter_ids: set[str | None]) -> dict[str, Callable[[], None]]:
        """Per adapter, a function that puts its gradients back as they are now. Only gradients pending
        from earlier calls need a copy; the others go back to None."""
        restorers: dict[str, Callable[[], None]] = {}
        for adapter_id in adapter_ids:
            slot = self.adapters.get(adapter_id) if adapter_id is not None else None
            if adapter_id is None or slot is None:
                continue
            saved = [(param, param.grad.clone() if slot.pending_grad and param.grad is not None else None)
                     for param in slot.adapter.parameters()]

            def restore(saved: list[tuple[torch.nn.Parameter, torch.Tensor | None]] = saved) -> None:
                for param, grad in saved:
                    param.grad = grad

            restorers[adapter_id] = restore
        return restorers

    def _plan(self, items: list[WorkItem], valid: list[int]) -> list[list[Chunk]]:
        """The call's micro-batches under this engine's limits (`micro_batches.plan_micro_batches`)."""
        return plan_micro_batches(items, valid, self._require_model().config.vocab_size, self.dtype.itemsize,
                                  self.max_batch_tokens, self._head_logits_budget())

    def _run_micro_batch(self, model: Transformer, items: list[WorkItem], chunks: list[Chunk],
                         logprobs_per_item: dict[int, list[torch.Tensor]]) -> torch.Tensor | None:
        return run_micro_batch(model, items, chunks, self._adapter_or_base, self.device, logprobs_per_item)

    def _head_logits_budget(self) -> int:
        if self.head_logits_budget is not None:
            return self.head_logits_budget
        return 512 << 20 if self.device.type == "cpu" else 2 << 30

    def optim_step(self, adapter_id: str, params: AdamParams | DimuonParams) -> dict[str, Any]:
        slot = self._slot(adapter_id)
        with self.placement.using([adapter_id]):
            metrics = slot.optimizer.step(params)
        slot.pending_grad = False
        slot.steps += 1
        return {"metrics": metrics}

    # ---- sampling --------------------------------------------------------------------

    def sample(self, requests: list[SampleRequest]) -> list[dict[str, Any] | UserError]:
        model = self._require_model()
        outcome: list[dict[str, Any] | UserError] = []
        valid: list[SampleRequest] = []
        for request in requests:
            try:
                adapter = self._adapter_or_base(request.adapter_id)
                request.params.validate(model.config.vocab_size)
                # Without max_tokens it decodes until the context is full, so one new token must fit.
                self.validate_tokens(request.prompt, "prompt", extra_len=request.params.max_tokens or 1)
                request.validate_extras(model.config.vocab_size)
                if request.params.stop_strings and self.detokenize is None:
                    raise UserError(
                        "stop_strings_unsupported",
                        "this model's folder has no tokenizer.json, so stop strings cannot be matched; pass stop token ids",
                    )
                request.adapter = adapter
                valid.append(request)
                outcome.append({})
            except UserError as exc:
                outcome.append(exc)
        with self.placement.using(request.adapter_id for request in valid):
            results = iter(sample_batch(model, valid, self.device, self.detokenize) if valid else [])
        return [o if isinstance(o, UserError) else next(results) for o in outcome]

    # ---- checkpoints -----------------------------------------------------------------

    def save_adapter(self, adapter_id: str, path: Path, include_optimizer: bool) -> dict[str, Any]:
        slot = self._slot(adapter_id)
        with self.placement.using([adapter_id]):
            size = checkpoint.save(path, slot.adapter, slot.optimizer if include_optimizer else None, self.model_name)
        return {"adapter": adapter_id, "path": str(path), "bytes": size}

    def load_adapter(self, adapter_id: str, path: Path, include_optimizer: bool,
                     optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load into a new slot, or replace an existing slot's weights (and optimizer state).

        The slot's optimizer kind is `optimizer` if given, else the existing slot's, else (with
        `include_optimizer`) the saved state's, else AdamW. As in Tinker, neither a restored optimizer
        state nor an existing slot can change kind: a mismatch is a user error."""
        model = self._require_model()
        adapter, saved = checkpoint.load(path, model, self.model_name, self.device)
        if include_optimizer and saved is None:
            raise UserError("no_optimizer_state", f"checkpoint {path} was saved without optimizer state")
        existing = self.adapters.get(adapter_id)
        config = optimizer or (existing.optimizer.config if existing else None)
        if existing is not None and config != existing.optimizer.config:
            raise UserError("optimizer_mismatch", f"optimizer: adapter {adapter_id!r} uses the "
                            f"{existing.optimizer.kind} optimizer, which cannot change; got {config}")
        if include_optimizer and saved is not None:
            if config is not None and config != saved.config:
                raise UserError("optimizer_mismatch", f"optimizer: checkpoint {path} holds {saved.config['type']} "
                                f"optimizer state, which cannot be loaded into an adapter that uses {config['type']}")
            config = saved.config
        slot = AdapterSlot.fresh(adapter, config)
        if include_optimizer and saved is not None:
            slot.optimizer.load_state_dict(saved.state)
        self.adapters[adapter_id] = slot  # only once everything loaded: a bad checkpoint leaves the old slot
        self.placement.added(adapter_id)
        return {"adapter": adapter_id, "lora": checkpoint.lora_config_to_wire(adapter.config),
                "optimizer": slot.optimizer.config}

    def export_peft(self, adapter_id: str | None, path: Path, source: Path | None = None, naming: str = "tinker") -> dict[str, Any]:
        """Export a live adapter slot, or a saved checkpoint folder (`source`), as a PEFT-style folder
        with Tinker's archive names ("tinker") or PEFT's ("peft"); see `peft_export`."""
        model = self._require_model()
        if source is not None:
            adapter, _ = checkpoint.load(source, model, self.model_name, self.device)
        elif adapter_id is not None:
            adapter = self._slot(adapter_id).adapter
        else:
            raise UserError("missing_field", "export_peft needs adapter or source")
        with self.placement.using([adapter_id if source is None else None]):
            export_peft(adapter, self.model_name or "", model.config, path, naming)
        return {"path": str(path)}

    def stats(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "uptime_s": time.time() - self.started_at,
            "adapters": [
                {
                    "adapter": name,
                    "rank": slot.adapter.config.rank,
                    "num_params": slot.num_params,
                    "pending_grad": slot.pending_grad,
                    "steps": slot.steps,
                    "optimizer": slot.optimizer.config,
                    "tier": self.placement.tier(name),
                }
                for name, slot in self.adapters.items()
            ],
            "placement": self.placement.stats(),
            "ops": dict(self.op_counts),
        }


def _load_detokenizer(folder: Path) -> Callable[[list[int]], str] | None:
    if not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise UserError("invalid_model_files", f"{folder / 'tokenizer.json'}: cannot be read as a tokenizer ({exc})") from None
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
