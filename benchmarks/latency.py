"""Latency: a unary grad of a 10-dimensional function vs a bare gRPC round trip.

The floor is the standard grpc.health.v1 ``Check`` against the same server over
its own channel: what any gRPC call to it costs with no work. The unary grad is
the SDK's ``client.grad(fn, x)`` for one point, end to end.

Run alone: ``python benchmarks/latency.py [--quick]`` (starts its own server).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import torch
from _harness import fmt_time, percentile, start_server, table
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gradserve

FUNCTION = "sum(sin(x) * x ** 2) + 2 * dot(x, x)"


def _samples(fn: Callable[[], Any], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(address: str, quick: bool) -> dict[str, Any]:
    n = 100 if quick else 500
    warmup = 20 if quick else 50
    x = np.linspace(-1.0, 1.0, 10)
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        with gradserve.Client(address) as client:
            # interleave the two in rounds so drift on a busy machine hits both alike
            floor: list[float] = []
            grad: list[float] = []
            per_round = max(10, n // 5)
            for _ in range(n // per_round):
                floor += _samples(lambda: health.Check(health_pb2.HealthCheckRequest()),
                                  per_round, warmup)  # fmt: skip
                grad += _samples(lambda: client.grad(FUNCTION, x), per_round, warmup)
    finally:
        channel.close()
    xt = torch.from_numpy(x)
    g = torch.func.grad(lambda t: torch.sum(torch.sin(t) * t**2) + 2 * torch.dot(t, t))
    local = _samples(lambda: g(xt), n, warmup)
    out = {
        "function": FUNCTION,
        "calls": len(grad),
        "health_s": floor,
        "grad_s": grad,
        "in_process_s": local,
    }
    for key in ("health", "grad", "in_process"):
        out[f"{key}_p50"] = percentile(out[f"{key}_s"], 50)
        out[f"{key}_p99"] = percentile(out[f"{key}_s"], 99)
    out["ratio_p50"] = out["grad_p50"] / out["health_p50"]
    out["ratio_p99"] = out["grad_p99"] / out["health_p99"]
    return out


def render(r: dict[str, Any]) -> str:
    rows = [
        ["health Check (floor)", fmt_time(r["health_p50"]), fmt_time(r["health_p99"]), "1.00"],
        ["unary grad, 10-dim", fmt_time(r["grad_p50"]), fmt_time(r["grad_p99"]),
         f"{r['ratio_p50']:.2f}"],
        ["in-process torch.func.grad", fmt_time(r["in_process_p50"]),
         fmt_time(r["in_process_p99"]), "-"],
    ]  # fmt: skip
    return table(
        f"3. Latency ({r['calls']} calls each): unary grad vs a bare gRPC round trip; "
        "goal p50 within 3x of the floor",
        ["call", "p50", "p99", "p50 / floor"],
        rows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    with start_server(2) as server:
        r = run(server.address, args.quick)
    print(render(r))


if __name__ == "__main__":
    main()
