"""Sampling extras (sampled top-k logprobs, target prompt logprobs, alternative prompt tokens, prompt
logprobs of the tail only), against a plain full-logits reference."""

from __future__ import annotations

import pytest
import torch

from lathe_worker.sampler import draw_tokens

from sampling_setup import assert_close_rel, engine, extras, full_logprobs, request  # noqa: F401 (engine is a pytest fixture)
from small_model import random_tokens


def test_topk_sample_logprobs_are_the_temperature_one_distribution_of_each_step(engine):
    prompt_a, prompt_b = random_tokens(7, 30), random_tokens(4, 31)
    plain = request(None, random_tokens(5, 32), max_tokens=3, seed=1)
    # Filtered, tempered sampling: the reported top-k is still the model's own, unfiltered distribution.
    wide = extras(prompt_a, "a", n=2, max_tokens=6, seed=3, temperature=0.7, top_k=20, topk_sample_logprobs=5)
    narrow = extras(prompt_b, "b", max_tokens=4, seed=4, topk_sample_logprobs=2)
    results = engine.sample([plain, wide, narrow])
    assert all("topk_logprobs" not in seq for seq in results[0]["sequences"])
    for (adapter, prompt, k), result in zip([("a", prompt_a, 5), ("b", prompt_b, 2)], results[1:]):
        for seq in result["sequences"]:
            n = len(seq["tokens"])
            ref = full_logprobs(engine, adapter, prompt + seq["tokens"])[len(prompt) - 1 : len(prompt) - 1 + n]
            values, ids = ref.topk(k, dim=-1)
            top = seq["topk_logprobs"]
            assert top["token_ids"].dtype == torch.int64 and top["token_ids"].shape == (n, k)
            assert top["token_ids"].tolist() == ids.tolist()
            assert_close_rel(top["logprobs"], values)


def test_topk_sample_logprobs_follow_a_sequence_that_stops_early(engine):
    prompt = random_tokens(5, 33)
    free = engine.sample([request("a", prompt, max_tokens=8, temperature=0)])[0]["sequences"][0]["tokens"]
    req = extras(prompt, max_tokens=8, temperature=0, stop_token_ids=[free[2]], topk_sample_logprobs=3)
    seq = engine.sample([req, extras(random_tokens(6, 34), max_tokens=8, topk_sample_logprobs=1)])[0]["sequences"][0]
    n = len(seq["tokens"])
    assert seq["stop_reason"] == "stop" and seq["topk_logprobs"]["logprobs"].shape == (n, 3)
    ref = full_logprobs(engine, "a", prompt + seq["tokens"])[len(prompt) - 1 : len(prompt) - 1 + n]
    assert seq["topk_logprobs"]["token_ids"][:, 0].tolist() == seq["tokens"]  # greedy: the top-1 is the token
    assert_close_rel(seq["topk_logprobs"]["logprobs"], ref.topk(3, dim=-1).values)


def test_target_prompt_logprobs_score_the_named_ids(engine):
    prompt = random_tokens(10, 35)
    targets = torch.randint(0, 512, (9, 3), generator=torch.Generator().manual_seed(36))
    targets[:2] = -1  # rows before the first named id are not scored
    targets[4, 1:] = -1
    targets[7, 0] = -1
    targets[5, 2] = prompt[6]  # the actual next token: must equal its prompt logprob
    req = extras(prompt, "b", prompt_logprobs=True, target_prompt_logprobs=targets)
    result = engine.sample([req])[0]
    got = result["target_prompt_logprobs"]
    assert got.dtype == torch.float32 and got.shape == (9, 3)
    ref = full_logprobs(engine, "b", prompt)[:-1]  # row i scores prompt position i + 1
    expected = ref.gather(1, targets.clamp(min=0)).masked_fill(targets < 0, float("nan"))
    assert torch.equal(got.isnan(), targets < 0)
    assert_close_rel(got.nan_to_num(0.0), expected.nan_to_num(0.0))
    assert float(got[5, 2]) == pytest.approx(result["prompt_logprobs"][6], rel=1e-5)


def test_prompt_alt_tokens_are_seeded_draws_with_the_models_logprobs(engine):
    prompt = random_tokens(12, 37)
    req = lambda: extras(prompt, "a", n=2, seed=11, temperature=0.8, prompt_alt_tokens_k=4)  # noqa: E731
    alone = engine.sample([req()])[0]["prompt_alt_tokens"]
    crowded = engine.sample([extras(random_tokens(6, 38), "b", seed=2, prompt_alt_tokens_k=3), req()])[1]["prompt_alt_tokens"]
    assert alone["tokens"].dtype == torch.int64 and alone["tokens"].shape == (11, 4)
    assert alone["logprobs"].dtype == torch.float32 and alone["logprobs"].shape == (11, 4)
    assert torch.equal(alone["tokens"], crowded["tokens"])  # the request's seed, whatever shares the batch
    ref = full_logprobs(engine, "a", prompt)[:-1]
    assert_close_rel(alone["logprobs"], ref.gather(1, alone["tokens"]))
    assert len(set(alone["tokens"].flatten().tolist())) > 11  # real draws, not one token per row
    other = engine.sample([extras(prompt, "a", seed=12, temperature=0.8, prompt_alt_tokens_k=4)])[0]["prompt_alt_tokens"]
    assert not torch.equal(other["tokens"], alone["tokens"])
    greedy = engine.sample([extras(prompt, "a", temperature=0, prompt_alt_tokens_k=2)])[0]["prompt_alt_tokens"]
    assert greedy["tokens"].tolist() == [[t, t] for t in ref.argmax(-1).tolist()]
    single = engine.sample([extras([5], "a", prompt_alt_tokens_k=2)])[0]["prompt_alt_tokens"]
    assert single["tokens"].shape == (0, 2) and single["logprobs"].shape == (0, 2)


def test_draw_tokens_follow_the_tempered_distribution():
    logprobs = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]), -1).expand(2, -1)
    for temperature in (1.0, 0.5, 2.0):
        draws = draw_tokens(logprobs, 3000, temperature, torch.Generator().manual_seed(1))
        assert draws.shape == (2, 3000)
        freq = torch.bincount(draws.flatten(), minlength=6) / draws.numel()
        assert float((freq - torch.softmax(logprobs[0] / temperature, -1)).abs().max()) < 0.03, (temperature, freq)


def test_prompt_logprobs_last_n_scores_only_the_tail(engine, monkeypatch):
    prompt = random_tokens(20, 39)
    head_rows: list[int] = []
    real_head = engine.model.lm_head_logits

    def counting_head(hidden, *args, **kwargs):
        head_rows.append(hidden.shape[0])
        return real_head(hidden, *args, **kwargs)

    monkeypatch.setattr(engine.model, "lm_head_logits", counting_head)
    req = extras(prompt, "a", max_tokens=1, prompt_logprobs=True, topk_prompt_logprobs=3, prompt_logprobs_last_n=4)
    result = engine.sample([req])[0]
    # One prefill pass over the 4 positions asked for, then one decode step for the one sampled row.
    assert head_rows == [4, 1]
    monkeypatch.undo()
    ref = full_logprobs(engine, "a", prompt)
    assert result["prompt_logprobs"][:16] == [None] * 16 and len(result["prompt_logprobs"]) == 20
    assert_close_rel(result["prompt_logprobs"][16:], ref[15:19].gather(1, torch.tensor(prompt[16:])[:, None])[:, 0])
    top = result["topk_prompt_logprobs"]
    assert top[:16] == [None] * 16
    assert [[i for i, _ in row] for row in top[16:]] == ref[15:19].topk(3, -1).indices.tolist()
    assert_close_rel([[v for _, v in row] for row in top[16:]], ref[15:19].topk(3, -1).values)
    # n beyond the prompt is the whole prompt; 0 is none.
    whole = engine.sample([extras(prompt, "a", prompt_logprobs=True, prompt_logprobs_last_n=100)])[0]["prompt_logprobs"]
    assert whole[0] is None and None not in whole[1:]
    none = engine.sample([extras(prompt, "a", prompt_logprobs=True, prompt_logprobs_last_n=0)])[0]["prompt_logprobs"]
    assert none == [None] * 20


def test_all_prompt_outputs_share_one_head_pass(engine, monkeypatch):
    """Prompt logprobs, top-k, targets and alternative draws together: one chunked pass, from the first row
    any of them needs, and the same numbers each gives alone."""
    prompt = random_tokens(15, 40)
    targets = torch.full((14, 2), -1)
    targets[9:, 0] = torch.tensor([3, 4, 5, 6, 7])
    fields = dict(prompt_logprobs=True, topk_prompt_logprobs=2, prompt_logprobs_last_n=3, target_prompt_logprobs=targets)
    head_rows: list[int] = []
    real_head = engine.model.lm_head_logits
    monkeypatch.setattr(engine.model, "lm_head_logits",
                        lambda h, *a, **k: head_rows.append(h.shape[0]) or real_head(h, *a, **k))
    together = engine.sample([extras(prompt, "b", max_tokens=1, **fields)])[0]
    assert head_rows == [5, 1]  # rows 9..13: the targets start before the last 3 positions
    head_rows.clear()
    engine.sample([extras(prompt, "b", max_tokens=1, prompt_alt_tokens_k=1, **fields)])
    assert head_rows == [14, 1]  # alternative draws need every row
    monkeypatch.undo()
    for name, value in fields.items():
        if name == "prompt_logprobs_last_n":
            continue
        alone = engine.sample([extras(prompt, "b", prompt_logprobs_last_n=3, **{name: value})])[0][name]
        if name == "target_prompt_logprobs":
            assert torch.equal(alone.isnan(), together[name].isnan())
            assert_close_rel(alone.nan_to_num(0.0), together[name].nan_to_num(0.0))
        elif name == "prompt_logprobs":  # other rows in the head matmul: equal up to rounding
            assert alone[:12] == together[name][:12] == [None] * 12
            assert_close_rel(alone[12:], together[name][12:])
        else:
            assert alone[:12] == together[name][:12] == [None] * 12
            assert [[i for i, _ in r] for r in alone[12:]] == [[i for i, _ in r] for r in together[name][12:]]
            assert_close_rel([[v for _, v in r] for r in alone[12:]], [[v for _, v in r] for r in together[name][12:]])
