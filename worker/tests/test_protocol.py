"""Wire encoding: tensors and frames."""

from __future__ import annotations

import msgpack
import pytest
import torch

from lathe_worker.errors import UserError
from lathe_worker.protocol import HEADER, decode_tensor, encode_tensor, pack_frame, unpack_body


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32, torch.float64, torch.bfloat16])
def test_tensor_round_trip(dtype):
    t = (torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) - 7).to(dtype)
    wire = encode_tensor(t)
    assert wire["shape"] == [2, 3, 4] and isinstance(wire["data"], bytes)
    back = decode_tensor(msgpack.unpackb(msgpack.packb(wire)), "x")
    assert back.dtype == dtype and torch.equal(back, t)


def test_little_endian_bytes():
    assert encode_tensor(torch.tensor([1, 256], dtype=torch.int32))["data"] == b"\x01\x00\x00\x00\x00\x01\x00\x00"


def test_plain_lists_are_accepted():
    assert torch.equal(decode_tensor([[1, 2], [3, 4]], "x"), torch.tensor([[1, 2], [3, 4]]))


@pytest.mark.parametrize(
    "value, message",
    [
        ({"dtype": "int64", "shape": [3], "data": b"\x00" * 8}, "needs 24 bytes, got 8"),
        ({"dtype": "complex64", "shape": [1], "data": b"\x00" * 8}, "unsupported dtype"),
        ({"dtype": "int64", "shape": [-1], "data": b""}, "shape must be"),
        ({"dtype": "int64", "shape": [1]}, "expected {dtype, shape, data}"),
        ({"dtype": "int64", "shape": [1], "data": "text"}, "data must be binary"),
        ([[1, 2], [3]], "not a rectangular"),
    ],
)
def test_bad_tensors_name_the_field(value, message):
    with pytest.raises(UserError, match="weights") as info:
        decode_tensor(value, "weights")
    assert message in info.value.message


def test_frame_round_trip_and_malformed_bodies():
    frame = pack_frame({"op": "stats", "id": 3, "blob": b"\x00\x01"})
    (length,) = HEADER.unpack(frame[:4])
    assert length == len(frame) - 4
    assert unpack_body(frame[4:]) == {"op": "stats", "id": 3, "blob": b"\x00\x01"}
    with pytest.raises(UserError, match="not valid msgpack"):
        unpack_body(b"\xc1")
    with pytest.raises(UserError, match="must be a msgpack map"):
        unpack_body(msgpack.packb([1, 2]))
