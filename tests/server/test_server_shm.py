"""The shared-memory registry, the arrays workers map, and the SDK's choices, on real
segments in /dev/shm (no server: the end-to-end tests are test_e2e_shared_memory*)."""

from __future__ import annotations

import gc
import pickle
import secrets
import socket
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest

import gradserve
from gradserve import shm as sdk_shm
from gradserve.errors import FailedPreconditionError, NotFoundError
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import shm
from gradserve_server.errors import ServiceError
from gradserve_workers import shm as segments

PROOF = b"0123456789abcdef"


@pytest.fixture
def segment() -> Iterator[shared_memory.SharedMemory]:
    seg = shared_memory.SharedMemory(
        name=f"gradserve_unit_{secrets.token_hex(6)}", create=True, size=1 << 16
    )
    assert seg.buf is not None
    seg.buf[:16] = PROOF
    try:
        yield seg
    finally:
        seg.close()
        seg.unlink()


def _register(registry: shm.Registry, seg: shared_memory.SharedMemory) -> shm.Region:
    return registry.register(
        "t", pb.RegisterSharedMemoryRequest(name="r", key=seg.name, byte_size=seg.size, proof=PROOF)
    )


def _request(seg: shared_memory.SharedMemory, x: np.ndarray) -> pb.ComputeRequest:
    assert seg.buf is not None
    seg.buf[64 : 64 + x.nbytes] = x.tobytes()
    req = pb.ComputeRequest(function="sum(x * x)", ops=[pb.OP_GRAD], batched=True)
    req.inputs["x"].dtype = pb.DTYPE_FLOAT64
    req.inputs["x"].shape[:] = x.shape
    req.inputs["x"].shared_memory.CopyFrom(pb.SharedMemoryRef(region="r", offset=64))
    return req


def test_a_server_without_shared_memory_refuses_it(segment: shared_memory.SharedMemory) -> None:
    with pytest.raises(ServiceError) as info:
        _register(shm.Registry(enabled=False), segment)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--shared-memory 0" in info.value.message


def test_a_call_holds_its_region_past_unregistering(segment: shared_memory.SharedMemory) -> None:
    registry = shm.Registry()
    region = _register(registry, segment)
    x = np.arange(12.0).reshape(3, 4)
    with registry.resolve(_request(segment, x), "t") as call:
        assert call is not None and region.users == 1
        assert registry.unregister("t", "r") == [region]
        assert registry.listed("t") == []
        # the call still reads the bytes where they lie
        assert np.array_equal(np.frombuffer(call.blobs[0], np.float64).reshape(3, 4), x)
    assert region.users == 0
    # and a new call cannot find it
    with pytest.raises(ServiceError) as info, registry.resolve(_request(segment, x), "t"):
        pass
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_regions_are_per_tenant(segment: shared_memory.SharedMemory) -> None:
    registry = shm.Registry()
    _register(registry, segment)
    with pytest.raises(ServiceError) as info:
        registry.get("someone-else", "r", "Compute")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert registry.listed("someone-else") == []


def test_arrays_for_workers_travel_as_names_and_offsets(
    segment: shared_memory.SharedMemory,
) -> None:
    registry = shm.Registry()
    _register(registry, segment)
    x = np.random.default_rng(0).normal(size=(100, 4))
    with registry.resolve(_request(segment, x), "t") as call:
        assert call is not None
        arr = np.frombuffer(call.blobs[0], np.float64).reshape(x.shape)
        small = np.ones(3)
        payload = call.payload({"x": arr, "cotangent:": small}, workers_here=True)
        assert payload is not None and call.payload({"x": arr}, workers_here=False) is None
        big = np.ones(40_000)  # 320 kB by the wire: every chunk would carry it
        assert call.payload({"x": arr, "cotangent:": big}, workers_here=True) is None
        message = pickle.dumps(payload)
        assert len(message) < 1000  # names and offsets, not the 3,200 bytes
        there = pickle.loads(message)
        assert np.array_equal(there["x"], x) and np.array_equal(there["cotangent:"], small)
        assert not there["x"].flags.writeable
        there.host = "another-host/0:0"  # read where the segment is not: said, not misread
        with pytest.raises(RuntimeError, match="another host"):
            there["x"]


def test_keys_must_be_made_for_gradserve() -> None:
    for key in ("psm_1234", "gradserve/../x", "gradserve x", ""):
        with pytest.raises(segments.SegmentError):
            segments.check_key(key)
    with pytest.raises(segments.SegmentError) as info:
        segments.open_segment("gradserve_no_such_segment")
    assert info.value.missing


def test_the_sdk_sizes_outputs_only_where_shapes_tell() -> None:
    x = {"x": np.zeros((10, 3)), "y": np.zeros((10, 2))}
    # each output at a 64-byte boundary: 240 -> 256 bytes, 160 -> 192, 80 -> 128
    assert sdk_shm.output_bytes(["grad"], x, [], True, 8) == 256 + 192
    assert sdk_shm.output_bytes(["value", "grad"], x, ["x"], True, 8) == 128 + 256
    assert sdk_shm.output_bytes(["hessian"], x, ["y"], True, 4) == 192
    assert sdk_shm.output_bytes(["value"], x, [], True, 8) is None
    assert sdk_shm.output_bytes(["jacobian"], x, [], True, 8) is None


def test_the_sdk_names_inputs_in_a_shared_array_where_they_lie() -> None:
    """An input in a shared array (or a C-contiguous slice of one) is named where it
    lies and not copied; anything else is copied into the call's segment."""
    segments = sdk_shm.Segments()
    try:
        x = segments.shared_array((100, 10), np.dtype(np.float64))
        x[:] = np.arange(1000.0).reshape(100, 10)
        (home,) = [s for s in segments._all if s.owned]
        assert home.size == sdk_shm.HEADER + x.nbytes  # sized to the array, not pooled
        header = pb.ComputeRequest(function="sum(x * y)", ops=[pb.OP_GRAD], batched=True)
        for name in ("x", "y"):
            header.inputs[name].dtype = pb.DTYPE_FLOAT64
        header.inputs["x"].shape[:] = (50, 10)
        header.inputs["y"].shape[:] = (50, 5)
        strided = x[:50, ::2]  # not C-contiguous: copied
        shared, _ = sdk_shm.layout(header, [x[50:], strided], segments)
        ref_x, ref_y = (shared.header.inputs[n].shared_memory for n in ("x", "y"))
        assert ref_x.region == home.key and ref_x.offset == sdk_shm.HEADER + 50 * 10 * 8
        assert ref_y.region == shared.segment.key != home.key
        placed = shared.segment.array(int(ref_y.offset), np.dtype(np.float64), (50, 5))
        assert np.array_equal(placed, strided)
        assert shared.others == [home] and shared.unregistered() == [shared.segment, home]
        home.registered = True
        assert shared.unregistered() == [shared.segment]
        with pytest.raises(gradserve.InvalidArgumentError, match="float32 or float64"):
            gradserve.Client("127.0.0.1:1").shared_array(3, "int64")
        with pytest.raises(gradserve.InvalidArgumentError, match="whole numbers >= 0"):
            gradserve.Client("127.0.0.1:1").shared_array((2, -1))
        # the array and its views gone: its segment is unlinked at the next lease
        path = Path("/dev/shm") / home.key
        rows = x[10:20]
        del x, strided, placed, shared, home
        gc.collect()
        segments.lease(1)
        assert path.exists() and rows[0, 0] == 100.0  # a view of it still lives
        del rows
        gc.collect()
        segments.lease(1)
        assert not path.exists()
    finally:
        segments.close()


def test_the_sdk_falls_back_to_the_wire_only_when_asked() -> None:
    client = gradserve.Client("127.0.0.1:1", shared_memory="auto")
    try:
        memory = client._shm  # the client's decisions, no RPC
        elsewhere = FailedPreconditionError("shared memory needs the client on the server's host")
        with pytest.raises(FailedPreconditionError):
            memory.retry(elsewhere, True, first=True)
        assert client.shared_memory_off is None and memory.chosen(None) == "auto"
        assert memory.retry(elsewhere, "auto", first=True) is False
        assert client.shared_memory_off is not None  # and later "auto" calls go by the wire
        assert memory.chosen(None) is False and memory.chosen(True) is True
        forgotten = NotFoundError("Compute: no shared-memory region 'gradserve_x' is registered")
        assert memory.retry(forgotten, True, first=True) is True
        with pytest.raises(NotFoundError):
            memory.retry(forgotten, True, first=False)
        with pytest.raises(gradserve.InvalidArgumentError):
            gradserve.Client("127.0.0.1:1", shared_memory="yes")  # type: ignore[arg-type]
        with pytest.raises(gradserve.InvalidArgumentError, match="shared_memory"):
            client.grad("sum(x * x)", {"x": [1.0]}, shared_memory="on")  # type: ignore[arg-type]
    finally:
        client.close()


def test_a_worker_on_this_host_writes_planned_outputs_itself(
    segment: shared_memory.SharedMemory,
) -> None:
    from gradserve_server import rules
    from gradserve_server.config import LIMIT_DEFAULTS
    from gradserve_workers.actor import GradActor
    from gradserve_workers.tasks import ComputeSpec

    registry = shm.Registry()
    _register(registry, segment)
    x = np.random.default_rng(1).normal(size=(50, 4))
    req = _request(segment, x)
    req.output.CopyFrom(pb.SharedMemoryRef(region="r", offset=8192))
    limits = dict(LIMIT_DEFAULTS)
    program = rules.program(req.function, limits)
    spec = ComputeSpec(req.function, program.source_hash, ("grad",), ("x",), True, "float64",
                       limits=limits)  # fmt: skip
    actor = GradActor()
    with registry.resolve(req, "t") as call:
        assert call is not None
        arr = np.frombuffer(call.blobs[0], np.float64).reshape(x.shape)
        call.plan_writes(spec.ops, {"x": arr}, ("x",), "float64")
        payload = pickle.loads(pickle.dumps(call.payload({"x": arr}, workers_here=True)))
        chunks = [actor.compute(spec, payload, a, b) for a, b in ((0, 20), (20, 50))]
        assert [c.written for c in chunks] == [(("grad", "x"),)] * 2
        assert all(c.outputs == {"grad": {}} for c in chunks)
        (result,) = call.place({"grad": {}}, [c.written for c in chunks])
    ref = result.outputs[0].tensor.shared_memory
    assert (ref.offset, ref.byte_size) == (8192, x.nbytes)
    assert segment.buf is not None
    got = np.frombuffer(segment.buf, np.float64, x.size, ref.offset).reshape(x.shape)
    assert np.array_equal(got, 2 * x)  # d/dx sum(x * x), exact in floating point
    del got
    # an output not as planned (here: float32) is left to the server, every one of them
    mine = {"grad": {"x": np.ones((20, 4), np.float32)}}
    assert payload.write_outputs(mine, 0, 20) == () and "x" in mine["grad"]


def test_workers_elsewhere_get_the_object_store() -> None:
    here = socket.gethostname()
    assert shm.workers_on_this_host([f"{here}:101", f"{here}:102"])
    # one worker on another node: the whole call goes by the object store (each
    # chunk may land on any worker), with outputs placed by the server
    assert not shm.workers_on_this_host([f"{here}:101", "node-2:77"])
    assert not shm.workers_on_this_host([])


def test_a_segment_unlinked_mid_call_is_the_callers_doing() -> None:
    from gradserve_workers.actor import classify

    gone = segments.SharedArrays(
        {"x": segments.Placed("gradserve_unlinked_meanwhile", 0, (2,), "float64")},
        {}, segments.host_identity(),
    )  # fmt: skip
    with pytest.raises(segments.RegionGone) as info:
        gone["x"]
    error = classify(info.value)
    assert error.kind == "invalid" and "removed it during the call" in error.message
