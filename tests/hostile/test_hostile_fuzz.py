"""A bounded fuzz of the raw protocol: random and mutated ComputeRequest, CheckRequest
and ComputeStream messages (and bytes that are no message at all) sent through the
generated stub. No status may be INTERNAL or UNKNOWN, no call may hang, and the
server's memory must come back.

It runs GRADSERVE_FUZZ_SECONDS (4 in `make test`, 600 in `make test-hostile`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cluster import ServerProcess
from support.hostile import Watch

from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

SECONDS = float(os.environ.get("GRADSERVE_FUZZ_SECONDS", "4"))
CALL_TIMEOUT = 30.0
# a call that takes longer than this has hung (the server's answers here are refusals
# or tiny computations)
HANG_S = 20.0
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

SOURCES = [
    "sum(x * x)", "x * 2.0", "sin(x) + y", "sum(x ** 3)", "dot(x, x)", "x",
    "def f(x):\n    return sum(exp(x))", "sum(", "", "__import__('os')", "zeros(10**12)",
    "sum(x) + sum(y) + sum(z)", "x @ x", "reshape(x, (-1,))",
]  # fmt: skip
NAMES = st.sampled_from(["x", "y", "z", "", "w", "x" * 300, "\u00e9"])
DIM = st.one_of(
    st.integers(-2, 6),
    st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, -(2**63), 134_217_728, 10_000]),
)
SHAPE = st.lists(DIM, max_size=4) | st.lists(st.just(1), min_size=30, max_size=70)


@st.composite
def tensors(draw: Any) -> pb.Tensor:
    dtype = draw(st.sampled_from([0, 1, 2, 1, 2, 7]))
    shape = draw(SHAPE)
    msg = pb.Tensor(dtype=dtype, shape=shape)
    count = 1
    for d in shape:
        count *= d
    itemsize = 4 if dtype == 1 else 8
    if 0 <= count * itemsize <= 4096 and draw(st.booleans()):
        values = draw(st.sampled_from([0.5, -1.0, np.nan, np.inf, 1e308, 0.0]))
        with np.errstate(over="ignore"):  # 1e308 as float32 is inf: fine, it is a fuzz
            msg.data = np.full(count, values, dtype="<f4" if dtype == 1 else "<f8").tobytes()
    else:
        msg.data = draw(st.binary(max_size=64))
    return msg


@st.composite
def compute_requests(draw: Any) -> pb.ComputeRequest:
    req = pb.ComputeRequest(
        function=draw(st.sampled_from(SOURCES) | st.text(max_size=40)),
        ops=draw(st.lists(st.integers(-1, 9), max_size=4)),
        wrt=draw(st.lists(NAMES, max_size=2)),
        batched=draw(st.booleans()),
        dtype=draw(st.integers(0, 3)),
        jacobian_mode=draw(st.integers(0, 4)),
        chunk_size=draw(st.sampled_from([0, 0, 1, -1, 2**40, -(2**63)])),
    )
    for name in draw(st.lists(NAMES, max_size=3, unique=True)):
        req.inputs[name].CopyFrom(draw(tensors()))
    if draw(st.booleans()):
        req.cotangent.CopyFrom(draw(tensors()))
    for field in ("tangents", "vector"):
        for name in draw(st.lists(NAMES, max_size=2, unique=True)):
            getattr(req, field)[name].CopyFrom(draw(tensors()))
    return req


@st.composite
def check_requests(draw: Any) -> pb.CheckRequest:
    req = pb.CheckRequest(
        function=draw(st.sampled_from(SOURCES)),
        batched=draw(st.booleans()),
        kind=draw(st.integers(0, 5)),
        wrt=draw(st.lists(NAMES, max_size=2)),
    )
    for name in draw(st.lists(NAMES, min_size=1, max_size=2, unique=True)):
        spec = req.inputs[name]
        if draw(st.booleans()):
            spec.tensor.CopyFrom(draw(tensors()))
        else:
            sample = spec.sample
            sample.shape[:] = draw(st.lists(DIM, max_size=3))
            sample.count = draw(st.sampled_from([1, 3, 0, -5, 2**40, 160_000_000]))
            lo, hi = draw(st.sampled_from([(0, 1), (-1e308, 1e308), (1, 0), (np.nan, 1)]))
            if draw(st.booleans()):
                sample.distribution.uniform.low, sample.distribution.uniform.high = lo, hi
            else:
                sample.distribution.normal.mean, sample.distribution.normal.std = lo, hi
    for _ in range(draw(st.integers(0, 2))):
        req.claims.add(input=draw(NAMES), input2=draw(NAMES), source=draw(st.sampled_from(SOURCES)))
    req.options.order = draw(st.integers(-1, 3))
    if draw(st.booleans()):
        req.options.eps = draw(st.sampled_from([0.0, -1.0, np.nan, 1e-300, 1e300]))
    return req


@st.composite
def stream_parts(draw: Any) -> list[pb.ComputeRequestPart]:
    parts = []
    if draw(st.integers(0, 9)) > 0:
        parts.append(pb.ComputeRequestPart(header=draw(compute_requests())))
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 15)) == 0:
            parts.append(pb.ComputeRequestPart(header=draw(compute_requests())))
            continue
        piece = pb.TensorPiece(
            slot=draw(st.integers(-2, 4) | st.just(2**31 - 1)),
            offset=draw(st.integers(-8, 64) | st.sampled_from([2**62, -(2**63)])),
            data=draw(st.binary(max_size=96)),
        )
        parts.append(pb.ComputeRequestPart(piece=piece))
    return parts


def mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    raw = bytearray(data)
    for at, value in flips:
        if raw:
            raw[at % len(raw)] = value
    return bytes(raw)


class Fuzzer:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.GradientServiceStub(self.channel)
        self.raw = {
            name: self.channel.unary_unary(f"/gradserve.v1.GradientService/{name}")
            for name in ("Compute", "Check")
        }
        self.calls = 0
        self.seen: dict[grpc.StatusCode, int] = {}

    def _record(self, what: str, started: float, code: grpc.StatusCode, details: str) -> None:
        seconds = time.monotonic() - started
        self.calls += 1
        self.seen[code] = self.seen.get(code, 0) + 1
        assert code not in BAD, f"{what}: {code.name}: {details}"
        assert seconds < HANG_S, f"{what}: took {seconds:.1f} s"

    def unary(self, method: Any, what: str, request: Any) -> None:
        started = time.monotonic()
        try:
            method(request, timeout=CALL_TIMEOUT)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), str(error.details())
        self._record(what, started, code, details)

    def stream(self, parts: list[pb.ComputeRequestPart]) -> None:
        started = time.monotonic()
        try:
            for _ in self.stub.ComputeStream(iter(parts), timeout=CALL_TIMEOUT):
                pass
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), str(error.details())
        self._record(f"ComputeStream {parts!r:.300}", started, code, details)


def test_the_raw_protocol_survives_random_and_mutated_messages(
    hostile_server: ServerProcess,
) -> None:
    fuzzer = Fuzzer(hostile_server.address)
    flips = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)
    quick = settings(
        max_examples=8, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip

    @quick
    @given(req=compute_requests(), check=check_requests(), parts=stream_parts(), flips=flips)
    def one_round(
        req: pb.ComputeRequest, check: pb.CheckRequest, parts: list[pb.ComputeRequestPart],
        flips: list[tuple[int, int]],
    ) -> None:  # fmt: skip
        fuzzer.unary(fuzzer.stub.Compute, f"Compute {req!r:.300}", req)
        fuzzer.unary(fuzzer.stub.Check, f"Check {check!r:.300}", check)
        fuzzer.stream(parts)
        # the same messages with a few bytes changed, as bytes: often no message at all
        fuzzer.unary(fuzzer.raw["Compute"], "Compute (mutated)",
                     mutate(req.SerializeToString(), flips))  # fmt: skip
        fuzzer.unary(fuzzer.raw["Check"], "Check (mutated)",
                     mutate(check.SerializeToString(), flips))  # fmt: skip

    deadline = time.monotonic() + SECONDS
    with Watch(hostile_server) as watch:
        while time.monotonic() < deadline:
            one_round()
    fuzzer.channel.close()
    print(f"fuzz: {fuzzer.calls} calls in {SECONDS:.0f} s: {fuzzer.seen}")
    assert fuzzer.calls > 0
    # the fuzz reached past the first refusals: some calls were answered
    assert set(fuzzer.seen) - {grpc.StatusCode.INVALID_ARGUMENT}, fuzzer.seen
    watch.check()
