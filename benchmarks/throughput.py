"""Throughput: batched grad and hessian through the service vs in-process torch.func.

The in-process side is the computation a user would write by hand:
``torch.func.vmap(torch.func.grad(f))(x)`` (or ``hessian``) on a tensor that is
already in memory, with ``torch.set_num_threads(W)`` for the service's W workers
of one thread each. The service side is the whole round trip from NumPy array to
NumPy array: SDK encode, gRPC, validation, chunking, Ray, torch.func, and back.

Run alone: ``python benchmarks/throughput.py [--quick]`` (starts its own server).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from _harness import fmt_rate, fmt_time, median, spread, start_server, table

import gradserve

HIDDEN = 16


def mlp_source(dim: int) -> str:
    """A one-hidden-layer MLP loss in the function language; weights built in the function."""
    return (
        "def f(x):\n"
        f"    W1 = reshape(sin(arange({HIDDEN * dim}) * 0.37), ({HIDDEN}, {dim}))\n"
        f"    b1 = cos(arange({HIDDEN}) * 0.11)\n"
        f"    w2 = sin(arange({HIDDEN}) * 0.73)\n"
        "    h = tanh(W1 @ x + b1)\n"
        "    return (dot(w2, h) - 1.0) ** 2\n"
    )


def mlp_torch(dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same MLP by hand; weights made once, outside (the in-process user's best case)."""
    d = torch.float64
    w1 = torch.sin(torch.arange(HIDDEN * dim, dtype=d) * 0.37).reshape(HIDDEN, dim)
    b1 = torch.cos(torch.arange(HIDDEN, dtype=d) * 0.11)
    w2 = torch.sin(torch.arange(HIDDEN, dtype=d) * 0.73)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (torch.dot(w2, torch.tanh(w1 @ x + b1)) - 1.0) ** 2

    return f


def quadratic(x: torch.Tensor) -> torch.Tensor:
    return 2 * torch.dot(x, x)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return torch.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


@dataclass(frozen=True)
class Case:
    name: str
    source: Callable[[int], str]
    torch_fn: Callable[[int], Callable[[torch.Tensor], torch.Tensor]]


CASES = [
    Case("quadratic", lambda d: "2 * dot(x, x)", lambda d: quadratic),
    Case(
        "rosenbrock",
        lambda d: "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)",
        lambda d: rosenbrock,
    ),
    Case("mlp", mlp_source, mlp_torch),
]

# Input dimension per point: grad at 10; hessian at 4 (its output is dim**2 per point).
DIMS = {"grad": 10, "hessian": 4}


def sizes(quick: bool) -> list[int]:
    return [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]


def reps_for(points: int, quick: bool) -> int:
    if quick:
        return 2
    return 3 if points >= 1_000_000 else 5


def in_process(op: str, f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    inner = torch.func.grad(f) if op == "grad" else torch.func.hessian(f)
    return torch.func.vmap(inner)


def _interleaved(
    service: Callable[[], Any], local: Callable[[], Any], reps: int, warmup: int
) -> tuple[list[float], list[float], Any]:
    """Alternate service and in-process calls, so drift on a shared machine hits both."""
    last = None
    for _ in range(warmup):
        last = service()
        local()
    svc: list[float] = []
    loc: list[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        last = service()
        svc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        local()
        loc.append(time.perf_counter() - t0)
    return svc, loc, last


def run(
    address: str,
    threads: int,
    quick: bool,
    ops: tuple[str, ...] = ("grad", "hessian"),
    cases: list[Case] | None = None,
    points: list[int] | None = None,
) -> list[dict[str, Any]]:
    """One row per (function, op, points): service and in-process points/s and their ratio."""
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    with gradserve.Client(address) as client:
        for op in ops:
            dim = DIMS[op]
            for case in cases or CASES:
                src, f = case.source(dim), case.torch_fn(dim)
                batched_f = in_process(op, f)
                for n in points or sizes(quick):
                    x = rng.uniform(-1.5, 1.5, size=(n, dim))
                    xt = torch.from_numpy(x)
                    reps = reps_for(n, quick)
                    svc, loc, last = _interleaved(
                        lambda: client.compute(src, {"x": x}, [op], batched=True),  # noqa: B023
                        lambda: batched_f(xt),  # noqa: B023
                        reps,
                        warmup=1 if n == (points or sizes(quick))[0] else 0,
                    )
                    # the service's answer agrees with the in-process one (a spot check)
                    head = min(n, 2000)
                    got = last[op][:head]
                    want = batched_f(xt[:head]).numpy()
                    meta = last.metadata
                    s, m = median(svc), median(loc)
                    rows.append({
                        "function": case.name, "op": op, "dim": dim, "points": n,
                        "service_s": svc, "in_process_s": loc,
                        "service_pts_per_s": n / s, "in_process_pts_per_s": n / m,
                        "ratio": m / s, "spread_service": spread(svc),
                        "spread_in_process": spread(loc),
                        "agree": bool(np.allclose(got, want, rtol=1e-9, atol=1e-9)),
                        "server_wall_s": meta.wall_seconds,
                        "worker_compute_s": meta.compute_seconds,
                        "chunks": meta.chunks, "workers": meta.workers,
                        "execution_path": meta.execution_path,
                    })  # fmt: skip
                    print(f"  {case.name:10s} {op:7s} {n:>9,d} pts: service {fmt_time(s)}, "
                          f"in-process {fmt_time(m)}, ratio {m / s:.2f}", flush=True)  # fmt: skip
    return rows


def render(rows: list[dict[str, Any]], threads: int) -> str:
    body = [
        [
            r["function"], r["op"], str(r["dim"]), f"{r['points']:,}",
            fmt_rate(r["service_pts_per_s"]), fmt_rate(r["in_process_pts_per_s"]),
            f"{r['ratio']:.2f}", fmt_time(r["server_wall_s"]),
            "yes" if r["agree"] else "NO",
        ]
        for r in rows
    ]  # fmt: skip
    return table(
        f"1. Throughput (points/s, median): service ({threads} workers x 1 thread) vs "
        f"in-process torch.func ({threads} threads); goal ratio >= 0.8 at >= 1e5 points",
        ["function", "op", "dim", "points", "service", "in-process", "ratio",
         "server wall", "agree"],
        body,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    with start_server(args.workers) as server:
        rows = run(server.address, args.workers, args.quick)
    print(render(rows, args.workers))


if __name__ == "__main__":
    main()
