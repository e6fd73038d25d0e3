"""Pipelined ComputeStream: a batch computed by chunks while it arrives, its reply
streamed back by chunks; the same bytes as the whole path, in a bounded window,
with the whole path's errors (docs/limits.md, "Pipelined streams")."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
import psutil
import pytest
from support.cluster import RayNode, ServerProcess, start_server

import gradserve
from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

ROSENBROCK = "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)"
WINDOW = 4 << 20
INFLIGHT = 8 << 20
OPTIONS = [("grpc.max_receive_message_length", 64 << 20),
           ("grpc.max_send_message_length", 64 << 20)]  # fmt: skip


def _ray_actor_pids(ray_head: RayNode) -> set[int]:
    """The actor processes of this test session's Ray head (children of its raylet:
    other Ray clusters on the machine are none of this test's business)."""
    pids = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if "raylet" in cmdline and ray_head.temp_dir in cmdline:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in proc.children(recursive=True):
                    if "ray::GradActor" in " ".join(child.cmdline()):
                        pids.add(child.pid)
    return pids


def _busy_actor(pids: set[int]) -> psutil.Process:
    """One of these actors while it runs a call (Ray titles it ``ray::GradActor.run``
    then; the idle express actor stays ``ray::GradActor``)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                if "GradActor." in " ".join(proc.cmdline()):
                    return proc
            except psutil.NoSuchProcess:
                continue
    raise AssertionError("no actor of this server was seen running a call")


@pytest.fixture(scope="module")
def narrow(ray_head: RayNode) -> Iterator[tuple[ServerProcess, set[int]]]:
    """A server whose in-flight budget (8 MiB) is far below the requests sent here,
    so that only a pipelined stream (a 4 MiB window) can take them; and the pids
    of its actors."""
    before = _ray_actor_pids(ray_head)
    extra = ["--stream-window-bytes", str(WINDOW), "--max-inflight-bytes", str(INFLIGHT)]
    with start_server(ray_head, extra=extra) as server:
        yield server, _ray_actor_pids(ray_head) - before


@pytest.fixture(scope="module")
def narrow_stub(
    narrow: tuple[ServerProcess, set[int]],
) -> Iterator[pb_grpc.GradientServiceStub]:
    with grpc.insecure_channel(narrow[0].address, options=OPTIONS) as channel:
        yield pb_grpc.GradientServiceStub(channel)


@pytest.fixture
def stub(address: str) -> Iterator[pb_grpc.GradientServiceStub]:
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        yield pb_grpc.GradientServiceStub(channel)


def _request(
    source: str,
    inputs: dict[str, np.ndarray],
    ops: Sequence[int],
    **extra: dict[str, np.ndarray] | np.ndarray,
) -> pb.ComputeRequest:
    req = pb.ComputeRequest(function=source, ops=list(ops), batched=True)
    for name, arr in inputs.items():
        req.inputs[name].CopyFrom(wire.encode(arr))
    for field, value in extra.items():
        if isinstance(value, np.ndarray):
            getattr(req, field).CopyFrom(wire.encode(value))
        else:
            for name, arr in value.items():
                getattr(req, field)[name].CopyFrom(wire.encode(arr))
    return req


def _parts(req: pb.ComputeRequest, by_rows: bool = True) -> Iterator[pb.ComputeRequestPart]:
    header = pb.ComputeRequest()
    header.CopyFrom(req)
    slots = wire.request_slots(header)
    blobs = [t.data for t in slots]
    for tensor in slots:
        tensor.data = b""
    yield pb.ComputeRequestPart(header=header)
    points = slots[0].shape[0]
    pieces = wire.split_rows(blobs, points) if by_rows else wire.split_pieces(blobs)
    for piece in pieces:
        yield pb.ComputeRequestPart(piece=piece)


def _streamed(
    stub: pb_grpc.GradientServiceStub,
    parts: Iterator[pb.ComputeRequestPart],
    replies: Iterator[pb.ComputeResponsePart] | None = None,
) -> tuple[pb.ComputeResponse, list[bytes]]:
    """The reply's header (with the final metadata in place) and its slots' bytes
    (``replies``: a reply's parts received already, instead of calling)."""
    header: pb.ComputeResponse | None = None
    assembler: wire.PieceAssembler | None = None
    final: pb.ComputeMetadata | None = None
    for part in replies or stub.ComputeStream(parts, timeout=120):
        kind = part.WhichOneof("part")
        if kind == "header":
            header = part.header
            slots = wire.result_slots(header.results)
            assembler = wire.PieceAssembler([wire.expected_bytes(t) for t in slots])
        elif kind == "metadata":
            final = part.metadata
        else:
            assert assembler is not None and final is None, "a piece out of place"
            assembler.add(part.piece)
    assert header is not None and assembler is not None
    if final is not None:
        header.metadata.CopyFrom(final)
    return header, assembler.finish()


def _unary_bytes(stub: pb_grpc.GradientServiceStub, req: pb.ComputeRequest) -> list[bytes]:
    resp = stub.Compute(req, timeout=120)
    return [t.data for t in wire.result_slots(resp.results)]


def _rng_points(n: int, dim: int, dtype: str = "float64") -> np.ndarray:
    return np.random.default_rng(n + dim).uniform(-1.5, 1.5, size=(n, dim)).astype(dtype)


# ---------------------------------------------------------------- same bytes


CASES = {
    "rosenbrock grad": lambda: _request(ROSENBROCK, {"x": _rng_points(20_000, 10)}, [pb.OP_GRAD]),
    "two inputs, value and grad": lambda: _request(
        "sum(sin(x) * y) + dot(x, x)",
        {"x": _rng_points(12_000, 6), "y": _rng_points(12_000, 3)[:, :1].copy()},
        [pb.OP_VALUE, pb.OP_GRAD],
    ),
    "float32 jacobian": lambda: _request(
        "tanh(x) * 2.0 + x[0]", {"x": _rng_points(16_000, 5, "float32")}, [pb.OP_JACOBIAN]
    ),
    "vjp with cotangents": lambda: _request(
        "exp(x * 0.5)",
        {"x": _rng_points(20_000, 4)},
        [pb.OP_VJP],
        cotangent=_rng_points(20_001, 4)[1:].copy(),
    ),
    "grad, with tangents it does not use": lambda: _request(
        ROSENBROCK,
        {"x": _rng_points(20_000, 10)},
        [pb.OP_GRAD],
        tangents={"x": _rng_points(20_001, 10)[1:].copy()},
    ),
    "hvp with vectors": lambda: _request(
        ROSENBROCK, {"x": _rng_points(10_000, 8)}, [pb.OP_HVP], vector={"x": _rng_points(10_000, 8)}
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_pipelined_reply_is_the_whole_paths_bytes(
    stub: pb_grpc.GradientServiceStub, case: str
) -> None:
    req = CASES[case]()
    whole = _unary_bytes(stub, req)  # unary Compute: received, computed and sent whole
    header, streamed = _streamed(stub, _parts(req))
    assert header.metadata.chunks > 1 and header.metadata.points == req.inputs["x"].shape[0]
    assert streamed == whole


def test_the_bytes_do_not_depend_on_the_window(
    narrow_stub: pb_grpc.GradientServiceStub,
) -> None:
    """A window smaller than the whole path's chunks cuts them smaller: same bytes."""
    req = _request(ROSENBROCK, {"x": _rng_points(100_000, 10)}, [pb.OP_GRAD])
    whole = _unary_bytes(narrow_stub, req)
    header, streamed = _streamed(narrow_stub, _parts(req))
    assert header.metadata.chunks > 4 and header.metadata.workers == 2
    assert streamed == whole


def test_the_sdk_gets_the_whole_calls_metadata(client: gradserve.Client) -> None:
    x = _rng_points(60_000, 10)
    result = client.compute(ROSENBROCK, {"x": x}, ["value", "grad"], batched=True)
    assert result.metadata.chunks == 4 and result.metadata.workers == 2
    assert result.metadata.points == 60_000 and result["grad"].shape == x.shape


# ---------------------------------------------------------------- a bounded window


class _PeakRSS:
    """The highest private resident size of a process, sampled every few ms."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.base = self.peak = self._private()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.003):
            self.peak = max(self.peak, self._private())

    def _private(self) -> int:
        info = self._proc.memory_info()
        return int(info.rss - info.shared)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_batch_many_times_the_window_goes_through_it(
    narrow: tuple[ServerProcess, set[int]],
) -> None:
    """64 MB of request and reply through an 8 MiB in-flight budget (the whole path
    would be refused), with the server's memory growing by well under that."""
    server, _ = narrow
    x = _rng_points(400_000, 10)  # 32 MB in, 32 MB out
    with gradserve.Client(server.address, timeout=120) as client:
        client.grad("2 * dot(x, x)", {"x": x[:1000]}, batched=True)  # warm
        with _PeakRSS(server.proc.pid) as rss:
            got = client.grad("2 * dot(x, x)", {"x": x}, batched=True)
    assert got.tobytes() == (4 * x).tobytes()  # exact: a power of two
    # private memory (Ray's object store is shared memory, mapped in): the whole
    # path grows by ~70 MiB here (request and reply), the pipelined one by 24-27 on
    # the quiet machine (the same for the code before the workers' direct channel)
    # and 33 once in a full-suite run
    grew = (rss.peak - rss.base) >> 20
    assert grew < 40, f"the server's private memory grew by {grew} MiB"


def test_several_inputs_arrive_row_by_row_within_the_window(
    narrow: tuple[ServerProcess, set[int]],
) -> None:
    """The SDK sends a batch's tensors row by row, so two 16 MB inputs go through an
    8 MiB budget (sent one after the other, the first would have to be held)."""
    x, y = _rng_points(200_000, 10), _rng_points(200_001, 10)[1:]
    with gradserve.Client(narrow[0].address, timeout=120) as client:
        got = client.grad("dot(x, y)", {"x": x, "y": y}, batched=True)
    assert got["x"].tobytes() == y.tobytes() and got["y"].tobytes() == x.tobytes()


def test_replies_larger_than_estimated_stay_within_the_budget(
    narrow: tuple[ServerProcess, set[int]],
) -> None:
    """A Jacobian's size is known only once the function ran (estimated from a
    scalar output): here four times the estimate, 26 MB through the 8 MiB budget."""
    x = _rng_points(200_000, 4)
    with gradserve.Client(narrow[0].address, timeout=120) as client:
        got = client.jacobian("x * 2.0", {"x": x}, batched=True)
    assert got.shape == (200_000, 4, 4)
    assert got.tobytes() == np.broadcast_to(2.0 * np.eye(4), got.shape).tobytes()


def test_tensors_sent_one_after_another_are_held_within_the_budget(
    narrow_stub: pb_grpc.GradientServiceStub,
) -> None:
    x, y = _rng_points(200_000, 10), _rng_points(200_001, 10)[1:]
    req = _request("dot(x, y)", {"x": x, "y": y}, [pb.OP_GRAD])
    with pytest.raises(grpc.RpcError) as info:
        _streamed(narrow_stub, _parts(req, by_rows=False))
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "out of row order" in str(info.value.details())
    small = _request("dot(x, y)", {"x": x[:20_000], "y": y[:20_000]}, [pb.OP_GRAD])
    _, blobs = _streamed(narrow_stub, _parts(small, by_rows=False))  # fits: held, then run
    assert blobs == [y[:20_000].tobytes(), x[:20_000].tobytes()]


# ---------------------------------------------------------------- errors


def _slow_parts(
    req: pb.ComputeRequest, then: pb.TensorPiece | None
) -> Iterator[pb.ComputeRequestPart]:
    """The first half of a request (chunks get dispatched), a pause, then ``then``."""
    parts = list(_parts(req))
    yield from parts[: len(parts) // 2]
    time.sleep(0.5)
    if then is not None:
        yield pb.ComputeRequestPart(piece=then)


def test_a_bad_piece_mid_stream_is_invalid_and_the_server_serves_on(
    narrow: tuple[ServerProcess, set[int]], narrow_stub: pb_grpc.GradientServiceStub
) -> None:
    x = _rng_points(200_000, 10)
    req = _request(ROSENBROCK, {"x": x}, [pb.OP_GRAD])
    bad = pb.TensorPiece(slot=0, offset=x.nbytes - 8, data=b"\0" * 16)  # past the end
    with pytest.raises(grpc.RpcError) as info:
        _streamed(narrow_stub, _slow_parts(req, bad))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "overruns slot 0" in str(info.value.details())
    with gradserve.Client(narrow[0].address, timeout=60) as client:
        np.testing.assert_array_equal(client.grad("2 * dot(x, x)", {"x": [1.0, 2.0]}), [4.0, 8.0])


def test_a_nan_in_a_later_chunk_names_its_point_in_the_batch(
    narrow_stub: pb_grpc.GradientServiceStub,
) -> None:
    x = _rng_points(200_000, 10)
    x[150_000, 3] = np.nan
    with pytest.raises(grpc.RpcError) as info:
        _streamed(narrow_stub, _parts(_request(ROSENBROCK, {"x": x}, [pb.OP_GRAD])))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN at point 150000, index (3,)" in str(info.value.details())


def test_a_client_that_goes_away_cancels_its_chunks(
    narrow: tuple[ServerProcess, set[int]], narrow_stub: pb_grpc.GradientServiceStub
) -> None:
    server, _ = narrow
    req = _request(ROSENBROCK, {"x": _rng_points(600_000, 10)}, [pb.OP_GRAD])
    call = narrow_stub.ComputeStream(_parts(req), timeout=120)
    assert next(call).HasField("header")  # the first chunk is back, the rest are running
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() is grpc.StatusCode.CANCELLED
    deadline = time.monotonic() + 10
    while "status=CANCELLED" not in server.output and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "status=CANCELLED" in server.output
    # nothing is left held: a request that needs the whole in-flight budget is admitted
    header, _ = _streamed(narrow_stub, _parts(req))
    assert header.metadata.points == 600_000


def test_a_worker_lost_mid_stream_costs_only_time(
    narrow: tuple[ServerProcess, set[int]], narrow_stub: pb_grpc.GradientServiceStub
) -> None:
    """A worker killed while the batch runs: its chunk runs again elsewhere (or, if
    it was between chunks, the next one goes elsewhere), and the reply is whole."""
    server, actors = narrow
    assert len(actors) == 3, actors  # 2 workers and the express actor, all of them ours
    x = _rng_points(600_000, 10)
    call = narrow_stub.ComputeStream(
        _parts(_request("2 * dot(x, x)", {"x": x}, [pb.OP_GRAD])), timeout=120
    )
    parts = [next(call)]  # the first chunk is back: the others are running or queued
    _busy_actor(actors).kill()
    parts += list(call)
    _, blobs = _streamed(narrow_stub, iter([]), replies=iter(parts))
    assert blobs == [(4 * x).tobytes()]  # exact: a power of two
    with gradserve.Client(server.address, timeout=120) as client:
        # (killed between two of its chunks, the pool finds out on its next call)
        deadline = time.monotonic() + 30
        while "replacing worker" not in server.output and time.monotonic() < deadline:
            client.grad("2 * dot(x, x)", {"x": x[:4000]}, batched=True)
            time.sleep(0.2)
    assert "replacing worker" in server.output
