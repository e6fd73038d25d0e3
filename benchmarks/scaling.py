"""Scaling: service throughput with 1 and 2 workers (in-process with 1 and 2 threads).

Each worker count gets its own server (and its own embedded Ray), started after the
previous one stopped, so they never share the machine's two cores.

Run alone: ``python benchmarks/scaling.py [--quick]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import throughput
from _harness import fmt_rate, start_server, table

CASES = [c for c in throughput.CASES if c.name in ("rosenbrock", "mlp")]


def points(quick: bool) -> list[int]:
    return [100_000] if quick else [100_000, 1_000_000]


def run_one(address: str, workers: int, quick: bool) -> list[dict[str, Any]]:
    """Grad throughput on a server with ``workers`` workers (in-process: as many threads)."""
    rows = throughput.run(address, workers, quick, ops=("grad",), cases=CASES, points=points(quick))
    for r in rows:
        r["server_workers"] = workers
    return rows


def run(quick: bool, two_worker_address: str | None = None) -> list[dict[str, Any]]:
    """Both worker counts; reuses a running 2-worker server when given its address."""
    rows: list[dict[str, Any]] = []
    if two_worker_address:
        rows += run_one(two_worker_address, 2, quick)
    else:
        with start_server(2) as server:
            rows += run_one(server.address, 2, quick)
    with start_server(1) as server:
        rows += run_one(server.address, 1, quick)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    one = {(r["function"], r["points"]): r for r in rows if r["server_workers"] == 1}
    body = []
    for r in sorted(rows, key=lambda r: (r["function"], r["points"], r["server_workers"])):
        base = one.get((r["function"], r["points"]))
        speed = r["service_pts_per_s"] / base["service_pts_per_s"] if base else float("nan")
        local = r["in_process_pts_per_s"] / base["in_process_pts_per_s"] if base else float("nan")
        body.append([
            r["function"], f"{r['points']:,}", str(r["server_workers"]),
            fmt_rate(r["service_pts_per_s"]), f"{speed:.2f}x",
            fmt_rate(r["in_process_pts_per_s"]), f"{local:.2f}x", f"{r['ratio']:.2f}",
        ])  # fmt: skip
    return table(
        "4. Scaling (grad, points/s, median): workers (service) / threads (in-process) "
        "on this 2-core machine",
        ["function", "points", "workers", "service", "vs 1 worker", "in-process",
         "vs 1 thread", "ratio"],
        body,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    print(render(run(args.quick)))


if __name__ == "__main__":
    main()
