"""Malformed streamed requests get INVALID_ARGUMENT with a reason, and nothing breaks."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import gradserve
from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


@pytest.fixture
def stub(address: str) -> Iterator[pb_grpc.GradientServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.GradientServiceStub(channel)


def _header(n: int = 4) -> pb.ComputeRequest:
    req = pb.ComputeRequest(function="sum(x * x)", ops=[pb.OP_GRAD])
    req.inputs["x"].CopyFrom(wire.encode(np.arange(n, dtype=float), with_data=False))
    return req


def _call(stub: pb_grpc.GradientServiceStub, parts: list[pb.ComputeRequestPart]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ComputeStream(iter(parts), timeout=30))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    return str(info.value.details())


def test_piece_before_header(stub: pb_grpc.GradientServiceStub) -> None:
    piece = pb.TensorPiece(slot=0, offset=0, data=b"\0" * 8)
    assert "before the header" in _call(stub, [pb.ComputeRequestPart(piece=piece)])


def test_empty_stream(stub: pb_grpc.GradientServiceStub) -> None:
    assert "empty" in _call(stub, [])


def test_two_headers(stub: pb_grpc.GradientServiceStub) -> None:
    part = pb.ComputeRequestPart(header=_header())
    assert "second header" in _call(stub, [part, part])


def test_missing_bytes(stub: pb_grpc.GradientServiceStub) -> None:
    piece = pb.TensorPiece(slot=0, offset=0, data=b"\0" * 8)  # 8 of 32 bytes
    message = _call(
        stub, [pb.ComputeRequestPart(header=_header()), pb.ComputeRequestPart(piece=piece)]
    )
    assert "8 of 32" in message


def test_piece_for_a_slot_that_does_not_exist(stub: pb_grpc.GradientServiceStub) -> None:
    piece = pb.TensorPiece(slot=3, offset=0, data=b"\0" * 8)
    message = _call(
        stub, [pb.ComputeRequestPart(header=_header()), pb.ComputeRequestPart(piece=piece)]
    )
    assert "slot 3" in message


def test_server_still_serves(client: gradserve.Client) -> None:
    np.testing.assert_allclose(client.grad("sum(x * x)", {"x": [1.0, 2.0]}), [2.0, 4.0])
