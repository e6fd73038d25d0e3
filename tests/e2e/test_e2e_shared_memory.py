"""Shared memory for clients on the server's host, end to end (real server, real Ray):
the same results as the wire bit for bit, every refusal with its status, a region
held by the calls that use it, and no segment left behind."""

from __future__ import annotations

import ast
import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing import shared_memory

import grpc
import grpc.aio
import numpy as np
import pytest

import gradserve
from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

ROSENBROCK = "sum(100 * (x[1:] - x[:-1]**2)**2 + (1 - x[:-1])**2)"
# a while loop on the data: points run one at a time, slowly enough to act during a call
SLOW = """
def f(x):
    b = x
    while norm(b) < 1e6:
        b = 1.01 * b
    return sum(b * b)
"""


def _ours() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("gradserve")}


@pytest.fixture
def stub(address: str) -> Iterator[pb_grpc.GradientServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.GradientServiceStub(channel)


@pytest.fixture
def segment() -> Iterator[shared_memory.SharedMemory]:
    seg = shared_memory.SharedMemory(
        name=f"gradserve_test_{secrets.token_hex(6)}", create=True, size=1 << 20
    )
    assert seg.buf is not None
    seg.buf[:16] = b"proof-0123456789"
    try:
        yield seg
    finally:
        seg.close()
        seg.unlink()


def _register(
    stub: pb_grpc.GradientServiceStub, seg: shared_memory.SharedMemory, name: str = "r"
) -> None:
    stub.RegisterSharedMemory(
        pb.RegisterSharedMemoryRequest(
            name=name, key=seg.name, byte_size=seg.size, proof=b"proof-0123456789"
        )
    )


def _put(seg: shared_memory.SharedMemory, arr: np.ndarray, offset: int) -> pb.Tensor:
    assert seg.buf is not None
    seg.buf[offset : offset + arr.nbytes] = arr.tobytes()
    tensor = wire.encode(arr, with_data=False)
    tensor.shared_memory.CopyFrom(pb.SharedMemoryRef(region="r", offset=offset))
    return tensor


def _refused(call: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


# ------------------------------------------------------------- the SDK


def test_every_op_by_shared_memory_equals_the_wire_bit_for_bit(address: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 10))
    before = _ours()
    with (
        gradserve.Client(address, timeout=120) as by_wire,
        gradserve.Client(address, timeout=120, shared_memory=True) as by_shm,
    ):
        ops = ["value", "grad", "hessian"]
        want, got = (c.compute(ROSENBROCK, {"x": x}, ops, batched=True) for c in (by_wire, by_shm))
        for op in ops:
            assert got[op].dtype == want[op].dtype
            assert np.array_equal(got[op], want[op]), op
        x32 = x.astype(np.float32)
        assert np.array_equal(
            by_shm.grad(ROSENBROCK, {"x": x32}, batched=True),
            by_wire.grad(ROSENBROCK, {"x": x32}, batched=True),
        )
        v = rng.normal(size=x.shape)
        assert np.array_equal(
            by_shm.hvp(ROSENBROCK, {"x": x}, {"x": v}, batched=True),
            by_wire.hvp(ROSENBROCK, {"x": x}, {"x": v}, batched=True),
        )
        # a jacobian's size is known only to the server: its reply comes by the wire
        assert np.array_equal(
            by_shm.jacobian("x**2", {"x": x[:50]}, batched=True),
            by_wire.jacobian("x**2", {"x": x[:50]}, batched=True),
        )
        # one call may choose the wire on a shared-memory client, and the other way round
        assert np.array_equal(
            by_wire.grad(ROSENBROCK, {"x": x}, batched=True, shared_memory=True),
            by_shm.grad(ROSENBROCK, {"x": x}, batched=True, shared_memory=False),
        )
        regions = by_shm.shared_memory_regions()
        assert regions and all(r.key.startswith("gradserve_") for r in regions)
        assert all(r.calls_using == 0 for r in regions)
        used = {r.key for r in regions} | {r.key for r in by_wire.shared_memory_regions()}
        assert used <= _ours()
    # closed: every segment the clients made is unregistered and unlinked
    assert not (used & _ours())
    assert _ours() == before  # and the server made none of its own
    with gradserve.Client(address) as client:
        assert client.shared_memory_regions() == []


def test_the_async_client_by_shared_memory(address: str) -> None:
    x = np.random.default_rng(3).normal(size=(500, 10))

    async def both() -> tuple[list[np.ndarray], list[np.ndarray], set[str]]:
        async with gradserve.AsyncClient(address, timeout=60, shared_memory="auto") as client:
            # calls in flight together: each has a segment of its own
            got = await asyncio.gather(
                *(client.grad(ROSENBROCK, {"x": x * k}, batched=True) for k in (1, 2, 3))
            )
            want = [
                await client.grad(ROSENBROCK, {"x": x * k}, batched=True, shared_memory=False)
                for k in (1, 2, 3)
            ]
            keys = {r.key for r in await client.shared_memory_regions()}
        return got, want, keys

    got, want, keys = asyncio.run(both())
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert len(keys) == 3 and not (keys & _ours())


def test_results_are_lent_views_that_never_change_under_their_holder(address: str) -> None:
    """Results view their call's segment (no copy out), and the segment is reused
    only once they are gone; past LEND_MAX held at once, results are copies."""
    from gradserve import shm as sdk_shm

    x = np.random.default_rng(11).normal(size=(2000, 10))
    with gradserve.Client(address, timeout=60, shared_memory=True) as client:
        held = [client.grad(ROSENBROCK, {"x": x * k}, batched=True) for k in (1, 2, 3, 4)]
        lent = [not h.flags.owndata for h in held]
        assert lent == [True] * sdk_shm.LEND_MAX + [False] * (4 - sdk_shm.LEND_MAX)
        assert all(h.flags.writeable for h in held)
        snapshot = [h.copy() for h in held]
        for k in range(6):  # more calls while they are held: copies, from other segments
            assert client.grad(ROSENBROCK, {"x": x * (k + 5)}, batched=True).flags.owndata
        wire = [client.grad(ROSENBROCK, {"x": x * k}, batched=True, shared_memory=False)
                for k in (1, 2, 3, 4)]  # fmt: skip
        for h, before, want in zip(held, snapshot, wire, strict=True):
            assert np.array_equal(h, before) and np.array_equal(h, want)
        del held, h
        last = None
        for k in range(8):  # a loop that keeps the last result while making the next
            last = client.grad(ROSENBROCK, {"x": x * (k % 4 + 1)}, batched=True)
            assert not last.flags.owndata and np.array_equal(last, wire[k % 4])
        keys = {r.key for r in client.shared_memory_regions()}
        assert len(keys) <= sdk_shm.LEND_MAX + sdk_shm.KEEP_IDLE
    # closed: the segments are unlinked, and a result still held stays readable
    assert not (keys & _ours())
    assert np.array_equal(last, wire[3])


def test_inputs_made_in_shared_memory_are_read_where_they_lie(address: str) -> None:
    rng = np.random.default_rng(12)
    with (
        gradserve.Client(address, timeout=60, shared_memory=True) as client,
        gradserve.Client(address, timeout=60) as by_wire,
    ):
        x = client.shared_array((3000, 10))
        assert x.dtype == np.float64 and x.shape == (3000, 10) and not x.any()
        x[:] = rng.normal(size=x.shape)
        assert np.array_equal(
            client.grad(ROSENBROCK, {"x": x}, batched=True),
            by_wire.grad(ROSENBROCK, {"x": x}, batched=True),  # an ordinary array there
        )
        (key,) = {r.key for r in client.shared_memory_regions()} - {
            s.key
            for s in client._shm._segments._all
            if not s.owned  # type: ignore[union-attr]
        }
        x *= 2  # changed in place between calls: the next call reads the new values
        rows = x[1000:1500]
        assert np.array_equal(
            client.grad(ROSENBROCK, {"x": rows}, batched=True),
            by_wire.grad(ROSENBROCK, {"x": rows}, batched=True),
        )

        async def by_async() -> np.ndarray:
            async with gradserve.AsyncClient(address, timeout=60, shared_memory=True) as other:
                y = other.shared_array(10, "float32")
                y[:] = np.arange(10)
                return await other.grad("sum(y ** 3)", {"y": y})

        assert np.array_equal(asyncio.run(by_async()), 3 * np.arange(10, dtype=np.float32) ** 2)
        assert key in _ours()
        del x, rows
    assert key not in _ours()  # gone with the array (or at close, at the latest)


def test_a_nan_in_shared_memory_is_named_by_its_point_in_the_whole_batch(address: str) -> None:
    """The workers screen the rows they read (the server does not read them first):
    a NaN in the second worker's chunk is still named by its index in the batch."""
    x = np.random.default_rng(13).normal(size=(4000, 10))
    x[3217, 4] = np.nan
    with gradserve.Client(address, timeout=60, shared_memory=True) as client:
        with pytest.raises(gradserve.InvalidArgumentError) as info:
            client.grad(ROSENBROCK, {"x": x}, batched=True)
        assert "input 'x' contains NaN at point 3217, element [4]" in info.value.message
        x[3217, 4] = np.inf
        xs = client.shared_array(x.shape)
        xs[:] = x
        with pytest.raises(gradserve.InvalidArgumentError, match="Inf at point 3217"):
            client.grad(ROSENBROCK, {"x": xs}, batched=True)
        # and the client's segments serve the next call as before
        x[3217, 4] = 0.0
        assert np.isfinite(client.grad(ROSENBROCK, {"x": x}, batched=True)).all()


def test_a_region_the_server_forgot_is_registered_again(address: str) -> None:
    x = np.random.default_rng(5).normal(size=(100, 10))
    with gradserve.Client(address, timeout=60, shared_memory=True) as client:
        first = client.grad(ROSENBROCK, {"x": x}, batched=True)
        with grpc.insecure_channel(address) as channel:  # as if the server restarted
            pb_grpc.GradientServiceStub(channel).UnregisterSharedMemory(
                pb.UnregisterSharedMemoryRequest()
            )
        assert np.array_equal(client.grad(ROSENBROCK, {"x": x}, batched=True), first)


# ------------------------------------------------------------- the protocol and its refusals


def test_outputs_are_written_into_the_region(
    stub: pb_grpc.GradientServiceStub, segment: shared_memory.SharedMemory
) -> None:
    _register(stub, segment)
    x = np.random.default_rng(1).normal(size=(64, 10))
    req = pb.ComputeRequest(function=ROSENBROCK, ops=[pb.OP_GRAD], batched=True)
    req.inputs["x"].CopyFrom(_put(segment, x, 64))
    req.output.CopyFrom(pb.SharedMemoryRef(region="r", offset=8192))
    resp = stub.Compute(req)
    (out,) = resp.results[0].outputs
    assert out.tensor.data == b"" and out.tensor.shared_memory.region == "r"
    ref = out.tensor.shared_memory
    assert ref.offset == 8192 and ref.byte_size == x.nbytes
    assert segment.buf is not None
    placed = np.frombuffer(segment.buf, np.float64, x.size, ref.offset).reshape(x.shape).copy()
    wire_req = pb.ComputeRequest(function=ROSENBROCK, ops=[pb.OP_GRAD], batched=True)
    wire_req.inputs["x"].CopyFrom(wire.encode(x))
    assert np.array_equal(placed, wire.decode(stub.Compute(wire_req).results[0].outputs[0].tensor))
    stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(name="r"))


def test_a_region_not_registered_is_not_found(
    stub: pb_grpc.GradientServiceStub, segment: shared_memory.SharedMemory
) -> None:
    req = pb.ComputeRequest(function="sum(x * x)", ops=[pb.OP_GRAD])
    req.inputs["x"].CopyFrom(_put(segment, np.ones(4), 64))
    error = _refused(stub.Compute, req)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no shared-memory region 'r'" in error.details()
    unknown = pb.UnregisterSharedMemoryRequest(name="r")
    assert _refused(stub.UnregisterSharedMemory, unknown).code() == grpc.StatusCode.NOT_FOUND


def test_a_region_too_small_names_it_and_both_sizes(
    stub: pb_grpc.GradientServiceStub, segment: shared_memory.SharedMemory
) -> None:
    _register(stub, segment)
    try:
        req = pb.ComputeRequest(function="sum(x * x)", ops=[pb.OP_GRAD], batched=True)
        tensor = _put(segment, np.ones((10, 4)), 64)
        tensor.shape[0] = 40_000  # 1,280,000 bytes at offset 1,048,000 of 1,048,576
        tensor.shared_memory.offset = segment.size - 576
        req.inputs["x"].CopyFrom(tensor)
        error = _refused(stub.Compute, req)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'x': shared-memory region 'r' is too small" in error.details()
        assert "1,280,000 bytes" in error.details() and "has 1,048,576" in error.details()
        # the outputs' room, refused before any work when the shapes tell
        req = pb.ComputeRequest(function="sum(x * x)", ops=[pb.OP_GRAD], batched=True)
        req.inputs["x"].CopyFrom(_put(segment, np.ones((1000, 4)), 64))
        req.output.CopyFrom(pb.SharedMemoryRef(region="r", offset=64_000, byte_size=10_000))
        error = _refused(stub.Compute, req)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "need 32,000 bytes" in error.details() and "has 10,000" in error.details()
        # and after it when only the output's shape tells (a value of unknown size)
        req.ops[:] = [pb.OP_VALUE]
        req.function = "x * x"
        error = _refused(stub.Compute, req)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "need 32,000 bytes" in error.details() and "has 10,000" in error.details()
    finally:
        stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(name="r"))


def test_a_segment_not_on_this_host_is_a_failed_precondition(
    stub: pb_grpc.GradientServiceStub,
) -> None:
    req = pb.RegisterSharedMemoryRequest(
        name="r", key="gradserve_on_another_host", byte_size=64, proof=b"p" * 16
    )
    error = _refused(stub.RegisterSharedMemory, req)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs the client on the server's host" in error.details()


def test_registration_refusals(
    stub: pb_grpc.GradientServiceStub, segment: shared_memory.SharedMemory
) -> None:
    def code(**fields: object) -> grpc.StatusCode:
        base: dict[str, object] = {
            "name": "r", "key": segment.name, "byte_size": 4096, "proof": b"proof-0123456789",
        }  # fmt: skip
        req = pb.RegisterSharedMemoryRequest(**{**base, **fields})  # type: ignore[arg-type]
        return _refused(stub.RegisterSharedMemory, req).code()

    # not a segment made for gradserve (Ray's object store, another program's)
    assert code(key="psm_something") == grpc.StatusCode.INVALID_ARGUMENT
    assert code(key="gradserve/../etc") == grpc.StatusCode.INVALID_ARGUMENT
    assert code(proof=b"wrong-proof-0123") == grpc.StatusCode.PERMISSION_DENIED
    assert code(proof=b"short") == grpc.StatusCode.INVALID_ARGUMENT
    assert code(byte_size=segment.size + 1) == grpc.StatusCode.INVALID_ARGUMENT
    _register(stub, segment)
    try:
        assert code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(name="r"))


def test_shared_memory_tensors_are_refused_where_only_bytes_go(
    stub: pb_grpc.GradientServiceStub, segment: shared_memory.SharedMemory
) -> None:
    _register(stub, segment)
    try:
        req = pb.CheckRequest(function="sum(x * x)")
        req.inputs["x"].tensor.CopyFrom(_put(segment, np.ones(4), 64))
        error = _refused(stub.Check, req)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "shared memory, which only Compute takes" in error.details()
        # a stream's header naming shared memory is refused as it arrives, by name (not
        # as bytes found missing once the stream ends)
        header = pb.ComputeRequest(function="sum(x * x)", ops=[pb.OP_GRAD])
        header.inputs["x"].CopyFrom(_put(segment, np.ones(4), 64))
        error = _refused(
            lambda: list(stub.ComputeStream(iter([pb.ComputeRequestPart(header=header)])))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tensors in shared memory go through Compute" in error.details()
    finally:
        stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(name="r"))


def test_unregistering_a_region_in_use_leaves_the_call_its_region(
    address: str, segment: shared_memory.SharedMemory
) -> None:
    x = np.random.default_rng(2).normal(size=(12, 10))

    async def scenario() -> pb.ComputeResponse:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GradientServiceStub(channel)
            await stub.RegisterSharedMemory(
                pb.RegisterSharedMemoryRequest(
                    name="r", key=segment.name, byte_size=segment.size, proof=b"proof-0123456789"
                )
            )
            req = pb.ComputeRequest(function=SLOW, ops=[pb.OP_GRAD], batched=True)
            req.inputs["x"].CopyFrom(_put(segment, x, 64))
            req.output.CopyFrom(pb.SharedMemoryRef(region="r", offset=65536))
            call = asyncio.ensure_future(stub.Compute(req, timeout=120))
            for _ in range(2000):
                listed = await stub.ListSharedMemory(pb.ListSharedMemoryRequest(name="r"))
                if listed.regions[0].calls_using == 1:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the call never held the region")
            gone = await stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(name="r"))
            assert [r.name for r in gone.regions] == ["r"] and not call.done()
            return await call

    resp = asyncio.run(scenario())
    ref = resp.results[0].outputs[0].tensor.shared_memory
    assert segment.buf is not None
    placed = np.frombuffer(segment.buf, np.float64, x.size, ref.offset).reshape(x.shape).copy()
    with gradserve.Client(address, timeout=120) as client:
        assert np.array_equal(placed, client.grad(SLOW, {"x": x}, batched=True))


def test_a_client_that_ends_without_closing_leaves_no_segment(address: str) -> None:
    before = _ours()
    script = (
        "import sys, numpy as np, gradserve\n"
        "c = gradserve.Client(sys.argv[1], timeout=60, shared_memory=True)\n"
        f"g = c.grad({ROSENBROCK!r}, {{'x': np.ones((100, 10))}}, batched=True)\n"
        "print(sorted(r.key for r in c.shared_memory_regions()))\n"
        "sys.exit(0)  # no close(): the process just ends\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, address], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    keys = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert keys and not (keys & _ours()) and _ours() == before
    # and the server forgets a region whose segment its client unlinked
    with grpc.insecure_channel(address) as channel:
        listed = pb_grpc.GradientServiceStub(channel).ListSharedMemory(pb.ListSharedMemoryRequest())
    assert not keys & {r.key for r in listed.regions}


def test_a_region_whose_segment_is_unlinked_is_forgotten(
    stub: pb_grpc.GradientServiceStub,
) -> None:
    seg = shared_memory.SharedMemory(
        name=f"gradserve_test_{secrets.token_hex(6)}", create=True, size=1 << 16
    )
    assert seg.buf is not None
    seg.buf[:16] = b"proof-0123456789"
    _register(stub, seg, name="crashed")
    listed = stub.ListSharedMemory(pb.ListSharedMemoryRequest())
    assert "crashed" in [r.name for r in listed.regions]
    seg.close()
    seg.unlink()  # its client ends without unregistering
    listed = stub.ListSharedMemory(pb.ListSharedMemoryRequest())
    assert "crashed" not in [r.name for r in listed.regions]


def test_a_reply_too_large_for_a_message_comes_back_by_the_stream(address: str) -> None:
    # a jacobian's size is unknown to the SDK, so its reply is not given a room: at
    # 250 x 100 x 100 float64 (20 MB) it is over the 16 MiB message limit
    x = np.random.default_rng(9).normal(size=(250, 100))
    with gradserve.Client(address, timeout=120, shared_memory=True) as client:
        got = client.jacobian("x**2", {"x": x}, batched=True)
    assert got.shape == (250, 100, 100)
    assert np.array_equal(got[:, np.arange(100), np.arange(100)], 2 * x)
    assert np.count_nonzero(got) == np.count_nonzero(x)
