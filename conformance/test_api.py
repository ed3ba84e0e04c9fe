"""The Tinker wire protocol, endpoint by endpoint, against a real `lathe serve` with real workers."""

from __future__ import annotations

import io
import tarfile
import threading
import time

import httpx
import numpy as np
import pytest
import zstandard

from conftest import ALIAS
from wire import SDK_VERSION, RequestFailed, WireClient, datum_proto, pb, sdk_headers, sft_datum

MODEL = "lathe/tiny-qwen3"
VOCAB = 151936
CONTEXT = 2048
# A fixed "dataset": a few token sequences of the Qwen3 vocabulary.
DATASET = [[9707, 1879, 11, 1246, 525, 498, 30], [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13], [40, 1075, 311, 3270, 2038, 13]]


def client(server, key_index: int = 0, **kw) -> WireClient:
    c = WireClient(server.url, server.keys[key_index], **kw)
    c.start()
    return c


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body["error"]) >= {"type", "message", "category"}, body
    return body["error"]


def test_start_up_sequence_and_service_endpoints(server):
    c = WireClient(server.url, server.keys[0])
    config = c.ok(c.post("client/config", {"sdk_version": SDK_VERSION}))
    assert config["pjwt_auth_enabled"] is False and config["proto_write_fwdbwd"] is True
    # Every flag of the SDK's ClientConfigResponse is set; the SDK uses plain httpx, not pyqwest.
    assert config["use_pyqwest_transport"] is False and config["sample_use_retrieve_futures"] is True
    assert config["proto_compress_fwdbwd"] is True and config["create_model_via_load_weights"] is False
    assert {"sample_dispatch_bytes_semaphore_size", "inflight_response_bytes_semaphore_size", "fwdbwd_dispatch_bytes_semaphore_size",
            "billing_exception_max_pause_duration_sec", "sample_no_retries", "sample_enable_stuck_detection", "sample_max_concurrent_requests",
            "credential_default_source", "parallel_fwdbwd_chunks", "fwdbwd_max_chunk_len", "fwdbwd_max_chunk_bytes_count"} <= set(config)
    assert c.ok(c.post("client/dynamic_config", {"sdk_version": SDK_VERSION}))["refresh_interval_sec"] >= 10
    session = c.ok(c.post("create_session", {"tags": ["t"], "user_metadata": {"a": 1}, "sdk_version": SDK_VERSION, "type": "create_session"}))
    assert session["type"] == "create_session" and session["session_id"]
    beat = c.ok(c.post("session_heartbeat", {"session_id": session["session_id"], "type": "session_heartbeat"}))
    assert beat == {"type": "session_heartbeat"}
    caps = c.ok(c.http.get("api/v1/get_server_capabilities"))
    names = {m["model_name"]: m for m in caps["supported_models"]}
    assert names[MODEL]["max_context_length"] == CONTEXT and "lathe/tiny-llama3" in names
    assert names[ALIAS]["max_context_length"] == CONTEXT  # lathe serve --model-alias Qwen/Qwen3-8B=lathe/tiny-qwen3
    telemetry = {"events": [{"event": "SESSION_START", "event_id": "e", "event_session_index": 0, "severity": "INFO", "timestamp": "2026-11-29T00:00:00Z"}],
                 "platform": "linux", "sdk_version": SDK_VERSION, "session_id": session["session_id"], "process_uuid": "p"}
    assert c.ok(c.post("telemetry", telemetry)) == {"status": "accepted"}
    assert httpx.get(f"{server.url}/api/v1/healthz").json() == {"status": "ok"}
    # finish (no body, as ServiceClient.close() sends it) → later heartbeats are 410 (SDK >= 0.26 stops its loop on it)
    assert c.ok(c.bodyless("POST", f"sessions/{session['session_id']}/finish"))["session_id"] == session["session_id"]
    error_of(c.post("session_heartbeat", {"session_id": session["session_id"], "type": "session_heartbeat"}), 410)


def test_authentication_and_ownership(server):
    assert error_of(httpx.post(f"{server.url}/api/v1/create_session", json={}), 401)["category"] == "user"
    wrong = httpx.post(f"{server.url}/api/v1/create_session", json={}, headers={"X-API-Key": "tml-not-a-key"})
    error_of(wrong, 401)
    alice, bob = client(server, 0), client(server, 1)
    run = alice.create_model(MODEL, rank=4)
    request_id = run.submit_forward_backward([sft_datum(DATASET[0])], forward_only=True)
    # Bob sees none of Alice's things: 404 for ids, 410 for futures, as if they did not exist.
    error_of(bob.post("get_info", {"model_id": run.model_id, "type": "get_info"}), 404)
    error_of(bob.post("retrieve_future", {"request_id": request_id, "allow_metadata_only": True}), 410)
    error_of(bob.http.get(f"api/v1/training_runs/{run.model_id}"), 404)
    error_of(bob.post("session_heartbeat", {"session_id": alice.session_id, "type": "session_heartbeat"}), 404)
    assert all(r["training_run_id"] != run.model_id for r in bob.ok(bob.http.get("api/v1/training_runs"))["training_runs"])
    forged = pb.ForwardBackwardRequest(model_id=run.model_id, seq_id=run.seq + 1, loss_fn="cross_entropy")
    forged.data.append(sft_datum(DATASET[0]))
    error_of(bob.http.post("api/v1/forward_backward", content=forged.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}), 404)
    alice.retrieve(request_id, "Forward", proto=True)


def test_keys_list_and_revoke_from_another_process(server):
    key = server.create_key("carol")
    c = WireClient(server.url, key)
    c.start()
    listed = server.keys_command("list")
    assert "carol" in listed and key[:12] in listed and key not in listed
    assert server.keys_command("revoke", key[:12]).strip() == f"revoked carol ({key[:12]})"
    # The server caches a key for at most a second: it is refused within that.
    deadline = time.monotonic() + 10
    while (status := c.http.get("api/v1/sessions").status_code) == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 401
    assert [line.split()[-1] != "-" for line in server.keys_command("list").splitlines() if line.startswith("carol ")] == [True]


def test_sft_end_to_end_with_checkpoints_sampling_and_exact_resume(server):
    c = client(server, compress=True)  # zstd-compressed protobuf bodies, as with proto_compress_fwdbwd
    run = c.create_model(MODEL, rank=8, seed=0)
    info = c.ok(c.post("get_info", {"model_id": run.model_id, "type": "get_info"}))
    assert info["model_data"]["model_name"] == MODEL and info["lora_rank"] == 8 and info["is_lora"] is True
    batch = [sft_datum(seq) for seq in DATASET]

    def step(r) -> float:
        out = r.forward_backward(batch)
        r.optim_step(learning_rate=5e-3)
        assert [o["logprobs"].shape for o in out["loss_fn_outputs"]] == [(len(s) - 1,) for s in DATASET]
        return out["metrics"]["loss:sum"]

    losses = [step(run) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0], losses
    state = run.save_state("step20")
    assert state == f"tinker://{run.model_id}/weights/step20"
    expected_next = [step(run) for _ in range(3)]  # the uninterrupted run

    # Sampling from named sampler weights.
    saved = run.save_weights_for_sampler("final")
    sampler = c.sampler(model_path=saved["path"])
    prompt = DATASET[0][:3]
    greedy = c.sample(sampler, prompt, seq_id=0, max_tokens=4, temperature=0)["sequences"][0]
    assert len(greedy["tokens"]) == 4 and len(greedy["logprobs"]) == 4 and greedy["stop_reason"] == "length"
    # Greedy decoding of the trained adapter reproduces its training data.
    assert greedy["tokens"] == DATASET[0][3:7]
    seeded = [c.sample(sampler, prompt, seq_id=s, num_samples=2, max_tokens=5, seed=7)["sequences"] for s in (1, 2)]
    assert seeded[0] == seeded[1]
    # Unnamed weights give a sampling session directly (save_weights_and_get_sampling_client).
    ephemeral = run.save_weights_for_sampler()
    assert ephemeral["sampling_session_id"].startswith(c.session_id)
    assert c.sample(ephemeral["sampling_session_id"], prompt, seq_id=0, max_tokens=2, temperature=0)["sequences"][0]["tokens"] == DATASET[0][3:5]

    # Resume from step20 with optimizer state in a new training client: the legacy SDK flow.
    weights_info = c.ok(c.post("weights_info", {"tinker_path": state}))
    assert weights_info == {"base_model": MODEL, "is_lora": True, "lora_rank": 8, "train_unembed": True, "train_mlp": True, "train_attn": True,
                            "optimizer_config": {"type": "adamw"}}
    resumed = c.create_model(MODEL, rank=weights_info["lora_rank"])
    resumed.load_state(state, optimizer=True)
    continued = [step(resumed) for _ in range(3)]
    assert continued == pytest.approx(expected_next, rel=1e-5)


def test_ordering_buffers_out_of_order_seq_ids_and_dedupes_retries(server):
    c = client(server)
    run = c.create_model(MODEL, rank=4)
    # The SDK sends a split batch's first chunk last: seq 2 arrives before seq 1.
    second = pb.ForwardBackwardRequest(model_id=run.model_id, seq_id=2, loss_fn="cross_entropy")
    second.data.append(sft_datum(DATASET[1]))
    first = pb.ForwardBackwardRequest(model_id=run.model_id, seq_id=1, loss_fn="cross_entropy")
    first.data.append(sft_datum(DATASET[0]))
    headers = {"Content-Type": "application/x-protobuf"}
    id2 = c.ok(c.http.post("api/v1/forward_backward", content=second.SerializeToString(), headers=headers))["request_id"]
    id1 = c.ok(c.http.post("api/v1/forward_backward", content=first.SerializeToString(), headers=headers))["request_id"]
    # A retried submit of the same (model_id, seq_id) is the same future.
    again = c.ok(c.http.post("api/v1/forward_backward", content=first.SerializeToString(), headers=headers))["request_id"]
    assert again == id1 and id1 != id2
    out1, out2 = c.retrieve(id1, "ForwardBackward", proto=True), c.retrieve(id2, "ForwardBackward", proto=True)
    run.seq = 2
    step = run.optim_step(learning_rate=1e-2)
    assert "metrics" in step
    # Gradients accumulated over both requests: the same step as one batch of both datums.
    ref = c.create_model(MODEL, rank=4)
    both = ref.forward_backward([sft_datum(DATASET[0]), sft_datum(DATASET[1])])
    assert both["metrics"]["loss:sum"] == pytest.approx(out1["metrics"]["loss:sum"] + out2["metrics"]["loss:sum"], rel=1e-5)
    ref.optim_step(learning_rate=1e-2)
    probe = [sft_datum(DATASET[2])]
    assert run.forward_backward(probe, forward_only=True)["metrics"]["loss:sum"] == pytest.approx(
        ref.forward_backward(probe, forward_only=True)["metrics"]["loss:sum"], rel=1e-5)


def test_a_request_refused_at_submit_takes_its_seq_id_so_the_run_goes_on(server):
    # The SDK uses a seq_id up whatever the answer: a refused request must not leave a gap.
    c = client(server)
    run = c.create_model(MODEL, rank=4)
    headers = {"Content-Type": "application/x-protobuf"}

    def submit(seq_id: int, datum) -> httpx.Response:
        req = pb.ForwardBackwardRequest(model_id=run.model_id, seq_id=seq_id, loss_fn="cross_entropy", forward_only=True)
        req.data.append(datum)
        return c.http.post("api/v1/forward_backward", content=req.SerializeToString(), headers=headers)

    # A split batch: chunk 2 goes first and waits for chunk 1, which is refused.
    second = c.ok(submit(2, sft_datum(DATASET[1])))["request_id"]
    refused = error_of(submit(1, datum_proto([1, VOCAB + 5], [1, 2], [1, 1])), 400)
    assert "vocabulary" in refused["message"] and refused["category"] == "user"
    assert c.retrieve(second, "Forward", proto=True)["metrics"]["loss:sum"] > 0
    # A retry of the refused seq_id gets the same refusal, not a future that never finishes.
    assert error_of(submit(1, datum_proto([1, VOCAB + 5], [1, 2], [1, 1])), 400) == refused
    assert error_of(submit(1, sft_datum(DATASET[0])), 400) == refused
    # Refusals of other requests take their place too, and the run trains on.
    run.seq = 2
    bad_step = c.post("optim_step", {"adam_params": {"learning_rate": -1.0}, "model_id": run.model_id, "seq_id": run.next_seq(), "type": "optim_step"})
    assert "learning_rate" in error_of(bad_step, 400)["message"]
    missing = c.post("load_weights", {"model_id": run.model_id, "seq_id": run.next_seq(), "path": f"tinker://{run.model_id}/weights/none", "optimizer": False, "type": "load_weights"})
    error_of(missing, 404)
    assert run.forward_backward([sft_datum(DATASET[0])])["metrics"]["loss:sum"] > 0
    assert "metrics" in run.optim_step()


def test_seq_ids_must_be_safe_non_negative_integers(server):
    c = client(server)
    run = c.create_model(MODEL, rank=4)
    for bad in [1e300, 2**53 + 1, 2**53, -1, 1.5]:
        body = {"adam_params": {"learning_rate": 1e-4}, "model_id": run.model_id, "seq_id": bad, "type": "optim_step"}
        assert "seq_id" in error_of(c.post("optim_step", body), 400)["message"]
        create = {"session_id": c.session_id, "model_seq_id": bad, "base_model": MODEL, "lora_config": {"rank": 4}, "type": "create_model"}
        assert "model_seq_id" in error_of(c.post("create_model", create), 400)["message"]
    # None of them took a place: the run goes on at seq_id 1.
    assert "metrics" in run.optim_step()


def test_json_forward_backward_for_older_sdks(server):
    c = client(server)
    run = c.create_model(MODEL, rank=4)
    seq = DATASET[0]
    body = {"forward_backward_input": {"data": [{"model_input": {"chunks": [{"type": "encoded_text", "tokens": seq[:-1]}]},
                                                 "loss_fn_inputs": {"target_tokens": {"data": seq[1:], "dtype": "int64", "shape": [len(seq) - 1]},
                                                                    "weights": [1.0] * (len(seq) - 1)}}],
                                       "loss_fn": "cross_entropy"}, "model_id": run.model_id, "seq_id": 1}
    future = c.ok(c.post("forward_backward", body))
    result = c.retrieve(future["request_id"], "ForwardBackward", proto=False)
    assert result["loss_fn_output_type"] == "ArrayRecord"
    logprobs = result["loss_fn_outputs"][0]["logprobs"]
    assert logprobs["dtype"] == "float32" and logprobs["shape"] == [len(seq) - 1] and len(logprobs["data"]) == len(seq) - 1
    assert result["metrics"]["loss:sum"] == pytest.approx(-sum(logprobs["data"]), rel=1e-5)


def test_bad_input_gets_clear_4xx_errors(server):
    c = client(server)
    bad_rank = c.post("create_model", {"session_id": c.session_id, "model_seq_id": 99, "base_model": MODEL, "lora_config": {"rank": 12}, "type": "create_model"})
    assert error_of(bad_rank, 400)["message"] == "lora_config.rank must be a power of 2"
    no_targets = c.post("create_model", {"session_id": c.session_id, "model_seq_id": 98, "base_model": MODEL,
                                         "lora_config": {"rank": 4, "train_unembed": False, "train_mlp": False, "train_attn": False}, "type": "create_model"})
    assert "At least one of train_unembed" in error_of(no_targets, 400)["message"]
    unknown = c.post("create_model", {"session_id": c.session_id, "model_seq_id": 97, "base_model": "Qwen/Qwen3-999B", "lora_config": {"rank": 4}, "type": "create_model"})
    assert "Qwen/Qwen3-999B" in error_of(unknown, 400)["message"]

    run = c.create_model(MODEL, rank=4)
    headers = {"Content-Type": "application/x-protobuf"}

    def fwdbwd(datum, loss_fn="cross_entropy") -> httpx.Response:
        # Each refused request uses up its seq_id, as with the SDK: the server logs it in that place.
        req = pb.ForwardBackwardRequest(model_id=run.model_id, seq_id=run.next_seq(), loss_fn=loss_fn)
        req.data.append(datum)
        return c.http.post("api/v1/forward_backward", content=req.SerializeToString(), headers=headers)

    assert "vocabulary" in error_of(fwdbwd(datum_proto([1, VOCAB + 5], [1, 2], [1, 1])), 400)["message"]
    assert "non-finite" in error_of(fwdbwd(datum_proto([1, 2], [1, 2], [1.0, float("nan")])), 400)["message"]
    assert "weights" in error_of(fwdbwd(datum_proto([1, 2, 3], [1, 2, 3], [1.0, 1.0])), 400)["message"]
    assert "kl_magic" in error_of(fwdbwd(sft_datum(DATASET[0]), loss_fn="kl_magic"), 400)["message"]
    assert "context length" in error_of(fwdbwd(sft_datum(list(range(CONTEXT + 2)))), 400)["message"]
    error_of(c.http.post("api/v1/forward_backward", content=b"\xff\xff\xff", headers=headers), 400)
    sampler = c.sampler(base_model=MODEL)
    too_long = c.post("asample", {"num_samples": 1, "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1] * 2000}]},
                                  "sampling_params": {"max_tokens": 100}, "sampling_session_id": sampler, "seq_id": 0, "type": "sample"})
    assert error_of(too_long, 400)["message"] == "Prompt length plus max_tokens exceeds the model's context window: 2000 + 100 > 2048"
    error_of(c.post("retrieve_future", {"request_id": "no-such-future", "allow_metadata_only": True}), 410)
    big = c.http.post("api/v1/telemetry", content=b"{" + b" " * (300 * 1024 * 1024) + b"}", headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    # A zstd bomb (a few KiB that would decode to 65 MiB) is refused, naming the decoded-size limit.
    bomb = zstandard.ZstdCompressor().compress(bytes(65 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    refused = error_of(c.http.post("api/v1/forward_backward", content=bomb, headers={**headers, "Content-Encoding": "zstd"}), 413)
    assert str(64 * 1024 * 1024) in refused["message"]
    # JSON nested 10,000 levels deep is a 400 naming the field.
    nested = "1"
    for _ in range(10_000):
        nested = '{"a":' + nested + "}"
    deep = c.http.post("api/v1/create_session", content=f'{{"tags":[],"sdk_version":"{SDK_VERSION}","user_metadata":{nested}}}')
    assert error_of(deep, 400)["message"].startswith("user_metadata.a.a")
    # After all that, the run still trains.
    assert c.retrieve(run.submit_forward_backward([sft_datum(DATASET[0])]), "ForwardBackward", proto=True)["metrics"]["loss:sum"] > 0


def test_async_failures_arrive_through_the_future(server):
    c = client(server)
    run = c.create_model(MODEL, rank=4)
    # Loading optimizer state from a sampler checkpoint is refused at submit...
    saved = run.save_weights_for_sampler("s")
    error_of(c.post("load_weights", {"model_id": run.model_id, "seq_id": run.next_seq(), "path": saved["path"], "optimizer": True, "type": "load_weights"}), 400)
    # ...and a worker-side user error (an RL loss given 2-D inputs) comes back as a RequestFailed with category user.
    bad = datum_proto([1, 2, 3], [1, 2, 3], [1, 1, 1], extra={"advantages": np.ones(3, np.float32), "logprobs": np.zeros((3, 2), np.float32)})
    with pytest.raises(RequestFailed) as failure:
        run.forward_backward([bad], loss_fn="importance_sampling")
    assert failure.value.category == "user"


def test_rest_runs_checkpoints_archive_and_sessions(server):
    c = client(server)
    run = c.create_model(MODEL, rank=4)
    run.forward_backward([sft_datum(DATASET[0])])
    run.optim_step()
    state = run.save_state("ckpt", ttl_seconds=3600)
    sampler_path = run.save_weights_for_sampler("for-sampling")["path"]
    got = c.ok(c.http.get(f"api/v1/training_runs/{run.model_id}"))
    assert got["training_run_id"] == run.model_id and got["base_model"] == MODEL and got["lora_rank"] == 4
    assert got["last_checkpoint"]["tinker_path"] == state and got["last_sampler_checkpoint"]["tinker_path"] == sampler_path
    listing = c.ok(c.http.get("api/v1/training_runs", params={"limit": 1, "offset": 0}))
    assert len(listing["training_runs"]) == 1 and listing["cursor"]["total_count"] >= 1
    checkpoints = c.ok(c.http.get(f"api/v1/training_runs/{run.model_id}/checkpoints"))["checkpoints"]
    ids = {ck["checkpoint_id"]: ck for ck in checkpoints}
    assert set(ids) == {"weights/ckpt", "sampler_weights/for-sampling"}
    assert ids["weights/ckpt"]["checkpoint_type"] == "training" and "expires_at" in ids["weights/ckpt"] and ids["weights/ckpt"]["size_bytes"] > 0

    archive = c.ok(c.http.get(f"api/v1/training_runs/{run.model_id}/checkpoints/sampler_weights/for-sampling/archive", headers={"Accept": "application/json"}))
    download = httpx.get(archive["url"], timeout=120)  # no API key: the signed URL is the authorisation
    assert download.status_code == 200, download.text
    with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
        assert set(tar.getnames()) == {"adapter_model.safetensors", "adapter_config.json"}
    assert httpx.get(archive["url"][:-3] + "xyz").status_code == 410  # tampered signature

    # Publish, unpublish and delete carry no body, with the SDK's Content-Type: application/json.
    base = f"training_runs/{run.model_id}/checkpoints/weights/ckpt"
    c.ok(c.bodyless("POST", f"{base}/publish"))
    c.ok(c.bodyless("POST", f"{base}/publish"))  # idempotent
    bob = client(server, 1)
    assert bob.ok(bob.post("weights_info", {"tinker_path": state}))["lora_rank"] == 4  # public: visible to others
    c.ok(c.bodyless("DELETE", f"{base}/publish"))
    error_of(bob.post("weights_info", {"tinker_path": state}), 404)
    assert c.http.put(f"api/v1/{base}/ttl", json={"ttl_seconds": None}).status_code == 200
    error_of(c.http.put(f"api/v1/{base}/ttl", json={"ttl_seconds": 0}), 400)
    c.ok(c.bodyless("DELETE", base))
    error_of(c.bodyless("DELETE", base), 404)
    assert {ck["checkpoint_id"] for ck in c.ok(c.http.get("api/v1/checkpoints"))["checkpoints"]} >= {"sampler_weights/for-sampling"}

    sessions = c.ok(c.http.get("api/v1/sessions"))["sessions"]
    assert c.session_id in sessions
    detail = c.ok(c.http.get(f"api/v1/sessions/{c.session_id}"))
    assert run.model_id in detail["training_run_ids"]
    sampler = c.sampler(model_path=sampler_path)
    assert c.ok(c.http.get(f"api/v1/samplers/{sampler}")) == {"sampler_id": sampler, "base_model": MODEL, "model_path": sampler_path}


def test_sampling_prompt_logprobs_and_concurrency(server):
    c = client(server)
    sampler = c.sampler(base_model=MODEL)
    prompt = DATASET[1][:6]
    # compute_logprobs: max_tokens=1 and prompt_logprobs
    result = c.sample(sampler, prompt, seq_id=0, max_tokens=1, prompt_logprobs=True, topk_prompt_logprobs=3)
    assert result["prompt_logprobs"][0] is None and len(result["prompt_logprobs"]) == len(prompt)
    assert result["topk_prompt_logprobs"][0] is None and all(len(row) == 3 for row in result["topk_prompt_logprobs"][1:])
    # Many concurrent samples from several threads all complete (batched by the server).
    results: list[dict] = []
    def worker(start: int) -> None:
        local = WireClient(server.url, server.keys[0])
        local.session_id = c.session_id
        for i in range(3):
            results.append(local.sample(sampler, prompt, seq_id=100 + start * 10 + i, max_tokens=3, seed=start))
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12 and all(len(r["sequences"][0]["tokens"]) == 3 for r in results)


def test_save_state_refuses_to_overwrite_unless_asked(server):
    c = client(server)
    run = c.create_model(MODEL, rank=4)
    first_seq = run.seq + 1
    path = run.save_state("same-name")
    body = {"model_id": run.model_id, "path": "same-name", "seq_id": first_seq, "overwrite": False, "type": "save_weights"}
    # A retry of the original save (same seq_id) is the original future...
    retried = c.ok(c.post("save_weights", body))["request_id"]
    assert c.retrieve(retried, "SaveWeights")["path"] == path
    # ...a new save under the same name is refused unless overwrite is set.
    refused = c.post("save_weights", {**body, "seq_id": run.next_seq()})
    assert error_of(refused, 400)["type"] == "already_exists"
    replaced = c.ok(c.post("save_weights", {**body, "seq_id": run.next_seq(), "overwrite": True}))
    assert c.retrieve(replaced["request_id"], "SaveWeights")["path"] == path
