"""Set-up shared by the sampling tests (test_sampler.py, test_sampler_extras.py): an engine on the small
model with two LoRA adapters, request builders, and reference log-probs from the training forward pass
and from the full logits."""

from __future__ import annotations

import pytest
import torch

import tolerance
from lathe_worker.lora import LoraConfig
from lathe_worker.sample_request import SampleRequest, SamplingParams

from small_model import make_engine, sft_item, write_small_model


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = make_engine(write_small_model(tmp_path_factory.mktemp("small") / "model"))
    for name, seed in (("a", 1), ("b", 2)):
        engine.create_adapter(name, LoraConfig(rank=8, seed=seed))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, _, b in engine.adapters[name].adapter.named_factors():
                b.copy_(torch.randn(b.shape, generator=gen) * 0.05)
    return engine


def request(adapter, prompt, n=1, **params) -> SampleRequest:
    return SampleRequest(adapter, torch.tensor(prompt), n, SamplingParams(**params))


def forward_logprobs(engine, adapter, tokens: list[int]) -> torch.Tensor:
    """Training-path log-probs of tokens[1:] given their prefixes."""
    return engine.forward_backward([sft_item(adapter, tokens)], backward=False)[0]["loss_fn_outputs"][0]["logprobs"]


def extras(prompt, adapter="a", n=1, **fields) -> SampleRequest:
    params = {k: fields.pop(k) for k in list(fields) if k in SamplingParams.__dataclass_fields__}
    req = request(adapter, prompt, n, **({"max_tokens": 2} | params))
    for name, value in fields.items():
        setattr(req, name, value)
    return req


def full_logprobs(engine, adapter, tokens: list[int]) -> torch.Tensor:
    """log_softmax of the full logits at every position of one unpadded forward pass: [len(tokens), V]."""
    from lathe_worker.lora import LoraBatch
    from lathe_worker.models.transformer import causal_padding_mask

    model, n = engine.model, len(tokens)
    lora_adapter = engine.adapters[adapter].adapter if adapter else None
    with torch.no_grad():
        hidden = model(torch.tensor([tokens]), torch.arange(n)[None], causal_padding_mask(torch.tensor([n]), n),
                       lora=LoraBatch.from_rows([lora_adapter]))
        return torch.log_softmax(model.lm_head_logits(hidden[0], lora_adapter).float(), dim=-1)


def assert_close_rel(got, want, rel: float = 1e-4) -> None:
    """`tolerance.assert_close_rel` on float32 copies of the same shape: the sampler reports lists,
    the references are tensors. Every sampling test compares this way (1e-4 unless it says)."""
    got, want = torch.as_tensor(got, dtype=torch.float32), torch.as_tensor(want, dtype=torch.float32)
    assert got.shape == want.shape, (got.shape, want.shape)
    tolerance.assert_close_rel(got, want, rel)
