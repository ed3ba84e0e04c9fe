"""Training, sessions and REST as Tinker SDKs newer than 0.25 use them (docs/protocol.md §3, §4, §6):
loss_fn_config_v2 and provenance spans, optimizer selection (AdamW / Dimuon), copy_weights,
save_weights_external with its signed URLs (loaded with `peft`), session finish and metadata,
checkpoint storage usage, and every field of the newest request bodies, against a real `lathe serve`."""

from __future__ import annotations

import json
import math
import uuid

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_api import error_of
from wire import Run, WireClient, datum_proto, pb, sft_datum

MODEL = "lathe/tiny-qwen3"
DATASET = [[9707, 1879, 11, 1246, 525, 498, 30], [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13]]
NEWER_SDK = "0.39.0"
PROTO = {"Content-Type": "application/x-protobuf"}


def client(server, key_index: int = 0, **session) -> WireClient:
    c = WireClient(server.url, server.keys[key_index])
    c.start()
    if session:  # a session with the newest create_session fields instead
        body = {"tags": ["conformance"], "user_metadata": {}, "sdk_version": NEWER_SDK, "type": "create_session", **session}
        c.session_id = c.ok(c.post("create_session", body))["session_id"]
    return c


def close(a: float, b: float, rel: float = 1e-5) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


def create_model(c: WireClient, rank: int = 4, optimizer: dict | None = None, **extra) -> Run:
    """create_model as SDK >= 0.29 sends it, with optimizer_config when given."""
    body = {"session_id": c.session_id, "model_seq_id": c.model_seq, "base_model": MODEL,
            "lora_config": {"rank": rank, "seed": 1, "train_unembed": True, "train_mlp": True, "train_attn": True}, "type": "create_model", **extra}
    if optimizer is not None:
        body["optimizer_config"] = optimizer
    c.model_seq += 1
    future = c.ok(c.post("create_model", body))
    return Run(c, c.retrieve(future["request_id"], "CreateModel")["model_id"])


def submit(run: Run, path: str, body: dict) -> httpx.Response:
    """A seq-numbered JSON request: the seq_id is used up whatever the answer (as the SDK does)."""
    return run.client.post(path, {"model_id": run.model_id, "seq_id": run.next_seq(), **body})


def result(run: Run, response: httpx.Response, request_type: str) -> dict:
    return run.client.retrieve(run.client.ok(response)["request_id"], request_type)


def dimuon_step(run: Run, learning_rate: float = 0.02, field: str = "optimizer_params", **params) -> dict:
    return result(run, submit(run, "optim_step", {field: {"type": "dimuon", "learning_rate": learning_rate, **params}, "type": "optim_step"}), "OptimStep")


def forward_loss(run: Run, data: list | None = None) -> float:
    return run.forward_backward(data or [sft_datum(s) for s in DATASET], forward_only=True)["metrics"]["loss:sum"]


def fwdbwd_request(run: Run, seq_id: int, datum, loss_fn: str, v2: dict, legacy: dict | None = None, forward_only: bool = True) -> bytes:
    """A ForwardBackwardRequest as SDK >= 0.26.2 builds it: the config in field 7, numbers also in field 5."""
    req = pb.ForwardBackwardRequest(model_id=run.model_id, seq_id=seq_id, loss_fn=loss_fn, forward_only=forward_only)
    req.data.append(datum)
    for k, v in v2.items():
        if isinstance(v, str):
            req.loss_fn_config_v2[k].text = v
        else:
            req.loss_fn_config_v2[k].number = v
    for k, v in (legacy or {}).items():
        req.loss_fn_config[k] = v
    return req.SerializeToString()


def dro_datum():
    """A DRO datum whose sampler logprobs differ from the learner's, so `beta` changes the loss."""
    seq = DATASET[0]
    n = len(seq) - 1
    d = datum_proto(seq[:-1], seq[1:], [1.0] * n, {"logprobs": np.full(n, -1.0, dtype=np.float32), "advantages": np.linspace(-1, 1, n).astype(np.float32)})
    del d.loss_fn_inputs["weights"]
    return d


def with_spans(d):
    """The datum with provenance spans (Datum fields 3 and 4), as a 0.27+ SDK may attach them."""
    n = len(d.model_input[0].encoded_text.tokens) // 4
    d.model_input_spans.add().prompt_tokens.CopyFrom(pb.PromptProvenanceSpan(sequence_id="S:sample:0:0:0", offset=0, length=2))
    d.model_input_spans.add().sampled_tokens.CopyFrom(pb.SampledProvenanceSpan(sequence_id="S:sample:0:0:0", offset=0, length=n - 2))
    d.loss_fn_input_spans.add().sampled_tokens.CopyFrom(pb.SampledProvenanceSpan(sequence_id="S:sample:0:0:1", offset=1, length=n))
    return d


# ---- loss_fn_config_v2 and provenance spans (§3.1) ----------------------------------------------

def test_loss_fn_config_v2_numbers_drive_the_loss_and_text_is_refused_in_its_seq_id_place(server):
    c = client(server)
    run = create_model(c)

    def loss(seq_id: int, v2: dict, legacy: dict | None = None, datum=None) -> float:
        body = fwdbwd_request(run, seq_id, datum or dro_datum(), "dro", v2, legacy)
        return c.retrieve(c.ok(c.http.post("api/v1/forward_backward", content=body, headers=PROTO))["request_id"], "Forward", proto=True)["metrics"]["loss:sum"]

    legacy_only = loss(1, {}, {"beta": 0.5})
    # Field 7 wins over field 5 (which the SDK fills with the same numbers; here it disagrees on purpose).
    v2 = loss(2, {"beta": 0.5}, {"beta": 9.0})
    default_beta = loss(3, {"beta": 0.05})
    assert close(v2, legacy_only) and not close(v2, default_beta)
    # Provenance spans are metadata: accepted and ignored.
    assert close(loss(4, {"beta": 0.5}, datum=with_spans(dro_datum())), legacy_only)

    # A text value: 400 naming the key, in its seq_id's place (a request after it does not wait for it).
    later = c.ok(c.http.post("api/v1/forward_backward", content=fwdbwd_request(run, 6, dro_datum(), "dro", {"beta": 0.5}), headers=PROTO))["request_id"]
    refused = error_of(c.http.post("api/v1/forward_backward", content=fwdbwd_request(run, 5, dro_datum(), "dro", {"beta": 0.5, "mode": "fast"}), headers=PROTO), 400)
    assert "loss_fn_config_v2['mode']" in refused["message"] and "text" in refused["message"] and refused["category"] == "user"
    assert close(c.retrieve(later, "Forward", proto=True)["metrics"]["loss:sum"], legacy_only)
    # The JSON form (older SDKs) names the key too.
    json_body = {"model_id": run.model_id, "seq_id": 7, "type": "forward",
                 "forward_input": {"loss_fn": "dro", "loss_fn_config": {"beta": "high"},
                                   "data": [{"model_input": {"chunks": [{"type": "encoded_text", "tokens": DATASET[0][:-1]}]},
                                             "loss_fn_inputs": {"target_tokens": {"data": DATASET[0][1:], "dtype": "int64", "shape": [6]}}}]}}
    assert "loss_fn_config['beta']" in error_of(c.post("forward", json_body), 400)["message"]


# ---- optimizers (§3.2, §3.3) ---------------------------------------------------------------------

def test_dimuon_runs_train_resume_and_refuse_the_wrong_step_family_at_submit(server):
    c = client(server)
    batch = [sft_datum(s) for s in DATASET]
    adam = create_model(c)
    dimuon = create_model(c, optimizer={"type": "dimuon"})
    before = forward_loss(dimuon, batch)
    for _ in range(3):
        dimuon.forward_backward(batch)
        assert "metrics" in dimuon_step(dimuon, damping=1e-4, rank_lr_correction_exponent=0.175, grad_clip_norm=0.0, beta1=0.9)
    trained = forward_loss(dimuon, batch)
    assert trained < before

    # The wrong family is a 400 naming the field, at submit, and takes its seq_id: the run goes on.
    wrong = error_of(submit(dimuon, "optim_step", {"adam_params": {"learning_rate": 1e-3}, "type": "optim_step"}), 400)
    assert wrong["message"].startswith("adam_params") and "dimuon" in wrong["message"] and wrong["type"] == "optimizer_mismatch"
    wrong = error_of(submit(adam, "optim_step", {"optimizer_params": {"type": "dimuon", "learning_rate": 0.02}, "type": "optim_step"}), 400)
    assert wrong["message"].startswith("optimizer_params") and "adamw" in wrong["message"]
    assert "learning_rate" in error_of(submit(dimuon, "optim_step", {"optimizer_params": {"type": "dimuon", "beta1": 0.5}}), 400)["message"]
    assert "beta1" in error_of(submit(dimuon, "optim_step", {"optimizer_params": {"type": "dimuon", "learning_rate": 0.1, "beta1": 1.0}}), 400)["message"]
    assert "exactly one" in error_of(submit(dimuon, "optim_step", {"type": "optim_step"}), 400)["message"]
    # The optim_params spelling (the SDK model's field name) takes either family, told apart by type.
    assert "metrics" in dimuon_step(dimuon, learning_rate=0.0, field="optim_params")
    assert "metrics" in result(adam, submit(adam, "optim_step", {"optim_params": {"learning_rate": 1e-3}, "type": "optim_step"}), "OptimStep")
    assert close(forward_loss(dimuon, batch), trained)  # learning rate 0: nothing moved

    # weights_info names the optimizer (default AdamW); a bad optimizer_config is a 400 naming it.
    state = result(dimuon, submit(dimuon, "save_weights", {"path": "dimuon-state", "type": "save_weights"}), "SaveWeights")["path"]
    adam_state = result(adam, submit(adam, "save_weights", {"path": "adam-state", "type": "save_weights"}), "SaveWeights")["path"]
    assert c.ok(c.post("weights_info", {"tinker_path": state}))["optimizer_config"] == {"type": "dimuon", "version": 1}
    assert c.ok(c.post("weights_info", {"tinker_path": adam_state}))["optimizer_config"] == {"type": "adamw"}
    body = {"session_id": c.session_id, "model_seq_id": 99, "base_model": MODEL, "lora_config": {"rank": 4}, "type": "create_model"}
    assert "optimizer_config.type" in error_of(c.post("create_model", {**body, "optimizer_config": {"type": "lion"}}), 400)["message"]
    assert "optimizer_config.version" in error_of(c.post("create_model", {**body, "optimizer_config": {"type": "dimuon", "version": 2}}), 400)["message"]

    # Exact resume of a Dimuon run: the same next steps as the original (momentum restored).
    resumed = create_model(c, optimizer={"type": "dimuon", "version": 1})
    result(resumed, submit(resumed, "load_weights", {"path": state, "optimizer": True, "optimizer_config": {"type": "dimuon", "version": 1}, "type": "load_weights"}), "LoadWeights")
    for run in (dimuon, resumed):
        run.forward_backward(batch)
        dimuon_step(run)
    assert close(forward_loss(resumed, batch), forward_loss(dimuon, batch))
    # Optimizer state of the other family, or another optimizer_config for the run, is refused at submit.
    assert error_of(submit(adam, "load_weights", {"path": state, "optimizer": True, "type": "load_weights"}), 400)["message"].startswith("optimizer:")
    assert error_of(submit(adam, "load_weights", {"path": adam_state, "optimizer": False, "optimizer_config": {"type": "dimuon"}}), 400)["message"].startswith("optimizer_config")
    # Weights alone load across families, and the run keeps its own optimizer.
    result(adam, submit(adam, "load_weights", {"path": state, "optimizer": False, "type": "load_weights"}), "LoadWeights")
    assert close(forward_loss(adam, batch), trained)
    adam.forward_backward(batch)
    assert "metrics" in adam.optim_step(learning_rate=1e-3)


# ---- copy_weights (§3.7) -------------------------------------------------------------------------

def test_copy_weights_copies_an_own_checkpoint_that_loads_the_same_weights(server):
    c = client(server)
    batch = [sft_datum(s) for s in DATASET]
    run = create_model(c)
    run.forward_backward(batch)
    run.optim_step(learning_rate=1e-2)
    trained = forward_loss(run, batch)
    state = run.save_state("to-copy")
    sampler_path = run.save_weights_for_sampler("to-copy-sampler")["path"]

    body = {"session_id": c.session_id, "model_seq_id": c.model_seq, "source_path": state, "ttl_seconds": 7200}
    copied = c.ok(c.post("copy_weights", body))["tinker_path"]
    assert copied != state and copied.endswith("/weights/to-copy") and copied.startswith(f"tinker://{c.session_id}:train:{c.model_seq}/")
    assert c.ok(c.post("copy_weights", body))["tinker_path"] == copied  # a retry is the same copy
    c.model_seq += 1
    info = c.ok(c.post("weights_info", {"tinker_path": copied}))
    assert info == c.ok(c.post("weights_info", {"tinker_path": state}))
    copy_run_id = copied.removeprefix("tinker://").split("/")[0]
    listed = c.ok(c.http.get(f"api/v1/training_runs/{copy_run_id}/checkpoints"))["checkpoints"]
    assert [(ck["checkpoint_type"], ck["tinker_path"]) for ck in listed] == [("training", copied)] and "expires_at" in listed[0]

    # The copy loads (with its optimizer state) and gives the same weights; the original can go.
    c.ok(c.bodyless("DELETE", f"training_runs/{run.model_id}/checkpoints/weights/to-copy"))
    loaded = create_model(c)
    loaded.load_state(copied, optimizer=True)
    assert close(forward_loss(loaded, batch), trained)
    # A sampler checkpoint's copy samples like the original.
    sampler_copy = c.ok(c.post("copy_weights", {"session_id": c.session_id, "model_seq_id": c.model_seq, "source_path": sampler_path}))["tinker_path"]
    c.model_seq += 1
    assert "/sampler_weights/" in sampler_copy
    prompt = DATASET[0][:3]
    greedy = [c.sample(c.sampler(model_path=p), prompt, seq_id=0, max_tokens=3, temperature=0)["sequences"][0]["tokens"] for p in (sampler_path, sampler_copy)]
    assert greedy[0] == greedy[1]

    # Another key's checkpoint (or an unknown one) is a 404; the copy's run takes no training requests.
    bob = client(server, 1)
    error_of(bob.post("copy_weights", {"session_id": bob.session_id, "model_seq_id": 0, "source_path": sampler_path}), 404)
    error_of(c.post("copy_weights", {"session_id": c.session_id, "model_seq_id": c.model_seq, "source_path": f"tinker://{run.model_id}/weights/none"}), 404)
    copy_run = Run(c, copy_run_id)
    assert error_of(submit(copy_run, "optim_step", {"adam_params": {"learning_rate": 1e-3}}), 400)["type"] == "model_unloaded"


# ---- save_weights_external + external_weights_urls (§3.5, §3.6) ----------------------------------

@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
def test_save_weights_external_gives_a_peft_adapter_by_signed_urls(server, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    c = client(server)
    run = create_model(c, rank=4)
    seq = DATASET[1]
    for _ in range(3):
        run.forward_backward([sft_datum(seq)])
        run.optim_step(learning_rate=2e-2)
    ours = run.forward_backward([sft_datum(seq)], forward_only=True)["loss_fn_outputs"][0]["logprobs"]
    saved = result(run, submit(run, "save_weights_external", {"path": "hf", "ttl_seconds": 3600, "type": "save_weights_external"}), "SaveWeightsExternal")
    assert saved["path"] == f"tinker://{run.model_id}/external_weights/hf" and saved["size_bytes"] > 0
    listed = {ck["checkpoint_id"]: ck for ck in c.ok(c.http.get(f"api/v1/training_runs/{run.model_id}/checkpoints"))["checkpoints"]}
    assert listed["external_weights/hf"]["checkpoint_type"] == "external" and listed["external_weights/hf"]["size_bytes"] == saved["size_bytes"]

    got = c.ok(c.http.get(f"api/v1/training_runs/{run.model_id}/checkpoints/external_weights/hf/external_weights_urls"))
    assert set(got["urls"]) == {"adapter_config.json", "adapter_model.safetensors"} and got["expires"]
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name, url in got["urls"].items():
        download = httpx.get(url, timeout=120)  # no API key: the signed URL is the authorisation
        assert download.status_code == 200, download.text
        (folder / name).write_bytes(download.content)
    assert httpx.get(got["urls"]["adapter_config.json"][:-3] + "xyz").status_code == 410  # tampered signature
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 4 and "lm_head" in config["target_modules"] and "q_proj" in config["target_modules"]
    tensors = load_file(folder / "adapter_model.safetensors")
    assert tensors["base_model.model.lm_head.lora_A.weight"].shape[0] == 4

    # peft loads it onto the transformers model of the base, and it scores like the run itself.
    hf = AutoModelForCausalLM.from_pretrained(server.models_dir / MODEL.replace("/", "__"), dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(hf, folder).eval()
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]])).logits[0]
    theirs = torch.log_softmax(logits, -1)[torch.arange(len(seq) - 1), torch.tensor(seq[1:])].numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-4)

    # External weights are for other tools: loading them is a clear 400; they delete like others.
    assert "cannot be loaded" in error_of(submit(run, "load_weights", {"path": saved["path"], "optimizer": False}), 400)["message"]
    error_of(c.http.get(f"api/v1/training_runs/{run.model_id}/checkpoints/external_weights/none/external_weights_urls"), 404)
    sampler_path = run.save_weights_for_sampler("not-external")["path"]
    assert "not an external checkpoint" in error_of(c.http.get(f"api/v1/training_runs/{run.model_id}/checkpoints/sampler_weights/not-external/external_weights_urls"), 400)["message"]
    assert sampler_path.endswith("/not-external")
    c.ok(c.bodyless("DELETE", f"training_runs/{run.model_id}/checkpoints/external_weights/hf"))
    assert httpx.get(got["urls"]["adapter_model.safetensors"]).status_code == 404


# ---- sessions (§4) ------------------------------------------------------------------------------

def test_session_finish_stops_heartbeats_and_get_session_returns_user_metadata(server):
    c = client(server, user_metadata={"team": "lathe", "run": "7"}, project_id="p1")
    detail = c.ok(c.http.get(f"api/v1/sessions/{c.session_id}"))
    assert detail["user_metadata"] == {"team": "lathe", "run": "7"}
    assert c.ok(c.post("session_heartbeat", {"session_id": c.session_id, "type": "session_heartbeat"})) == {"type": "session_heartbeat"}
    # Another key cannot finish it.
    bob = client(server, 1)
    error_of(bob.post(f"sessions/{c.session_id}/finish", {"reason": {"type": "success"}}), 404)
    finished = c.ok(c.post(f"sessions/{c.session_id}/finish", {"reason": {"type": "success"}, "detail": "done", "type": "finish_session"}))
    assert finished["session_id"] == c.session_id
    # The newer SDK stops heartbeating on 410.
    assert error_of(c.post("session_heartbeat", {"session_id": c.session_id, "type": "session_heartbeat"}), 410)["category"] == "user"
    c.ok(c.post(f"sessions/{c.session_id}/finish", {"reason": {"type": "errored"}}))  # finishing again is fine
    # An empty body (Content-Type: application/json and nothing else) is allowed; a malformed reason is not.
    other = client(server)
    c.ok(other.bodyless("POST", f"sessions/{other.session_id}/finish"))
    assert error_of(other.post("session_heartbeat", {"session_id": other.session_id}), 410)
    assert "reason" in error_of(other.post(f"sessions/{other.session_id}/finish", {"reason": 5}), 400)["message"]


# ---- checkpoint storage usage (§6) ---------------------------------------------------------------

def test_billing_usage_counts_the_callers_checkpoints(server):
    project = f"proj-{uuid.uuid4().hex[:8]}"
    c = client(server, project_id=project)
    usage = lambda **q: c.ok(c.http.get("api/v1/billing/usage/checkpoints/current", params=q))  # noqa: E731
    before = usage()["data"][0]
    assert usage(project_id=project)["data"][0] == {"project_id": project, "checkpoint_count": 0, "size_bytes": 0, "size_gigabytes": 0, "estimated_monthly_cost_usd": 0}
    run = create_model(c)
    run.save_state("billing")
    size = {ck["checkpoint_id"]: ck["size_bytes"] for ck in c.ok(c.http.get(f"api/v1/training_runs/{run.model_id}/checkpoints"))["checkpoints"]}["weights/billing"]
    after = usage()
    assert after["effective_rate_usd_per_gigabyte_month"] == 0
    row = after["data"][0]
    assert row["checkpoint_count"] == before["checkpoint_count"] + 1 and row["size_bytes"] == before["size_bytes"] + size
    assert close(row["size_gigabytes"], row["size_bytes"] / 1e9) and row["estimated_monthly_cost_usd"] == 0
    scoped = usage(project_id=project)["data"][0]
    assert (scoped["checkpoint_count"], scoped["size_bytes"]) == (1, size)
    # Another key sees only its own.
    bob = client(server, 1)
    assert bob.ok(bob.http.get("api/v1/billing/usage/checkpoints/current", params={"project_id": project}))["data"][0]["checkpoint_count"] == 0


# ---- every field of the newest request bodies (§3, §4) -------------------------------------------

def test_every_field_of_the_newest_training_requests_is_accepted(server):
    extra = {"field_from_a_future_sdk": {"x": [1]}}
    c = client(server, tags=["a", "b"], user_metadata={"k": "v"}, project_id="p-all", **extra)
    run = create_model(c, rank=8, optimizer={"type": "adamw"}, user_metadata={"purpose": "all-fields"}, **extra)
    run.forward_backward([sft_datum(DATASET[0])])
    adam = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.01, "grad_clip_norm": 1.0, "type": "adam"}
    assert "metrics" in result(run, submit(run, "optim_step", {"adam_params": adam, "type": "optim_step", **extra}), "OptimStep")
    meta = {"step": "1", "note": "newest"}
    state = result(run, submit(run, "save_weights", {"path": "all", "ttl_seconds": 3600, "overwrite": True, "user_metadata": meta, "type": "save_weights", **extra}), "SaveWeights")["path"]
    sampler = result(run, submit(run, "save_weights_for_sampler", {"path": "all-s", "ttl_seconds": 3600, "user_metadata": meta, "type": "save_weights_for_sampler", **extra}), "SaveWeightsForSampler")["path"]
    unnamed = result(run, submit(run, "save_weights_for_sampler", {"sampling_session_seq_id": c.sampler_seq, "ttl_seconds": 3600, "user_metadata": meta, "type": "save_weights_for_sampler", **extra}), "SaveWeightsForSampler")
    c.sampler_seq += 1
    assert unnamed["sampling_session_id"]
    external = result(run, submit(run, "save_weights_external", {"path": "all-x", "ttl_seconds": 3600, "type": "save_weights_external", **extra}), "SaveWeightsExternal")["path"]
    listed = {ck["tinker_path"]: ck for ck in c.ok(c.http.get(f"api/v1/training_runs/{run.model_id}/checkpoints"))["checkpoints"]}
    assert listed[state]["user_metadata"] == meta and listed[sampler]["user_metadata"] == meta and "user_metadata" not in listed[external]
    result(run, submit(run, "load_weights", {"path": state, "optimizer": True, "optimizer_config": {"type": "adamw"}, "type": "load_weights", **extra}), "LoadWeights")
    assert c.ok(c.post("weights_info", {"tinker_path": state, "type": "weights_info", **extra}))["optimizer_config"] == {"type": "adamw"}
    copied = c.ok(c.post("copy_weights", {"session_id": c.session_id, "model_seq_id": c.model_seq, "source_path": state, "ttl_seconds": 3600, "weights_access_token": None, **extra}))
    assert c.ok(c.post("weights_info", {"tinker_path": copied["tinker_path"]}))["lora_rank"] == 8
    assert c.ok(c.http.get(f"api/v1/sessions/{c.session_id}"))["user_metadata"] == {"k": "v"}
    c.ok(c.post(f"sessions/{c.session_id}/finish", {"reason": {"type": "interrupted"}, "detail": None, **extra}))
    # A user_metadata value that is not a string is named (the SDK only sends strings).
    assert "user_metadata" in error_of(submit(run, "save_weights", {"path": "bad-meta", "user_metadata": {"n": 1}}), 400)["message"]
