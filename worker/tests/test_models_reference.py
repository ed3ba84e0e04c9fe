"""Our Transformer against the transformers reference implementation, loaded from the same folder."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from lathe_worker.errors import UserError
from lathe_worker.models import KVCache, ModelConfig, causal_padding_mask, load_model
from lathe_worker.models.tiny import TINY_MODELS
from lathe_worker.models.transformer import rope_inv_freq

from tolerance import assert_close_rel

# Small original context so that all three llama3 regimes (kept / interpolated / divided by factor)
# occur among the 8 frequencies of head_dim 16.
SMALL_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}

CASES = {
    "qwen3-tied": dict(arch="qwen3", tie=True),
    "qwen3-untied": dict(arch="qwen3", tie=False),
    "llama3-scaled-untied": dict(arch="llama", tie=False, rope_scaling=SMALL_LLAMA3, bias=True),
    "llama-plain-tied": dict(arch="llama", tie=True),
}


def make_hf_model(folder, arch: str, tie: bool, rope_scaling=None, bias=False, seed=0):
    cls, cfg_cls = (Qwen3ForCausalLM, Qwen3Config) if arch == "qwen3" else (LlamaForCausalLM, LlamaConfig)
    cfg = cfg_cls(vocab_size=101, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                  rope_theta=10000.0, rope_scaling=dict(rope_scaling) if rope_scaling else None,  # HF mutates it
                  max_position_embeddings=128,
                  tie_word_embeddings=tie, attention_bias=bias)
    torch.manual_seed(seed)
    hf = cls(cfg).eval()
    with torch.no_grad():  # unit-scale weights (HF's 0.02 init makes everything nearly constant)
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(tmp_path, case):
    """A right-padded batch of different lengths, with our padding mask and with attn_mask=None (what
    training uses: SDPA's own causal mask, exact for every real position of a right-padded row)."""
    hf = make_hf_model(tmp_path, **CASES[case])
    ours = load_model(tmp_path).eval()
    assert ours.config.tie_word_embeddings == CASES[case]["tie"]
    lengths = torch.tensor([9, 5, 1, 7])
    B, T = len(lengths), int(lengths.max())
    ids = torch.randint(0, 101, (B, T))
    pad = torch.arange(T)[None] >= lengths[:, None]
    ids[pad] = 0
    pos = torch.arange(T)[None].expand(B, T)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=(~pad).long(), position_ids=pos).logits
        masked = ours.lm_head_logits(ours(ids, pos, causal_padding_mask(lengths, T)))
        causal = ours.lm_head_logits(ours(ids, pos, None))
    real = ~pad
    assert masked.shape == causal.shape == (B, T, 101)
    assert_close_rel(masked[real], ref[real], rel=1e-4)
    assert_close_rel(causal[real], ref[real], rel=1e-4)
    assert ref[real].std() > 0.5  # the comparison is not between near-constant outputs


def test_llama3_inv_freq_matches_hf():
    ours_cfg = TINY_MODELS["lathe/tiny-llama3"]
    hf_cfg = LlamaConfig(**{k: v for k, v in ours_cfg.to_hf_dict().items() if k != "architectures"})
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, None)
    # Elementwise relative: the frequencies span six decades, and pow need not round alike on every CPU.
    torch.testing.assert_close(rope_inv_freq(ours_cfg), ref, rtol=1e-6, atol=0)
    small = ModelConfig.from_hf_dict(hf_cfg.to_dict() | {"rope_scaling": SMALL_LLAMA3, "rope_parameters": None})
    plain = ModelConfig.from_hf_dict(hf_cfg.to_dict() | {"rope_scaling": None, "rope_parameters": None})
    ratio = rope_inv_freq(plain) / rope_inv_freq(small)
    assert ratio[0] == 1 and ratio[-1] == 8 and ((ratio > 1) & (ratio < 8)).any()  # all three regimes


def test_config_roundtrip_and_errors(tmp_path):
    hf = make_hf_model(tmp_path, "llama", False, SMALL_LLAMA3)
    cfg = ModelConfig.from_hf_dict(hf.config.to_dict())  # transformers-5 style (rope_parameters)
    assert cfg.rope_scaling == SMALL_LLAMA3 and cfg.rope_theta == 10000.0 and not cfg.qk_norm
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg  # classic style (rope_theta + rope_scaling)
    assert LlamaConfig.from_dict(cfg.to_hf_dict()).rope_parameters["rope_type"] == "llama3"
    with pytest.raises(UserError) as e:
        ModelConfig.from_hf_dict(hf.config.to_dict() | {"model_type": "gpt2"})
    assert e.value.code == "unsupported_architecture" and "gpt2" in e.value.message
    with pytest.raises(UserError):
        ModelConfig.from_hf_dict(cfg.to_hf_dict() | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def _decode_matches_full(model, ids: torch.Tensor, lengths: torch.Tensor, prefill: int) -> None:
    """Left-padded rows: full forward vs prefill + one token at a time through a KVCache."""
    B, L = ids.shape
    pad = L - lengths
    pos = (torch.arange(L)[None] - pad[:, None]).clamp(min=0)
    mask = causal_padding_mask(lengths, L, left_padded=True)
    with torch.no_grad():
        full = model.lm_head_logits(model(ids, pos, mask))
        cache = KVCache(model.config, B, max_len=L + 3, dtype=torch.float32, device="cpu")
        steps = [model.lm_head_logits(model(ids[:, :prefill], pos[:, :prefill], mask[:, :prefill, :prefill],
                                            cache=cache))]
        assert cache.length == prefill
        for t in range(prefill, L):
            steps.append(model.lm_head_logits(model(ids[:, t:t + 1], pos[:, t:t + 1], mask[:, t:t + 1, :t + 1],
                                                    cache=cache)))
        assert cache.length == L
    dec = torch.cat(steps, dim=1)
    real = torch.arange(L)[None] >= pad[:, None]
    assert_close_rel(dec[real], full[real], rel=1e-5)


@pytest.mark.parametrize("case", ["qwen3-tied", "llama3-scaled-untied"])
def test_kv_cache_decoding(tmp_path, case):
    make_hf_model(tmp_path, **CASES[case])
    model = load_model(tmp_path)
    ids = torch.randint(0, 101, (3, 12))
    _decode_matches_full(model, ids, torch.tensor([12, 12, 12]), prefill=5)  # no padding
    _decode_matches_full(model, ids, torch.tensor([12, 8, 3]), prefill=6)  # left-padded, row 2 all pad at prefill
    # Left padding does not change a row's logits: compare row 1 with itself unpadded.
    lengths = torch.tensor([12, 8, 3])
    with torch.no_grad():
        L, pad = 12, 12 - lengths
        pos = (torch.arange(L)[None] - pad[:, None]).clamp(min=0)
        padded = model.lm_head_logits(model(ids, pos, causal_padding_mask(lengths, L, left_padded=True)))
        alone = model.lm_head_logits(model(ids[1:2, 4:], torch.arange(8)[None], causal_padding_mask(lengths[1:2], 8)))
    assert_close_rel(padded[1, 4:], alone[0], rel=1e-5)


def test_causal_padding_mask():
    m = causal_padding_mask(torch.tensor([2, 0]), 3)
    assert m.dtype == torch.bool and m.shape == (2, 3, 3)
    assert m[0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert m[1].tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    left = causal_padding_mask(torch.tensor([1]), 3, left_padded=True)
    assert left[0].tolist() == [[True, False, False], [False, True, False], [False, False, True]]


def test_gqa_attention_paths_match_repeated_kv():
    """`attention` (SDPA enable_gqa when causal, query heads folded onto the length axis with a mask)
    against plain SDPA over repeat_interleave'd K/V, with boolean and additive masks, T > 1 and T == 1."""
    from lathe_worker.models.transformer import attention

    g = torch.Generator().manual_seed(0)
    B, H, n_kv, hd = 3, 6, 2, 8
    for T, S in ((5, 5), (1, 9), (4, 11)):
        q = torch.randn(B, T, H, hd, generator=g).transpose(1, 2)  # the layout Attention produces
        k, v = torch.randn(B, n_kv, S, hd, generator=g), torch.randn(B, n_kv, S, hd, generator=g)
        kr, vr = k.repeat_interleave(H // n_kv, 1), v.repeat_interleave(H // n_kv, 1)
        if T == S:
            ref = torch.nn.functional.scaled_dot_product_attention(q, kr, vr, is_causal=True)
            torch.testing.assert_close(attention(q, k, v, None), ref, atol=1e-6, rtol=1e-5)
        allowed = torch.rand(B, T, S, generator=g) > 0.3
        allowed[..., -1] = True  # no query row fully masked
        ref = torch.nn.functional.scaled_dot_product_attention(q, kr, vr, attn_mask=allowed[:, None])
        model = type("M", (), {})()  # prepare_mask only reads the config's head counts
        model.config = type("C", (), {"num_attention_heads": H, "num_key_value_heads": n_kv})()
        from lathe_worker.models.transformer import Transformer

        mask = Transformer.prepare_mask(model, allowed, T, torch.float32)
        torch.testing.assert_close(attention(q, k, v, mask), ref, atol=1e-6, rtol=1e-5)


def test_causal_mask_refuses_a_filled_cache(tmp_path):
    make_hf_model(tmp_path, "qwen3", True)
    model = load_model(tmp_path)
    cache = KVCache(model.config, 1, max_len=8, dtype=torch.float32, device="cpu")
    ids = torch.randint(0, 101, (1, 3))
    with torch.no_grad():
        model(ids, torch.arange(3)[None], None, cache=cache)  # empty cache: plain causal prefill is fine
        with pytest.raises(ValueError):
            model(ids[:, :1], torch.tensor([[3]]), None, cache=cache)


def test_kv_cache_advances_after_its_last_layer():
    """The cache moves `length` itself: every layer of a pass writes at the same positions, and only the
    last layer's write advances it (the model never touches `length`)."""
    cfg = ModelConfig(architecture="llama", vocab_size=11, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=4, rms_norm_eps=1e-6,
                      rope_theta=10000.0, rope_scaling=None, max_position_embeddings=16,
                      tie_word_embeddings=True, qk_norm=False, attention_bias=False)
    cache = KVCache(cfg, 2, max_len=5, dtype=torch.float32, device="cpu")
    for step, T in enumerate((3, 1)):
        start = cache.length
        for layer in range(3):
            k, v = torch.full((2, 1, T, 4), float(layer + 1)), torch.full((2, 1, T, 4), -float(step))
            filled_k, filled_v = cache.update(layer, k, v)
            assert filled_k.shape[2] == start + T and torch.equal(filled_k[:, :, start:], k)
            assert cache.length == (start + T if layer == 2 else start)
    with pytest.raises(ValueError, match="overflow"):
        cache.update(0, torch.zeros(2, 1, 2, 4), torch.zeros(2, 1, 2, 4))
