"""64 concurrent clients for 60 s, small valid calls mixed with the hostile cases: no
status other than the expected ones, and the server's RSS back where it was.

Only in `make test-hostile`, which names this file (its name keeps it out of `make
test`, which collects test_*.py): it prints throughput,
p50/p99 of the valid calls and the server's RSS before, at peak and after.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from support.cluster import ServerProcess
from support.hostile import Watch, rss, stream_call

import gradserve
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

CLIENTS = 64
SECONDS = float(os.environ.get("GRADSERVE_LOAD_SECONDS", "60"))
OK = grpc.StatusCode.OK


def _status(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except gradserve.GradserveError as error:
        return grpc.StatusCode[error.code] if error.code else grpc.StatusCode.UNKNOWN
    return OK


def _header(shape: list[int]) -> pb.ComputeRequestPart:
    req = pb.ComputeRequest(function="sum(x)", ops=[pb.OP_VALUE])
    req.inputs["x"].CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=shape))
    return pb.ComputeRequestPart(header=req)


def _piece(offset: int, size: int) -> pb.ComputeRequestPart:
    return pb.ComputeRequestPart(piece=pb.TensorPiece(slot=0, offset=offset, data=b"\0" * size))


def cases(client: gradserve.Client, stub: Any) -> dict[str, tuple[Callable[[], Any], set[Any]]]:
    """Each case: the call, and the statuses it may end with."""
    x = np.linspace(-1, 1, 8)
    big = np.ones((40, 3000))
    huge = gradserve.uniform(0, 1, count=160_000_000)
    wide = gradserve.uniform(-1e308, 1e308, count=4)

    def raw_stream(parts: list[pb.ComputeRequestPart]) -> Callable[[], grpc.StatusCode]:
        return lambda: stream_call(stub, parts)[0]

    return {
        "value": (lambda: _status(lambda: client.value("sin(x)", x)), {OK}),
        "grad": (lambda: _status(lambda: client.grad("sum(x ** 2)", x)), {OK}),
        "check": (lambda: _status(lambda: client.check("sum(sin(x))", x)), {OK}),
        "jacobian 800 MB": (
            lambda: _status(lambda: client.jacobian("x * 1.0", np.ones(10_000))),
            {grpc.StatusCode.RESOURCE_EXHAUSTED},
        ),
        "hessian 2.9 GB": (
            lambda: _status(lambda: client.hessian("sum(x ** 3)", big, batched=True)),
            {grpc.StatusCode.RESOURCE_EXHAUSTED},
        ),
        "sample 160M": (
            lambda: _status(lambda: client.check("sum(x)", sample=huge)),
            {grpc.StatusCode.RESOURCE_EXHAUSTED},
        ),
        "header 3 GB": (
            raw_stream([_header([134_217_728])] * 1),
            {grpc.StatusCode.RESOURCE_EXHAUSTED},
        ),
        "overrun": (
            raw_stream([_header([1])] + [_piece(0, 1 << 20)] * 8),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
        "overlap": (
            raw_stream([_header([4]), _piece(0, 24), _piece(8, 8)]),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
        "uniform 1e308": (
            lambda: _status(lambda: client.check("sum(x)", sample=wide)),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
    }  # fmt: skip


VALID = ("value", "grad", "check")


def test_64_clients_mixed_with_hostile_cases(hostile_server: ServerProcess) -> None:
    results: list[tuple[str, grpc.StatusCode, float]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        options = [("grpc.max_receive_message_length", 64 << 20)]
        address = hostile_server.address
        with gradserve.Client(address, timeout=120) as client, \
                grpc.insecure_channel(address, options=options) as channel:  # fmt: skip
            table = cases(client, pb_grpc.GradientServiceStub(channel))
            names = list(table)
            while time.monotonic() < deadline:
                # four valid calls in five
                name = rng.choice(VALID) if rng.random() < 0.8 else rng.choice(names[3:])
                started = time.monotonic()
                code = table[name][0]()
                with lock:
                    results.append((name, code, time.monotonic() - started))

    with Watch(hostile_server, probe=False) as watch:
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        peak = watch.rss_before
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss(hostile_server))
            time.sleep(0.5)
        for t in threads:
            t.join()
    with gradserve.Client(hostile_server.address, timeout=30) as client:
        table = cases(client, None)
    unexpected = [(n, c) for n, c, _ in results if c not in table[n][1]]
    time.sleep(2)  # the server trims its heaps a second after the last failure
    valid = sorted(s for n, c, s in results if n in VALID)
    p50, p99 = valid[len(valid) // 2], valid[int(len(valid) * 0.99)]
    print(
        f"\n{CLIENTS} clients, {SECONDS:.0f} s: {len(results)} calls "
        f"({len(results) / SECONDS:.0f}/s), {len(valid)} valid: p50 "
        f"{p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
        f"server RSS {watch.rss_before / 1e6:.0f} MB before, {peak / 1e6:.0f} MB peak, "
        f"{rss(hostile_server) / 1e6:.0f} MB after"
    )
    assert not unexpected, unexpected[:10]
    assert {n for n, _, _ in results} == set(table)  # every case ran
    watch.check(settle_s=20)
