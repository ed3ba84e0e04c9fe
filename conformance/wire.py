"""A client for Tinker's wire protocol, written in this repo from tinker-protocol.md: it sends the
same paths, headers and bodies as the official Python SDK (0.25: protobuf forward_backward, optional
zstd, `Accept: application/x-protobuf` when polling training and sampling results), so a server that
answers it correctly answers the SDK. Protobuf classes come from our own .proto, compiled with
Google's protoc at test time (an implementation independent of the TypeScript codec in @lathe/protocol)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import zstandard

REPO = Path(__file__).resolve().parents[1]
PROTO = REPO / "packages" / "protocol" / "src" / "tinker_public.proto"
SDK_VERSION = "0.25.0"


def load_proto():
    out = Path(tempfile.mkdtemp(prefix="tinker-proto-"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={out}", PROTO.name],
        check=True,
    )
    sys.path.insert(0, str(out))
    return importlib.import_module("tinker_public_pb2")


pb = load_proto()


def sdk_headers(api_key: str) -> dict[str, str]:
    # Stainless's default headers: Content-Type is JSON on every request, even a DELETE or POST
    # that carries no body.
    return {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "X-API-Key": api_key,
        "User-Agent": f"AsyncTinker/Python {SDK_VERSION}",
        "X-Stainless-Package-Version": SDK_VERSION,
        "X-Stainless-OS": "Linux",
        "X-Stainless-Arch": "x64",
        "X-Stainless-Runtime": "CPython",
        "X-Stainless-Runtime-Version": "3.11.7",
        "X-Stainless-Async": "async:asyncio",
    }


def datum_proto(tokens: list[int], targets: list[int] | np.ndarray, weights: list[float] | np.ndarray, extra: dict[str, np.ndarray] | None = None):
    """A Datum as the SDK builds it: int32 tokens in one EncodedTextChunk, dense tensors with shape."""
    d = pb.Datum()
    chunk = d.model_input.add()
    chunk.encoded_text.tokens = np.asarray(tokens, dtype="<i4").tobytes()
    fields = {"target_tokens": np.asarray(targets, dtype=np.int64), "weights": np.asarray(weights, dtype=np.float32)}
    fields.update(extra or {})
    for key, array in fields.items():
        tensor = d.loss_fn_inputs[key]
        tensor.dense = array.astype("<i8" if array.dtype == np.int64 else "<f4").tobytes()
        tensor.dtype = pb.DTYPE_INT64 if array.dtype == np.int64 else pb.DTYPE_FLOAT32
        tensor.shape.extend(array.shape)
    return d


def sft_datum(sequence: list[int], weights: list[float] | None = None):
    """input = seq[:-1], targets = seq[1:] (the cookbook's convention)."""
    n = len(sequence) - 1
    return datum_proto(sequence[:-1], sequence[1:], weights if weights is not None else [1.0] * n)


def decode_fwdbwd(body: bytes) -> dict[str, Any]:
    """ForwardBackwardOutput → {loss_fn_outputs: [{name: ndarray}], metrics}, by the SDK's rules."""
    msg = pb.ForwardBackwardOutput()
    msg.ParseFromString(body)
    outputs: list[dict[str, np.ndarray]] = []
    for record in msg.loss_fn_outputs:
        per_datum: list[dict[str, np.ndarray]] = [{} for _ in range(record.num_datums)]
        for name, field in record.fields.items():
            offsets = np.frombuffer(field.offsets, dtype="<i8")
            dtype = {pb.DTYPE_FLOAT32: "<f4", pb.DTYPE_INT64: "<i8", pb.DTYPE_INT32: "<i4"}[field.dtype]
            trailing = list(field.trailing_shape)
            for i in range(record.num_datums):
                arr = np.frombuffer(field.data[offsets[i] : offsets[i + 1]], dtype=dtype)
                width = int(np.prod(trailing)) if trailing else 1
                per_datum[i][name] = arr.reshape([arr.size // width, *trailing])
        outputs.extend(per_datum)
    return {"loss_fn_outputs": outputs, "metrics": dict(msg.metrics)}


def topk_rows(t) -> list:
    """A TopkLogprobs message as rows of (id, logprob); a row starting with padding is None, trailing padding trimmed."""
    ids = np.frombuffer(t.token_ids, dtype="<i4").reshape(t.length, t.k)
    lps = np.frombuffer(t.logprobs, dtype="<f4").reshape(t.length, t.k)
    rows: list = []
    for row_ids, row_lps in zip(ids, lps):
        if row_ids[0] == 0 and row_lps[0] == -99999.0:
            rows.append(None)
        else:
            rows.append([(int(a), float(b)) for a, b in zip(row_ids, row_lps) if not (a == 0 and b == -99999.0)])
    return rows


_NP_DTYPE = {pb.DTYPE_FLOAT32: "<f4", pb.DTYPE_INT64: "<i8", pb.DTYPE_INT32: "<i4"}


def decode_tensor(t) -> dict[str, Any]:
    """A Tensor message: {"dtype", "shape", "dense": ndarray} or, when sparse, {"values", "crow", "col"} (not densified)."""
    out: dict[str, Any] = {"dtype": t.dtype, "shape": list(t.shape)}
    if t.WhichOneof("encoding") == "sparse_csr":
        out["values"] = np.frombuffer(t.sparse_csr.values, dtype=_NP_DTYPE[t.dtype])
        out["crow"] = np.frombuffer(t.sparse_csr.crow_indices, dtype="<i8").tolist()
        out["col"] = np.frombuffer(t.sparse_csr.col_indices, dtype="<i8").tolist()
    else:
        out["dense"] = np.frombuffer(t.dense, dtype=_NP_DTYPE[t.dtype]).reshape(out["shape"])
    return out


def decode_sample(body: bytes) -> dict[str, Any]:
    """SampleResponse by the SDK's rules; the fields added in 0.32 appear only when the server sent them."""
    msg = pb.SampleResponse()
    msg.ParseFromString(body)
    sequences = []
    for s in msg.sequences:
        seq = {
            "stop_reason": "stop" if s.stop_reason == pb.STOP_REASON_STOP else "length",
            "tokens": np.frombuffer(s.tokens, dtype="<i4").tolist(),
            "logprobs": np.frombuffer(s.logprobs, dtype="<f4").tolist() if s.logprobs else None,
        }
        if s.HasField("topk_sampled_logprobs"):
            seq["topk_logprobs"] = topk_rows(s.topk_sampled_logprobs)
        sequences.append(seq)
    prompt = None
    if msg.HasField("prompt_logprobs"):
        prompt = [None if np.isnan(v) else float(v) for v in np.frombuffer(msg.prompt_logprobs, dtype="<f4")]
    topk = topk_rows(msg.topk_prompt_logprobs) if msg.HasField("topk_prompt_logprobs") else None
    out = {"sequences": sequences, "prompt_logprobs": prompt, "topk_prompt_logprobs": topk}
    if msg.HasField("target_prompt_logprobs"):
        out["target_prompt_logprobs"] = decode_tensor(msg.target_prompt_logprobs)
    if msg.HasField("prompt_alt_tokens"):
        out["prompt_alt_tokens"] = {"tokens": decode_tensor(msg.prompt_alt_tokens.tokens), "logprobs": decode_tensor(msg.prompt_alt_tokens.logprobs)}
    return out


class RequestFailed(Exception):
    def __init__(self, message: str, category: str) -> None:
        super().__init__(message)
        self.category = category


class WireClient:
    """One SDK "holder": a session plus training and sampling calls, each returning the decoded result."""

    def __init__(self, base_url: str, api_key: str, compress: bool = False) -> None:
        self.http = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=sdk_headers(api_key), timeout=60)
        self.compress = compress
        self.session_id: str | None = None
        self.model_seq = 0
        self.sampler_seq = 0

    def post(self, path: str, body: dict | None = None, **kw) -> httpx.Response:
        headers = {"X-Idempotency-Key": f"stainless-python-retry-{uuid.uuid4()}"}
        headers.update(kw.pop("headers", {}))
        return self.http.post(f"api/v1/{path}", json=body, headers=headers, **kw)

    def bodyless(self, method: str, path: str) -> httpx.Response:
        """A call without a body, as the SDK makes it (DELETE checkpoint, publish, finish session):
        Content-Type: application/json and nothing else."""
        return self.http.request(method, f"api/v1/{path}", headers={"X-Idempotency-Key": f"stainless-python-retry-{uuid.uuid4()}"})

    def ok(self, response: httpx.Response) -> Any:
        assert response.status_code == 200, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
        return response.json()

    # -- start-up, as InternalClientHolder does it --------------------------------------------
    def start(self) -> str:
        self.config = self.ok(self.post("client/config", {"sdk_version": SDK_VERSION}))
        self.ok(self.post("client/dynamic_config", {"sdk_version": SDK_VERSION}))
        created = self.ok(self.post("create_session", {"tags": [], "user_metadata": {}, "sdk_version": SDK_VERSION, "type": "create_session"}))
        self.session_id = created["session_id"]
        return self.session_id

    # -- futures --------------------------------------------------------------------------------
    def retrieve(self, request_id: str, request_type: str, proto: bool = False, deadline_s: float = 300) -> Any:
        headers = {"X-Tinker-Request-Type": request_type}
        if proto:
            headers["Accept"] = "application/x-protobuf"
        allow_metadata_only = True
        end = time.time() + deadline_s
        iteration = 0
        while time.time() < end:
            headers["X-Tinker-Request-Iteration"] = str(iteration)
            r = self.post("retrieve_future", {"request_id": request_id, "allow_metadata_only": allow_metadata_only}, headers=headers, timeout=45)
            iteration += 1
            if r.status_code == 408:
                continue
            assert r.status_code == 200, (r.status_code, r.text)
            if "application/x-protobuf" in r.headers["content-type"]:
                return decode_fwdbwd(r.content) if request_type in ("Forward", "ForwardBackward") else decode_sample(r.content)
            body = r.json()
            if body.get("type") == "try_again":
                continue
            if body.get("status") == "complete_metadata":
                allow_metadata_only = False
                continue
            if "error" in body:
                raise RequestFailed(body["error"], body.get("category", "unknown"))
            return body
        raise TimeoutError(request_id)

    # -- training -------------------------------------------------------------------------------
    def create_model(self, base_model: str, rank: int = 8, **lora) -> "Run":
        body = {
            "session_id": self.session_id, "model_seq_id": self.model_seq, "base_model": base_model,
            "lora_config": {"rank": rank, "train_unembed": True, "train_mlp": True, "train_attn": True, **lora},
            "type": "create_model",
        }
        self.model_seq += 1
        future = self.ok(self.post("create_model", body))
        result = self.retrieve(future["request_id"], "CreateModel")
        return Run(self, result["model_id"])

    def sampler(self, model_path: str | None = None, base_model: str | None = None) -> str:
        body = {"session_id": self.session_id, "sampling_session_seq_id": self.sampler_seq, "type": "create_sampling_session"}
        body.update({"model_path": model_path} if model_path else {"base_model": base_model})
        self.sampler_seq += 1
        return self.ok(self.post("create_sampling_session", body))["sampling_session_id"]

    def sample(self, sampler_id: str, prompt: list[int], seq_id: int, num_samples: int = 1, **params) -> dict:
        include_prompt = params.pop("prompt_logprobs", False)
        topk = params.pop("topk_prompt_logprobs", 0)
        params.setdefault("temperature", 1)
        params.setdefault("top_k", -1)
        params.setdefault("top_p", 1)
        body = {
            "num_samples": num_samples, "prompt": {"chunks": [{"tokens": prompt, "type": "encoded_text"}]},
            "sampling_params": params, "sampling_session_id": sampler_id, "seq_id": seq_id,
            "prompt_logprobs": include_prompt, "topk_prompt_logprobs": topk, "type": "sample",
        }
        r = self.post("asample", body, headers={"X-Tinker-Sampling-Backpressure": "1"})
        future = self.ok(r)
        assert len(future["sample_sequence_ids"]) == num_samples
        return self.retrieve(future["request_id"], "Sample", proto=True)


class Run:
    """A TrainingClient: seq ids from 1, one per request."""

    def __init__(self, client: WireClient, model_id: str) -> None:
        self.client = client
        self.model_id = model_id
        self.seq = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def submit_forward_backward(self, data: list, loss_fn: str = "cross_entropy", config: dict | None = None, forward_only: bool = False) -> str:
        req = pb.ForwardBackwardRequest(model_id=self.model_id, seq_id=self.next_seq(), loss_fn=loss_fn, forward_only=forward_only)
        req.data.extend(data)
        for k, v in (config or {}).items():
            req.loss_fn_config[k] = v
        body = req.SerializeToString()
        headers = {"Content-Type": "application/x-protobuf"}
        if self.client.compress:
            body = zstandard.ZstdCompressor().compress(body)
            headers["Content-Encoding"] = "zstd"
        r = self.client.http.post("api/v1/forward_backward", content=body, headers=headers)
        return self.client.ok(r)["request_id"]

    def forward_backward(self, data: list, loss_fn: str = "cross_entropy", config: dict | None = None, forward_only: bool = False) -> dict:
        request_id = self.submit_forward_backward(data, loss_fn, config, forward_only)
        return self.client.retrieve(request_id, "Forward" if forward_only else "ForwardBackward", proto=True)

    def optim_step(self, learning_rate: float = 1e-4, **adam) -> dict:
        params = {"learning_rate": learning_rate, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0, "grad_clip_norm": 0.0, **adam}
        future = self.client.ok(self.client.post("optim_step", {"adam_params": params, "model_id": self.model_id, "seq_id": self.next_seq(), "type": "optim_step"}))
        return self.client.retrieve(future["request_id"], "OptimStep")

    def save_state(self, name: str, ttl_seconds: int | None = None) -> str:
        body = {"model_id": self.model_id, "path": name, "seq_id": self.next_seq(), "overwrite": False, "type": "save_weights"}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        future = self.client.ok(self.client.post("save_weights", body))
        return self.client.retrieve(future["request_id"], "SaveWeights")["path"]

    def save_weights_for_sampler(self, name: str | None = None) -> dict:
        body = {"model_id": self.model_id, "seq_id": self.next_seq(), "type": "save_weights_for_sampler"}
        if name is None:
            body["sampling_session_seq_id"] = self.client.sampler_seq
            self.client.sampler_seq += 1
        else:
            body["path"] = name
        future = self.client.ok(self.client.post("save_weights_for_sampler", body))
        return self.client.retrieve(future["request_id"], "SaveWeightsForSampler")

    def load_state(self, path: str, optimizer: bool) -> dict:
        body = {"model_id": self.model_id, "seq_id": self.next_seq(), "path": path, "optimizer": optimizer, "type": "load_weights"}
        future = self.client.ok(self.client.post("load_weights", body))
        return self.client.retrieve(future["request_id"], "LoadWeights")
