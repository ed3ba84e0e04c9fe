"""Sampling: consistency with the training forward pass, seeds, stops, prompt logprobs, errors. (The sampling
extras are in test_sampler_extras.py; the shared set-up in sampling_setup.py.)"""

from __future__ import annotations

import pytest
import torch

from lathe_worker.errors import UserError
from lathe_worker.sample_request import MAX_TOPK_PROMPT_LOGPROBS, SamplingParams

from sampling_setup import assert_close_rel, engine, extras, forward_logprobs, request  # noqa: F401 (engine is a pytest fixture)
from small_model import random_tokens


def test_greedy_equals_argmax_of_the_training_forward(engine):
    prompts = [random_tokens(5, 1), random_tokens(9, 2)]
    results = engine.sample([request("a", prompts[0], max_tokens=8, temperature=0), request("b", prompts[1], max_tokens=8, temperature=0)])
    for adapter, prompt, result in zip("ab", prompts, results):
        seq = result["sequences"][0]
        full = prompt + seq["tokens"]
        # Each greedy token must have the highest forward log-prob at its position.
        model = engine.model
        from lathe_worker.models.transformer import causal_padding_mask
        from lathe_worker.lora import LoraBatch

        ids = torch.tensor([full[:-1]])
        hidden = model(ids, torch.arange(ids.shape[1])[None], causal_padding_mask(torch.tensor([ids.shape[1]]), ids.shape[1]),
                       lora=LoraBatch([(engine.adapters[adapter].adapter, 0, 1)]))
        logits = model.lm_head_logits(hidden[0], engine.adapters[adapter].adapter)
        argmax = logits.argmax(-1)[len(prompt) - 1 :]
        assert argmax.tolist() == seq["tokens"]
        assert seq["stop_reason"] == "length"


def test_sampler_logprobs_equal_training_logprobs(engine):
    prompts = [random_tokens(4, 3), random_tokens(11, 4), random_tokens(7, 5)]
    results = engine.sample([request(a, p, n=2, max_tokens=10, seed=i) for i, (a, p) in enumerate(zip(["a", "b", None], prompts))])
    for adapter, prompt, result in zip(["a", "b", None], prompts, results):
        for seq in result["sequences"]:
            expected = forward_logprobs(engine, adapter, prompt + seq["tokens"])[len(prompt) - 1 :]
            assert_close_rel(torch.tensor(seq["logprobs"]), expected, rel=1e-5)


def test_same_seed_same_output_whatever_shares_the_batch(engine):
    prompt = random_tokens(6, 7)
    alone = engine.sample([request("a", prompt, n=3, max_tokens=12, seed=42)])[0]
    crowded = engine.sample([
        request("b", random_tokens(13, 8), n=2, max_tokens=5, seed=1),
        request("a", prompt, n=3, max_tokens=12, seed=42),
        request(None, random_tokens(3, 9), max_tokens=20),
    ])[1]
    assert [s["tokens"] for s in alone["sequences"]] == [s["tokens"] for s in crowded["sequences"]]
    # Samples within one request differ, and another seed gives another draw.
    assert len({tuple(s["tokens"]) for s in alone["sequences"]}) > 1
    other = engine.sample([request("a", prompt, n=3, max_tokens=12, seed=43)])[0]
    assert [s["tokens"] for s in other["sequences"]] != [s["tokens"] for s in alone["sequences"]]


def test_a_seeded_request_split_into_pieces_equals_the_whole(engine):
    """The server splits a large request into pieces of fewer samples (first_sample_index = the piece's
    first sample): concatenated, the pieces' sequences are the unsplit request's, whatever shares the batch."""
    prompt = random_tokens(6, 21)
    whole = engine.sample([request("a", prompt, n=5, max_tokens=10, seed=9)])[0]["sequences"]
    pieces = []
    for first, n in ((0, 2), (2, 2), (4, 1)):
        piece = request("a", prompt, n=n, max_tokens=10, seed=9)
        piece.first_sample_index = first
        pieces.append(piece)
    split = engine.sample([pieces[1], request("b", random_tokens(4, 22), n=2, max_tokens=3, seed=1), pieces[0]])
    last = engine.sample([pieces[2]])[0]["sequences"]
    joined = split[2]["sequences"] + split[0]["sequences"] + last
    assert [s["tokens"] for s in joined] == [s["tokens"] for s in whole]
    assert len({tuple(s["tokens"]) for s in whole}) > 1
    for got, want in zip(joined, whole):
        assert_close_rel(torch.tensor(got["logprobs"]), torch.tensor(want["logprobs"]), rel=1e-5)


def test_first_sample_index_is_checked(engine):
    bad = request("a", random_tokens(3, 23), n=1, max_tokens=2)
    bad.first_sample_index = -1
    with pytest.raises(UserError, match="first_sample_index"):
        bad.validate_counts()


@pytest.mark.parametrize("seed", [5, 2**40 + 17, 2**63 - 3, 2**64 - 1])
def test_every_bit_of_the_seed_counts(engine, seed):
    """Seeds are 64-bit on the wire; s and s + 2**32 must not collide (the CPU generator keeps only 32
    bits of its seed). The small model is peaked (about 0.3 nats a token), so a request draws 4
    sequences of 32 tokens: two seeds giving all four alike by chance is a ~1e-8 event."""
    prompt = random_tokens(5, 11)

    def draw(s: int) -> list[list[int]]:
        result = engine.sample([request("a", prompt, n=4, max_tokens=32, temperature=1.0, seed=s)])[0]
        return [seq["tokens"] for seq in result["sequences"]]

    first = draw(seed)
    assert draw(seed) == first
    for other in (seed ^ (1 << 32), seed ^ (1 << 62), seed - 1):
        assert draw(other) != first, other


def test_stop_token_is_included_and_ends_the_sequence(engine):
    prompt = random_tokens(5, 10)
    free = engine.sample([request("a", prompt, max_tokens=10, temperature=0)])[0]["sequences"][0]["tokens"]
    stop_at = free[3]
    first = free.index(stop_at)
    seq = engine.sample([request("a", prompt, max_tokens=10, temperature=0, stop_token_ids=[stop_at])])[0]["sequences"][0]
    assert seq["tokens"] == free[: first + 1]
    assert seq["stop_reason"] == "stop"


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    prompt = random_tokens(6, 11)
    greedy = engine.sample([request("b", prompt, max_tokens=8, temperature=0)])[0]["sequences"][0]["tokens"]
    for params in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 1e-300}, {"temperature": 1e-30}):
        params = {"temperature": 1.0} | params
        seq = engine.sample([request("b", prompt, max_tokens=8, seed=5, **params)])[0]["sequences"][0]
        assert seq["tokens"] == greedy


def test_prompt_logprobs_and_topk(engine):
    prompt = random_tokens(9, 12)
    req = request("a", prompt, max_tokens=1)
    req.prompt_logprobs, req.topk_prompt_logprobs = True, 4
    result = engine.sample([req])[0]
    expected = forward_logprobs(engine, "a", prompt)
    assert result["prompt_logprobs"][0] is None
    assert_close_rel(torch.tensor(result["prompt_logprobs"][1:]), expected, rel=1e-5)
    topk = result["topk_prompt_logprobs"]
    assert topk[0] is None and len(topk) == len(prompt)
    for position, entries in enumerate(topk[1:], start=1):
        values = [v for _, v in entries]
        assert len(entries) == 4 and values == sorted(values, reverse=True)
        # The actual next token's log-prob can never beat the best one.
        assert values[0] >= result["prompt_logprobs"][position] - 1e-5


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda: request("a", list(range(60)), max_tokens=10), "context_too_long"),
        (lambda: request("a", [1, 600], max_tokens=2), "token_out_of_vocab"),
        (lambda: request("zzz", [1, 2], max_tokens=2), "unknown_adapter"),
        (lambda: request("a", [1, 2], max_tokens=2, temperature=-1.0), "invalid_sampling_params"),
        (lambda: request("a", [1, 2], max_tokens=2, top_p=0.0), "invalid_sampling_params"),
        (lambda: request("a", [1, 2], max_tokens=0), "invalid_sampling_params"),
        (lambda: request("a", [1, 2], max_tokens=2, stop_token_ids=[9999]), "invalid_sampling_params"),
        (lambda: request("a", [1, 2], max_tokens="3"), "invalid_sampling_params"),
        (lambda: request("a", [1, 2], max_tokens=True), "invalid_sampling_params"),
        (lambda: request("a", list(range(64))), "context_too_long"),  # no max_tokens, and no room for one token
        (lambda: extras([1, 2, 3], topk_sample_logprobs=-1), "invalid_topk_sample_logprobs"),
        (lambda: extras([1, 2, 3], topk_sample_logprobs=MAX_TOPK_PROMPT_LOGPROBS + 1), "invalid_topk_sample_logprobs"),
        (lambda: extras([1, 2, 3], prompt_alt_tokens_k=True), "invalid_prompt_alt_tokens_k"),
        (lambda: extras([1, 2, 3], prompt_logprobs_last_n=-1), "invalid_prompt_logprobs_last_n"),
        (lambda: extras([1, 2, 3], target_prompt_logprobs=torch.tensor([[5], [6], [7]])), "invalid_target_prompt_logprobs"),
        (lambda: extras([1, 2, 3], target_prompt_logprobs=torch.tensor([5, 6])), "invalid_target_prompt_logprobs"),
        (lambda: extras([1, 2, 3], target_prompt_logprobs=torch.tensor([[5], [512]])), "invalid_target_prompt_logprobs"),
        (lambda: extras([1, 2, 3], target_prompt_logprobs=torch.tensor([[5], [-2]])), "invalid_target_prompt_logprobs"),
        (lambda: extras([1, 2, 3], target_prompt_logprobs=torch.full((2, 1), -1)), "invalid_target_prompt_logprobs"),
        (lambda: extras([1, 2, 3], target_prompt_logprobs=torch.zeros(2, MAX_TOPK_PROMPT_LOGPROBS + 1, dtype=torch.long)),
         "invalid_target_prompt_logprobs"),
        (lambda: extras([1], target_prompt_logprobs=torch.zeros(0, 1, dtype=torch.long)), "invalid_target_prompt_logprobs"),
    ],
)
def test_bad_requests_fail_alone(engine, make, code):
    good = request("a", [1, 2, 3], max_tokens=3, temperature=0)
    bad_result, good_result = engine.sample([make(), good])
    assert isinstance(bad_result, UserError) and bad_result.code == code, bad_result
    if code.startswith("invalid_") and code != "invalid_sampling_params":
        assert bad_result.message.startswith(code.removeprefix("invalid_")), bad_result.message  # names the field
    assert len(good_result["sequences"][0]["tokens"]) == 3


def test_without_max_tokens_it_decodes_until_the_context_is_full(engine):
    context = engine.model.config.max_position_embeddings
    seq = engine.sample([request("a", random_tokens(context - 4, 13))])[0]["sequences"][0]
    assert len(seq["tokens"]) == 4 and seq["stop_reason"] == "length"


def test_wire_stop_parsing():
    params = SamplingParams.from_wire({"max_tokens": 5, "stop": ["\n\n", 7], "seed": 3})
    assert params.stop_strings == ["\n\n"] and params.stop_token_ids == [7] and params.seed == 3
    with pytest.raises(UserError, match="unknown sampling_params"):
        SamplingParams.from_wire({"max_token": 5})


def test_stop_strings_need_a_tokenizer(engine):
    result = engine.sample([request("a", [1, 2], max_tokens=3, stop_strings=["x"])])[0]
    assert isinstance(result, UserError) and result.code == "stop_strings_unsupported"


def test_stop_strings_with_the_tiny_models_real_tokenizer(models_dir):
    from lathe_worker.engine import Engine
    from lathe_worker.models.registry import ModelRegistry

    engine = Engine(ModelRegistry(models_dir))
    engine.load_model("lathe/tiny-qwen3")
    assert (models_dir / "lathe__tiny-qwen3" / "tokenizer.json").is_file()
    prompt = [9707, 1879]  # "Hello world"
    free = engine.sample([request(None, prompt, max_tokens=12, temperature=0)])[0]["sequences"][0]["tokens"]
    text = engine.detokenize(free)
    # Stop on the text of tokens 4..5; decoding must stop at the token that completes it.
    stop = engine.detokenize(free[4:6])
    first_hit = next(i for i in range(1, len(free) + 1) if stop in engine.detokenize(free[:i]))
    seq = engine.sample([request(None, prompt, max_tokens=12, temperature=0, stop_strings=[stop])])[0]["sequences"][0]
    assert stop in text
    assert seq["tokens"] == free[:first_hit] and seq["stop_reason"] == "stop"


def test_seeded_rows_with_different_filters_do_not_depend_on_the_batch(engine):
    """Batched filtering: rows with other temperatures / top-k / top-p (and greedy rows) in the same batch
    must not change a seeded row's draws."""
    prompt = random_tokens(5, 21)
    mine = dict(max_tokens=10, seed=7, temperature=0.8, top_k=50, top_p=0.9)
    alone = engine.sample([request("a", prompt, n=2, **mine)])[0]
    crowded = engine.sample([
        request("b", random_tokens(8, 22), n=2, max_tokens=10, seed=3, temperature=1.3),
        request(None, random_tokens(4, 23), max_tokens=6, temperature=0),
        request("a", prompt, n=2, **mine),
        request("a", random_tokens(6, 24), max_tokens=10, seed=4, top_p=0.5),
        request("b", random_tokens(3, 25), max_tokens=3, seed=5, top_k=3),
    ])[2]
    assert [s["tokens"] for s in alone["sequences"]] == [s["tokens"] for s in crowded["sequences"]]


def test_chooser_draws_follow_the_filtered_distribution():
    """The batched Gumbel-max draw against the exact filtered softmax, on a tiny vocabulary."""
    from lathe_worker.sampler import _Chooser

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    cases = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.5), SamplingParams(top_k=3),
             SamplingParams(top_p=0.8), SamplingParams(temperature=2.0, top_k=4, top_p=0.9)]
    rows = logits.expand(len(cases), -1).contiguous()
    gens = [torch.Generator().manual_seed(i) for i in range(len(cases))]
    choose = _Chooser(cases, gens, vocab=6, device=torch.device("cpu"))
    n = 4000
    counts = torch.zeros(len(cases), 6)
    for _ in range(n):
        tokens, lps = choose(rows)
        counts[torch.arange(len(cases)), tokens] += 1
    torch.testing.assert_close(lps, torch.log_softmax(rows, -1).gather(1, tokens[:, None])[:, 0])
    for i, p in enumerate(cases):
        z = logits[0] / p.temperature
        if p.top_k > 0:
            z = z.masked_fill(z < z.topk(p.top_k).values[-1], float("-inf"))
        probs = torch.softmax(z, -1)
        if p.top_p < 1:
            order = probs.argsort(descending=True)
            before = probs[order].cumsum(0) - probs[order]
            keep = torch.zeros(6, dtype=torch.bool)
            keep[order[before < p.top_p]] = True
            probs = torch.where(keep, probs, torch.zeros_like(probs))
            probs /= probs.sum()
        freq = counts[i] / n
        assert (freq[probs == 0] == 0).all(), (i, freq, probs)
        assert float((freq - probs).abs().max()) < 0.03, (i, freq, probs)
