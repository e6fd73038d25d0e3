"""Issue 16, items 1-3 and the stream cases of 13: a ComputeStream is priced from its
header before a piece is kept, each piece is checked as it arrives, pieces must tile
each tensor exactly once, and the bytes held for streams are capped."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
from support.cluster import ServerProcess
from support.hostile import Watch, scaled, stream_call

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

MiB = 1024 * 1024


def header(
    function: str, shapes: dict[str, list[int]], batched: bool = False
) -> pb.ComputeRequestPart:
    req = pb.ComputeRequest(function=function, ops=[pb.OP_VALUE], batched=batched)
    for name, shape in shapes.items():
        req.inputs[name].CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=shape))
    return pb.ComputeRequestPart(header=req)


def piece(offset: int, data: bytes, slot: int = 0) -> pb.ComputeRequestPart:
    return pb.ComputeRequestPart(piece=pb.TensorPiece(slot=slot, offset=offset, data=data))


def test_a_header_declaring_gigabytes_is_refused_before_allocating(
    hostile_server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    """Item 1: three FLOAT64 [134217728] inputs (3 GB) in one header, no data."""
    big = [134_217_728]
    with Watch(hostile_server) as watch:
        code, details, seconds = stream_call(
            stub, [header("sum(a) + sum(b) + sum(c)", {"a": big, "b": big, "c": big})]
        )
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "134217728" in details and "--max-tensor-elements" in details
    assert seconds < 3
    watch.check()


def test_a_header_declaring_8_tib_or_an_empty_giant_is_refused(
    hostile_server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    """Item 13: 8 TiB declared by one batched input; shape [0, 2**62] (no bytes at all)."""
    with Watch(hostile_server) as watch:
        tib = stream_call(stub, [header("sum(x)", {"x": [2**40, 1]}, batched=True)])
        giant = stream_call(stub, [header("sum(x)", {"x": [0, 2**62]})])
        dims = stream_call(stub, [header("sum(x)", {"x": [1] * 40})])
        negative = stream_call(stub, [header("sum(x)", {"x": [3, -1]})])
    assert tib[0] is grpc.StatusCode.RESOURCE_EXHAUSTED and "dimension 0" in tib[1], tib
    assert giant[0] is grpc.StatusCode.RESOURCE_EXHAUSTED and "dimension 1" in giant[1], giant
    assert dims[0] is grpc.StatusCode.INVALID_ARGUMENT and "40 dimensions" in dims[1], dims
    assert negative[0] is grpc.StatusCode.INVALID_ARGUMENT and "negative" in negative[1]
    assert max(tib[2], giant[2], dims[2], negative[2]) < 3
    watch.check()


def test_a_piece_that_overruns_is_refused_at_once(
    hostile_server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    """Item 2: `x: [1]`, then many 8 MiB pieces at offset 0: refused at the first."""
    sent = []
    count = scaled(20, 150)

    def parts() -> Iterator[pb.ComputeRequestPart]:
        yield header("sum(x)", {"x": [1]})
        for _ in range(count):
            sent.append(1)
            yield piece(0, b"\0" * (8 * MiB))

    with Watch(hostile_server) as watch:
        code, details, seconds = stream_call(stub, parts())
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert "overruns slot 0 of 8 bytes" in details
    assert seconds < 3 and len(sent) < count  # the rest were never sent
    watch.check()


def test_more_bytes_than_a_slot_holds_are_refused_at_once(
    hostile_server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    """Item 2 again, within bounds: 8-byte pieces at offset 0 of a 32-byte slot."""
    code, details, _ = stream_call(
        stub, [header("sum(x)", {"x": [4]})] + [piece(0, b"\0" * 8)] * 100
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "overlaps" in details, details


def test_pieces_must_tile_each_tensor_exactly_once(
    hostile_server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    """Item 3: overlap ([0, 24) and [8, 16)) and gap ([0, 8) and [16, 32))."""
    data = np.array([1.0, 9.0, 3.0, 4.0]).tobytes()
    overlap = stream_call(
        stub, [header("sum(x)", {"x": [4]}), piece(0, data[:24]), piece(8, data[8:16])]
    )
    gap = stream_call(
        stub, [header("sum(x)", {"x": [4]}), piece(0, data[:8]), piece(16, data[16:])]
    )
    reordered = stream_call(
        stub, [header("sum(x)", {"x": [4]}), piece(16, data[16:]), piece(0, data[:16])]
    )
    assert overlap[0] is grpc.StatusCode.INVALID_ARGUMENT and "overlaps" in overlap[1], overlap
    assert gap[0] is grpc.StatusCode.INVALID_ARGUMENT and "[8, 16) never arrived" in gap[1], gap
    assert reordered[0] is grpc.StatusCode.OK, reordered  # any order that tiles is fine


def test_bytes_held_for_incoming_streams_are_capped(
    hostile_server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    """Item 2: streams that declare their size and then send slowly reserve it; one
    that would take the server over --max-inflight-bytes (80 MiB here) is refused,
    and the others still finish."""
    points = 30 * MiB // 32  # 30 MiB each: [points, 4] float64
    x = np.random.default_rng(0).normal(size=(points, 4))
    blob = x.tobytes()
    go = threading.Event()
    outcomes: list[tuple[grpc.StatusCode, str, float]] = []

    def slow_parts() -> Iterator[pb.ComputeRequestPart]:
        yield header("sum(x * x)", {"x": [points, 4]}, batched=True)
        go.wait(60)
        for p in wire.split_pieces([blob]):
            yield pb.ComputeRequestPart(piece=p)

    def send() -> None:
        outcomes.append(stream_call(stub, slow_parts()))

    with Watch(hostile_server) as watch:
        senders = [threading.Thread(target=send) for _ in range(2)]
        for t in senders:
            t.start()
        time.sleep(1.0)  # both headers admitted: 60 of 80 MiB reserved
        code, details, seconds = stream_call(stub, slow_parts())
        go.set()
        for t in senders:
            t.join(120)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "max-inflight-bytes" in details
    assert seconds < 3
    assert [o[0] for o in outcomes] == [grpc.StatusCode.OK] * 2, outcomes
    watch.check()
