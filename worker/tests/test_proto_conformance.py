"""Cross-checks the TypeScript protobuf codec (@lathe/protocol, packages/protocol/src) against Google's protobuf.

The schema is compiled with grpc_tools.protoc at test time. Requests are built the way the Python Tinker
SDK builds them and decoded by the TS codec; TS-encoded results are parsed here and read back with
the SDK's decoding rules (spec §7, `proto/response_conv.py`), re-implemented below with numpy.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "packages/protocol/src/tinker_public.proto"
TSX = REPO / "node_modules/.bin/tsx"

pytest.importorskip("grpc_tools")
if shutil.which("node") is None or not TSX.exists():
    pytest.skip("node and the repository's node_modules (tsx) are needed", allow_module_level=True)

# Runs a list of ops through the TS codec; binary payloads travel as hex, bigints as strings.
NODE_DRIVER = r"""
const proto = await import('./packages/protocol/src/index.ts');
const { decompressZstd } = await import('./packages/server/src/protocol/zstd.ts');
const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const ops = JSON.parse(Buffer.concat(chunks).toString());
const tensor = (t) => ({ dtype: t.dtype, shape: t.shape, data: t.dtype === 'int64' ? BigInt64Array.from(t.data, (v) => BigInt(v)) : Float32Array.from(t.data) });
const tensors = (o) => Object.fromEntries(Object.entries(o).map(([k, t]) => [k, tensor(t)]));
const hex = (b) => Buffer.from(b).toString('hex');
const run = async (op) => {
  switch (op.op) {
    case 'decode_request': {
      let body = Uint8Array.from(Buffer.from(op.hex, 'hex'));
      if (op.zstd) body = await decompressZstd(body, 1 << 20);
      return proto.decodeForwardBackwardRequest(body);
    }
    case 'encode_request':
      return hex(proto.encodeForwardBackwardRequest({ ...op.msg, data: op.msg.data.map((d) => ({ modelInput: d.modelInput, lossFnInputs: tensors(d.lossFnInputs) })) }));
    case 'encode_output':
      return hex(proto.encodeForwardBackwardOutput({ metrics: op.metrics, lossFnOutputs: op.outputs.map(tensors) }));
    case 'encode_sample':
      return hex(proto.encodeSampleResponse(op.response));
  }
  throw new Error('unknown op ' + op.op);
};
const results = [];
for (const op of ops) {
  try { results.push({ ok: await run(op) }); } catch (e) { results.push({ error: { name: e.name, message: e.message } }); }
}
const replacer = (_k, v) => typeof v === 'bigint' ? v.toString() : ArrayBuffer.isView(v) ? Array.from(v, (x) => typeof x === 'bigint' ? x.toString() : x) : v;
process.stdout.write(JSON.stringify(results, replacer));
"""


def run_ts(ops: list[dict]) -> list[dict]:
    proc = subprocess.run(
        ["node", "--conditions=lathe-source", "--import", "tsx", "--input-type=module", "-e", NODE_DRIVER],
        input=json.dumps(ops).encode(),
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={out}", str(PROTO)],
        check=True,
    )
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("tinker_public_pb2")
    finally:
        sys.path.remove(str(out))


# ---- the SDK's encoder (spec §7, §12a) ----


def sdk_tensor(pb, arr: np.ndarray):
    dtype = pb.DTYPE_INT64 if arr.dtype == np.int64 else pb.DTYPE_FLOAT32
    return pb.Tensor(dense=arr.tobytes(), dtype=dtype, shape=list(arr.shape))


def sdk_sparse_tensor(pb, dense: np.ndarray):
    """CSR as the SDK's `from_torch_sparse` sends it: non-zero values, int64 crow/col, dense shape."""
    rows, cols = np.nonzero(dense)
    crow = np.zeros(dense.shape[0] + 1, dtype=np.int64)
    np.add.at(crow, rows + 1, 1)
    crow = np.cumsum(crow).astype(np.int64)
    dtype = pb.DTYPE_INT64 if dense.dtype == np.int64 else pb.DTYPE_FLOAT32
    csr = pb.SparseCsr(values=dense[rows, cols].tobytes(), crow_indices=crow.tobytes(), col_indices=cols.astype(np.int64).tobytes())
    return pb.Tensor(sparse_csr=csr, dtype=dtype, shape=list(dense.shape))


def sdk_chunk(pb, tokens: list[int]):
    return pb.Chunk(encoded_text=pb.EncodedTextChunk(tokens=np.asarray(tokens, dtype=np.int32).tobytes()))


def datums_fixture():
    rng = np.random.default_rng(0)
    soft_targets = rng.integers(0, 151_000, size=(4, 3)).astype(np.int64)
    soft_weights = rng.random((4, 3)).astype(np.float32)
    sparse_weights = np.zeros((4, 3), dtype=np.float32)
    sparse_weights[0, 1], sparse_weights[3, 0], sparse_weights[3, 2] = 0.5, 1.0, -2.25
    return [
        # (chunks, dense inputs, sparse inputs)
        ([[151644, 872], [198, 9707]], {"target_tokens": np.array([872, 198, 9707, 151645], np.int64), "weights": np.array([0, 0, 1, 1], np.float32)}, {}),
        ([[5, 6, 7, 8]], {"target_tokens": soft_targets, "weights": soft_weights}, {}),
        ([[1, 2, 3, 4]], {"target_tokens": np.array([2, 3, 4, 5], np.int64)}, {"weights": sparse_weights}),
        (
            [[100, 101, 102]],
            {
                "target_tokens": np.array([101, 102, 103], np.int64),
                "logprobs": np.array([-0.5, -1.25, -3.0], np.float32),
                "advantages": np.array([1.5, 1.5, 1.5], np.float32),
            },
            {},
        ),
    ]


def sdk_request(pb, *, seq_id=7, config=None, v2=None, datums=None):
    data = []
    for chunks, dense, sparse in datums if datums is not None else datums_fixture():
        inputs = {k: sdk_tensor(pb, v) for k, v in dense.items()} | {k: sdk_sparse_tensor(pb, v) for k, v in sparse.items()}
        data.append(pb.Datum(model_input=[sdk_chunk(pb, c) for c in chunks], loss_fn_inputs=inputs))
    # 0.26.2 adds provenance spans; the server must ignore them.
    data[0].model_input_spans.add(prompt_tokens=pb.PromptProvenanceSpan(sequence_id="s:0", offset=0, length=2))
    data[0].loss_fn_input_spans.add(sampled_tokens=pb.SampledProvenanceSpan(sequence_id="s:1", offset=1, length=3))
    req = pb.ForwardBackwardRequest(model_id="S:train:0", seq_id=seq_id, data=data, loss_fn="ppo", forward_only=False)
    for k, v in (config or {}).items():
        req.loss_fn_config[k] = v
    for k, v in (v2 or {}).items():
        if isinstance(v, str):
            req.loss_fn_config_v2[k].text = v
        else:
            req.loss_fn_config_v2[k].number = v
    return req


def ts_tensor(t: dict) -> np.ndarray:
    dtype = np.int64 if t["dtype"] == "int64" else np.float32
    return np.asarray([int(x) if dtype is np.int64 else x for x in t["data"]], dtype=dtype).reshape(t["shape"])


def check_decoded_request(decoded: dict, v2_expected: dict) -> None:
    assert decoded["modelId"] == "S:train:0"
    assert decoded["seqId"] == 7
    assert decoded["lossFn"] == "ppo"
    assert decoded["forwardOnly"] is False
    assert decoded["lossFnConfig"] == v2_expected
    expected = datums_fixture()
    assert len(decoded["data"]) == len(expected)
    for got, (chunks, dense, sparse) in zip(decoded["data"], expected):
        assert got["modelInput"] == [t for c in chunks for t in c]
        want = dense | sparse
        assert sorted(got["lossFnInputs"]) == sorted(want)
        for key, arr in want.items():
            t = got["lossFnInputs"][key]
            assert t["dtype"] == ("int64" if arr.dtype == np.int64 else "float32"), key
            assert t["shape"] == list(arr.shape), key
            np.testing.assert_array_equal(ts_tensor(t), arr)


def test_sdk_request_decodes_in_ts(pb):
    import zstandard

    body = sdk_request(pb, config={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}).SerializeToString()
    v2 = sdk_request(pb, config={"clip_low_threshold": 9.0}, v2={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}).SerializeToString()
    text = sdk_request(pb, v2={"clip_low_threshold": 0.8, "mode": "fast"}).SerializeToString()
    unset_seq = sdk_request(pb, seq_id=0).SerializeToString()
    image = pb.ForwardBackwardRequest(seq_id=1, data=[pb.Datum(model_input=[pb.Chunk(image=pb.ImageChunk(data=b"\x89PNG", format="png"))])])
    bad_shape = sdk_request(pb, datums=datums_fixture()[:1])
    bad_shape.data[0].loss_fn_inputs["weights"].shape[:] = [5]
    results = run_ts(
        [
            {"op": "decode_request", "hex": body.hex()},
            {"op": "decode_request", "hex": zstandard.ZstdCompressor(level=3).compress(body).hex(), "zstd": True},
            {"op": "decode_request", "hex": v2.hex()},
            {"op": "decode_request", "hex": text.hex()},
            {"op": "decode_request", "hex": unset_seq.hex()},
            {"op": "decode_request", "hex": image.SerializeToString().hex()},
            {"op": "decode_request", "hex": bad_shape.SerializeToString().hex()},
            {"op": "decode_request", "hex": "0a05ff"},
        ]
    )
    expected_config = {"clip_low_threshold": pytest.approx(0.8, abs=0), "clip_high_threshold": pytest.approx(1.2, abs=0)}
    check_decoded_request(results[0]["ok"], expected_config)
    check_decoded_request(results[1]["ok"], expected_config)
    check_decoded_request(results[2]["ok"], expected_config)  # v2 wins over the legacy map
    errors = [r["error"] for r in results[3:]]
    assert all(e["name"] == "ProtoDecodeError" for e in errors), errors
    assert "loss_fn_config_v2['mode'] is text" in errors[0]["message"]
    assert "seq_id must be >= 1" in errors[1]["message"]
    assert "image chunks are not supported by this server" in errors[2]["message"]
    assert "4 float32 values but shape [5] needs 5" in errors[3]["message"]
    assert "malformed protobuf ForwardBackwardRequest" in errors[4]["message"]


def test_ts_request_matches_the_sdk_encoding(pb):
    datums = [d for d in datums_fixture() if not d[2]]  # the SDK sends dense tensors here
    msg = {
        "modelId": "S:train:0",
        "seqId": 7,
        "lossFn": "ppo",
        "lossFnConfig": {"clip_high_threshold": 1.2, "clip_low_threshold": 0.8},
        "forwardOnly": False,
        "data": [
            {
                "modelInput": [t for c in chunks for t in c],
                "lossFnInputs": {
                    k: {"dtype": "int64" if v.dtype == np.int64 else "float32", "shape": list(v.shape), "data": v.ravel().tolist()}
                    for k, v in sorted(dense.items())  # sorted: bytes are compared with deterministic=True below
                },
            }
            for chunks, dense, _ in datums
        ],
    }
    [result] = run_ts([{"op": "encode_request", "msg": msg}])
    got = pb.ForwardBackwardRequest.FromString(bytes.fromhex(result["ok"]))
    want = pb.ForwardBackwardRequest(model_id="S:train:0", seq_id=7, loss_fn="ppo")
    for chunks, dense, _ in datums:
        tokens = [t for c in chunks for t in c]
        want.data.append(pb.Datum(model_input=[sdk_chunk(pb, tokens)], loss_fn_inputs={k: sdk_tensor(pb, v) for k, v in dense.items()}))
    for k, v in msg["lossFnConfig"].items():
        want.loss_fn_config[k] = v
        want.loss_fn_config_v2[k].number = v  # as SDK >= 0.26.2 sends it
    assert got == want
    # Byte-identical to Python's deterministic serialization (sorted map keys).
    assert bytes.fromhex(result["ok"]) == want.SerializeToString(deterministic=True)


# ---- the SDK's decoder (spec §7 "Decoder behaviour") ----

_NP = {1: np.float32, 2: np.int64, 3: np.int32, 4: None}


def sdk_decode_fwdbwd(pb, body: bytes):
    out = pb.ForwardBackwardOutput.FromString(body)
    output_type = out.loss_fn_output_type.rsplit(":", 1)[-1] or ("ArrayRecord" if not out.loss_fn_outputs else "")
    datums = []
    for record in out.loss_fn_outputs:
        per = [dict() for _ in range(record.num_datums)]
        for key, bt in record.fields.items():
            offsets = np.frombuffer(bt.offsets, dtype="<i8")
            assert len(offsets) == record.num_datums + 1
            for i in range(record.num_datums):
                arr = np.frombuffer(bt.data[offsets[i] : offsets[i + 1]], dtype=_NP[bt.dtype])
                trailing = list(bt.trailing_shape)
                arr = arr.reshape([arr.size // int(np.prod(trailing, dtype=np.int64)), *trailing])
                dtype = "float32" if bt.dtype in (1, 4) else "int64"
                per[i][key] = (dtype, arr)
        datums.extend(per)
    return output_type, datums, dict(out.metrics), out


def test_ts_forward_backward_output_reads_as_the_sdk_does(pb):
    rng = np.random.default_rng(1)
    outputs = [
        {"logprobs": rng.standard_normal(5).astype(np.float32)},
        {"logprobs": rng.standard_normal(2).astype(np.float32)},
        {"logprobs": rng.standard_normal((3, 4)).astype(np.float32)},  # (N, K) soft targets
        {"logprobs": rng.standard_normal((2, 2)).astype(np.float32)},  # ragged K: a new record
        {"logprobs": rng.standard_normal(1).astype(np.float32), "tokens": np.array([42], np.int64)},
    ]
    metrics = {"loss:sum": 12.375, "e_frac_with_tokens:mean": 0.25}
    wire = [{k: {"dtype": "int64" if v.dtype == np.int64 else "float32", "shape": list(v.shape), "data": v.ravel().tolist()} for k, v in d.items()} for d in outputs]
    [result] = run_ts([{"op": "encode_output", "outputs": wire, "metrics": metrics}])
    output_type, datums, got_metrics, raw = sdk_decode_fwdbwd(pb, bytes.fromhex(result["ok"]))
    assert output_type == "ArrayRecord"
    assert got_metrics == metrics
    assert [r.num_datums for r in raw.loss_fn_outputs] == [2, 1, 1, 1]
    assert [list(r.fields["logprobs"].trailing_shape) for r in raw.loss_fn_outputs] == [[], [4], [2], []]
    assert len(datums) == len(outputs)
    for got, want in zip(datums, outputs):
        assert sorted(got) == sorted(want)
        for key, arr in want.items():
            dtype, values = got[key]
            assert dtype == ("int64" if arr.dtype == np.int64 else "float32")
            assert values.shape == arr.shape
            np.testing.assert_array_equal(values, arr)


def sdk_decode_sample(pb, body: bytes):
    r = pb.SampleResponse.FromString(body)
    names = {pb.STOP_REASON_STOP: "stop", pb.STOP_REASON_LENGTH: "length"}
    sequences = []
    for s in r.sequences:
        assert s.stop_reason in names, "unknown stop_reason raises in the SDK"
        lps = np.frombuffer(s.logprobs, dtype="<f4").tolist() if s.HasField("logprobs") and s.logprobs else None
        sequences.append((names[s.stop_reason], np.frombuffer(s.tokens, dtype="<i4").tolist(), lps))
    prompt = None
    if r.HasField("prompt_logprobs"):
        prompt = [None if math.isnan(x) else x for x in np.frombuffer(r.prompt_logprobs, dtype="<f4").tolist()]
    topk = None
    if r.HasField("topk_prompt_logprobs"):
        t = r.topk_prompt_logprobs
        ids = np.frombuffer(t.token_ids, dtype="<i4").reshape(t.length, t.k)
        lps = np.frombuffer(t.logprobs, dtype="<f4").reshape(t.length, t.k)
        topk = []
        for row_ids, row_lps in zip(ids.tolist(), lps.tolist()):
            cells = list(zip(row_ids, row_lps))
            if cells[0] == (0, -99999.0):
                topk.append(None)
                continue
            while cells and cells[-1] == (0, -99999.0):
                cells.pop()
            topk.append([list(c) for c in cells])
    return sequences, prompt, topk, r.prompt_cache_hit_tokens


def f32(values):
    return np.asarray(values, dtype=np.float32).tolist()


def test_ts_sample_response_reads_as_the_sdk_does(pb):
    response = {
        "sequences": [
            {"stopReason": "stop", "tokens": [9707, 1879, 151645], "logprobs": f32([-0.1, -2.5, -0.01])},
            {"stopReason": "length", "tokens": [1, 2], "logprobs": None},
        ],
        "promptLogprobs": [None] + f32([-3.5, -0.75]),
        "topkPromptLogprobs": [None, [[17, f32([-0.5])[0]], [18, f32([-1.5])[0]]], [[4, f32([-0.25])[0]]]],
        "promptCacheHitTokens": 16,
    }
    bare = {"sequences": [{"stopReason": "stop", "tokens": [3], "logprobs": f32([-1])}], "promptLogprobs": None, "topkPromptLogprobs": None, "promptCacheHitTokens": 0}
    full, minimal = run_ts([{"op": "encode_sample", "response": response}, {"op": "encode_sample", "response": bare}])
    sequences, prompt, topk, cached = sdk_decode_sample(pb, bytes.fromhex(full["ok"]))
    assert sequences == [("stop", [9707, 1879, 151645], response["sequences"][0]["logprobs"]), ("length", [1, 2], None)]
    assert prompt == response["promptLogprobs"]
    assert topk == response["topkPromptLogprobs"]
    assert cached == 16
    raw = pb.SampleResponse.FromString(bytes.fromhex(full["ok"]))
    assert (raw.topk_prompt_logprobs.k, raw.topk_prompt_logprobs.length) == (2, 3)
    assert not raw.sequences[1].HasField("logprobs")

    sequences, prompt, topk, cached = sdk_decode_sample(pb, bytes.fromhex(minimal["ok"]))
    assert sequences == [("stop", [3], [-1.0])] and prompt is None and topk is None and cached == 0
