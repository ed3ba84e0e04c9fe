"""Sampling as Tinker SDKs newer than 0.25 use it (docs/protocol.md §2, §5): every field of the
newest SampleRequest, the sampling extras in the protobuf result, the per-session completion poller
(retrieve_futures), join_sampling_session and cancel_future, against a real `lathe serve`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wire import RequestFailed, WireClient, decode_sample, pb

MODEL = "lathe/tiny-qwen3"
VOCAB = 151936
PROMPT = [785, 3974, 13876, 38835, 34208, 916]  # 6 tokens: 5 scored positions
NEWER_SDK = "0.32.0"


def client(server, key_index: int = 0) -> WireClient:
    c = WireClient(server.url, server.keys[key_index])
    c.start()
    return c


def close(a: float, b: float) -> bool:
    # Relative to magnitude; float32 passes of different batch shapes (prefill vs decode) differ slightly.
    return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6)


def sample_body(sampler: str, seq_id: int, **fields) -> dict:
    """An asample body as SamplingClient._send_asample_request builds it (0.32: exclude_none, defaults kept)."""
    body = {
        "num_samples": 1, "prompt": {"chunks": [{"tokens": PROMPT, "type": "encoded_text"}]},
        "sampling_params": {"max_tokens": 3, "temperature": 0.0, "top_k": -1, "top_p": 1.0, "seed": 5},
        "sampling_session_id": sampler, "seq_id": seq_id, "prompt_logprobs": False, "topk_prompt_logprobs": 0,
        "topk_sample_logprobs": 0, "prompt_alt_tokens_k": 0, "record_stability_info": False, "type": "sample",
    }
    body.update(fields)
    return body


def submit(c: WireClient, body: dict) -> dict:
    future = c.ok(c.post("asample", body, headers={"X-Tinker-Sampling-Backpressure": "1"}))
    assert len(future["sample_sequence_ids"]) == body["num_samples"], future
    return future


def error_of(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()["error"]


def test_client_config_advertises_the_newer_sampling_endpoints(server):
    c = WireClient(server.url, server.keys[0])
    config = c.ok(c.post("client/config", {"sdk_version": NEWER_SDK}))
    assert config["sample_use_retrieve_futures"] is True and config["sample_join_sampling_session"] is True
    dynamic = c.ok(c.post("client/dynamic_config", {"sdk_version": NEWER_SDK}))
    assert dynamic["sample_cancel_enabled"] is True and dynamic["sample_cancel_max_batch_size"] >= 1


def test_every_field_of_the_newest_sample_request_is_accepted_and_sequence_ids_are_unique(server):
    c = client(server)
    sampler = c.sampler(base_model=MODEL)
    targets = {"data": [-1] * 5 + [PROMPT[i + 1] for i in range(5)], "dtype": "int64", "shape": [5, 2]}
    body = sample_body(sampler, 0, num_samples=3, prompt_logprobs=True, topk_prompt_logprobs=2, topk_sample_logprobs=2,
                       target_prompt_logprobs=targets, prompt_alt_tokens_k=2, record_stability_info=True,
                       prompt_logprobs_last_n=5, base_model=None, model_path=None, field_from_a_future_sdk={"x": [1]})
    body["sampling_params"]["stop"] = [151645]
    first = submit(c, body)
    second = submit(c, sample_body(sampler, 1, num_samples=2))
    ids = first["sample_sequence_ids"] + second["sample_sequence_ids"]
    assert len(set(ids)) == 5 and all(isinstance(i, str) and i for i in ids)
    result = c.retrieve(first["request_id"], "Sample", proto=True)
    assert len(result["sequences"]) == 3 and all(len(s["topk_logprobs"]) == len(s["tokens"]) for s in result["sequences"])
    assert result["target_prompt_logprobs"]["shape"] == [5, 2]
    assert result["prompt_alt_tokens"]["tokens"]["shape"] == [5, 2]


def test_sampling_extras_agree_with_the_plain_logprobs(server):
    c = client(server)
    sampler = c.sampler(base_model=MODEL)
    plain = c.retrieve(submit(c, sample_body(sampler, 0, prompt_logprobs=True, topk_prompt_logprobs=3))["request_id"], "Sample", proto=True)
    prompt_lps, topk = plain["prompt_logprobs"], plain["topk_prompt_logprobs"]
    # Row 0 names nothing (rows before the first named id are not scored); column 0 is the real next
    # token, column 1 the top-1 alternative at position 3 only.
    alt_id = topk[3][0][0]
    dense = [[-1, -1]] + [[PROMPT[i + 1], alt_id if i == 2 else -1] for i in range(1, 5)]
    targets = {"data": [v for row in dense for v in row], "dtype": "int64", "shape": [5, 2]}
    body = sample_body(sampler, 1, prompt_logprobs=True, topk_sample_logprobs=3, prompt_alt_tokens_k=4, target_prompt_logprobs=targets)
    extras = c.retrieve(submit(c, body)["request_id"], "Sample", proto=True)

    target = extras["target_prompt_logprobs"]
    assert target["dtype"] == pb.DTYPE_FLOAT32 and target["shape"] == [5, 2] and "dense" in target
    grid = target["dense"]
    assert np.isnan(grid[0]).all()
    for i in range(1, 5):
        assert close(float(grid[i, 0]), prompt_lps[i + 1]), (i, grid[i, 0], prompt_lps[i + 1])
        if i == 2:
            assert close(float(grid[i, 1]), topk[3][0][1])
        else:
            assert np.isnan(grid[i, 1])

    # Greedy (temperature 0): every draw is the top-1 token, with its logprob; so is every sampled token.
    alt = extras["prompt_alt_tokens"]
    assert alt["tokens"]["dtype"] == pb.DTYPE_INT64 and alt["tokens"]["shape"] == [5, 4]
    assert alt["logprobs"]["dtype"] == pb.DTYPE_FLOAT32 and alt["logprobs"]["shape"] == [5, 4]
    for i in range(5):
        best_id, best_lp = topk[i + 1][0]
        assert alt["tokens"]["dense"][i].tolist() == [best_id] * 4
        assert all(close(float(v), best_lp) for v in alt["logprobs"]["dense"][i])
    seq = extras["sequences"][0]
    assert seq["tokens"] == plain["sequences"][0]["tokens"]
    assert len(seq["topk_logprobs"]) == len(seq["tokens"]) == 3
    for token, logprob, row in zip(seq["tokens"], seq["logprobs"], seq["topk_logprobs"]):
        assert len(row) == 3 and row[0][0] == token and close(row[0][1], logprob)
        assert row[0][1] >= row[1][1] >= row[2][1]


def test_prompt_logprobs_last_n_scores_only_the_tail(server):
    """`prompt_logprobs_last_n` (our reading of an unconfirmed key, docs/protocol.md §11): only the
    last n prompt positions are scored, with the same values as a full pass; the rest are null."""
    c = client(server)
    sampler = c.sampler(base_model=MODEL)
    full = c.retrieve(submit(c, sample_body(sampler, 0, prompt_logprobs=True))["request_id"], "Sample", proto=True)["prompt_logprobs"]
    tail = c.retrieve(submit(c, sample_body(sampler, 1, prompt_logprobs=True, prompt_logprobs_last_n=2))["request_id"], "Sample", proto=True)["prompt_logprobs"]
    assert len(tail) == len(full) == len(PROMPT)
    assert all(v is None for v in tail[:-2]), tail
    for got, want in zip(tail[-2:], full[-2:]):
        assert close(got, want), (got, want)


def test_sparse_target_prompt_logprobs_are_answered_in_the_same_csr_layout(server):
    c = client(server)
    sampler = c.sampler(base_model=MODEL)
    plain = c.retrieve(submit(c, sample_body(sampler, 0, prompt_logprobs=True))["request_id"], "Sample", proto=True)["prompt_logprobs"]
    # Positions 2 and 4 ask for the real next token (in column 2 and column 0 of K = 3); the rest asks nothing.
    crow, col = [0, 0, 1, 1, 2, 2], [2, 0]
    targets = {"data": [PROMPT[2], PROMPT[4]], "dtype": "int64", "shape": [5, 3], "sparse_crow_indices": crow, "sparse_col_indices": col}
    future = submit(c, sample_body(sampler, 1, target_prompt_logprobs=targets))
    result = c.retrieve(future["request_id"], "Sample", proto=True)["target_prompt_logprobs"]
    assert result["dtype"] == pb.DTYPE_FLOAT32 and result["shape"] == [5, 3]
    assert result["crow"] == crow and result["col"] == col
    assert close(float(result["values"][0]), plain[2]) and close(float(result["values"][1]), plain[4])
    # The JSON form (clients that do not ask for protobuf) carries the same layout.
    as_json = c.ok(c.post("retrieve_future", {"request_id": future["request_id"], "allow_metadata_only": True}))["target_prompt_logprobs"]
    assert as_json["sparse_crow_indices"] == crow and as_json["sparse_col_indices"] == col and as_json["dtype"] == "float32"
    assert close(as_json["data"][0], plain[2])


def test_sampling_extras_that_cannot_be_served_are_refused_at_submit(server):
    c = client(server)
    sampler = c.sampler(base_model=MODEL)
    bad_rows = {"data": [5, 6], "dtype": "int64", "shape": [2, 1]}
    assert "target_prompt_logprobs" in error_of(c.post("asample", sample_body(sampler, 0, target_prompt_logprobs=bad_rows)), 400)["message"]
    out_of_vocab = {"data": [VOCAB] * 5, "dtype": "int64", "shape": [5, 1]}
    assert "vocabulary" in error_of(c.post("asample", sample_body(sampler, 1, target_prompt_logprobs=out_of_vocab)), 400)["message"]
    assert "prompt_alt_tokens_k" in error_of(c.post("asample", sample_body(sampler, 2, prompt_alt_tokens_k=101)), 400)["message"]
    assert "topk_sample_logprobs" in error_of(c.post("asample", sample_body(sampler, 3, topk_sample_logprobs=-1)), 400)["message"]


def poll(c: WireClient, sampler: str, cursor: int, clone: int = 0, **extra):
    body = {"target": {"type": "sampling_session", "sampling_session_id": sampler, "cloned_sampler_id": clone}, "prev_cursor": cursor, **extra}
    return c.post("retrieve_futures", body, timeout=45)


def test_retrieve_futures_reports_each_clients_completions_as_the_session_poller_expects(server):
    c = client(server)
    sampler = c.sampler(base_model=MODEL)
    submitted = [submit(c, sample_body(sampler, n))["request_id"] for n in range(3)]
    # SessionFuturesPoller: start at cursor 0, keep the returned cursor, collect completions.
    cursor, seen = 0, {}
    while set(submitted) - set(seen):
        answer = c.ok(poll(c, sampler, cursor))
        assert isinstance(answer["cursor"], int)
        cursor = answer["cursor"]
        for completion in answer["completions"]:
            assert completion["state"] in ("finished", "failed")
            seen[completion["request_id"]] = completion["state"]
    assert all(seen[r] == "finished" for r in submitted)
    # The payload still comes from retrieve_future.
    assert all(len(c.retrieve(r, "Sample", proto=True)["sequences"]) == 1 for r in submitted)

    # A rebuilt (unpickled) SamplingClient joins and numbers its samples from 1e9 × client_counter.
    joined = c.ok(c.post("join_sampling_session", {"sampling_session_id": sampler, "type": "join_sampling_session"}))
    counter = joined["client_counter"]
    assert joined["type"] == "join_sampling_session" and counter >= 1
    again = c.ok(c.post("join_sampling_session", {"sampling_session_id": sampler, "type": "join_sampling_session"}))["client_counter"]
    assert again != counter
    clone_request = submit(c, sample_body(sampler, 1_000_000_000 * counter))["request_id"]
    clone_cursor, clone_seen = 0, set()
    while clone_request not in clone_seen:
        answer = c.ok(poll(c, sampler, clone_cursor, clone=counter))
        clone_cursor = answer["cursor"]
        clone_seen |= {x["request_id"] for x in answer["completions"]}
    assert clone_seen == {clone_request}  # only this clone's samples
    # The original client's poller, at its cursor, hears nothing of the clone's sample.
    assert c.ok(poll(c, sampler, cursor, timeout=0.2))["completions"] == []

    # Bad input names the field; another key's sampling session is a 404.
    assert "prev_cursor" in error_of(poll(c, sampler, -5), 400)["message"]
    wrong_type = c.post("retrieve_futures", {"target": {"type": "model", "sampling_session_id": sampler}, "prev_cursor": 0})
    assert "target" in error_of(wrong_type, 400)["message"]
    bob = client(server, 1)
    error_of(poll(bob, sampler, 0), 404)
    error_of(bob.post("join_sampling_session", {"sampling_session_id": sampler, "type": "join_sampling_session"}), 404)
    error_of(c.post("join_sampling_session", {"sampling_session_id": "nope:sample:0", "type": "join_sampling_session"}), 404)


def test_cancel_future_drops_a_queued_sample_and_leaves_a_running_one(server):
    c = client(server)
    sampler = c.sampler(base_model=MODEL)
    # A long sample occupies the worker; the next one waits in the queue behind it.
    running = submit(c, sample_body(sampler, 0, sampling_params={"max_tokens": 1200, "temperature": 0.0, "top_k": -1, "top_p": 1.0}))["request_id"]
    queued = submit(c, sample_body(sampler, 1))["request_id"]
    assert c.ok(c.post("cancel_future", {"request_id": queued}))["cancelled"] is True
    with pytest.raises(RequestFailed) as failure:
        c.retrieve(queued, "Sample", proto=True)
    assert failure.value.category == "user" and "cancelled" in str(failure.value)
    assert c.ok(c.post("cancel_future", {"request_id": running}))["cancelled"] is False
    assert len(c.retrieve(running, "Sample", proto=True)["sequences"][0]["tokens"]) > 0
    # The session poller reports the cancelled sample as failed.
    states = {x["request_id"]: x["state"] for x in c.ok(poll(c, sampler, 0))["completions"]}
    assert states == {queued: "failed", running: "finished"}
    error_of(c.post("cancel_future", {"request_id": "req_no_such_future"}), 404)
    error_of(client(server, 1).post("cancel_future", {"request_id": running}), 404)
    assert "request_id" in error_of(c.post("cancel_future", {}), 400)["message"]
