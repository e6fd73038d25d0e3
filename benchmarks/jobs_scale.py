"""A 5,000,000-point job: wall time, throughput and the server's peak memory.

Starts its own server (embedded Ray), submits one job whose tasks sample their points
on the server, waits for it, streams the results back and checks them against the
closed form, while a thread polls the server process's RSS. The point of the number:
results stream to disk chunk by chunk and back out piece by piece, so the server's
peak stays near its inputs, far below the job's total results.

Run: ``python benchmarks/jobs_scale.py [--points 5000000] [--tasks 1] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from _harness import fmt_time, start_server, table

import gradserve

FUNCTION = "sum(sin(x) * x)"  # gradient: sin(x) + x cos(x)


class PeakRss:
    """Polls a process's resident set size in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=5_000_000)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--dim", type=int, default=2, help="elements per point")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    per_task = args.points // args.tasks
    job_spec = {
        "name": "jobs-scale",
        "tasks": [
            {"id": f"t{i}", "function": FUNCTION, "ops": ["grad"], "inputs": {"x": {"sample": {
                "dist": "normal", "shape": [args.dim], "count": per_task, "seed": i}}}}
            for i in range(args.tasks)
        ],
    }  # fmt: skip
    result_bytes = args.tasks * per_task * args.dim * 8
    with start_server(args.workers) as server:
        idle_rss = psutil.Process(server.proc.pid).memory_info().rss
        with (
            gradserve.Client(server.address, timeout=600) as client,
            PeakRss(server.proc.pid) as rss,
        ):
            started = time.perf_counter()
            job = client.submit(job_spec)
            status = job.wait(timeout=3600)
            ran = time.perf_counter() - started
            assert status.state == "succeeded", status
            fetched = time.perf_counter()
            points = 0
            for result in job.results():
                x = np.random.default_rng(result.task_index).normal(
                    0.0, 1.0, size=(per_task, args.dim)
                )
                np.testing.assert_allclose(
                    result.outputs["grad"], np.sin(x) + x * np.cos(x), rtol=1e-12
                )
                points += len(result.outputs["grad"])
            fetch = time.perf_counter() - fetched
        cmd = list(server.proc.args)  # type: ignore[arg-type]
        data_dir = Path(str(cmd[cmd.index("--data-dir") + 1]))
        on_disk = sum(p.stat().st_size for p in data_dir.rglob("*.npy"))
    assert points == args.tasks * per_task
    mib = 1024 * 1024
    print(
        table(
            f"A {points:,}-point job ({args.tasks} task(s), grad of {FUNCTION}, x in R^{args.dim}, "
            f"{args.workers} workers)",
            ["measure", "value"],
            [
                ["submit -> succeeded", fmt_time(ran)],
                ["throughput", f"{points / ran:,.0f} points/s"],
                ["fetch + verify results", fmt_time(fetch)],
                [
                    "results (float64)",
                    f"{result_bytes / mib:.0f} MiB ({on_disk / mib:.0f} on disk)",
                ],
                ["server RSS idle", f"{idle_rss / mib:.0f} MiB"],
                ["server RSS peak", f"{rss.peak / mib:.0f} MiB"],
                ["peak - idle", f"{(rss.peak - idle_rss) / mib:.0f} MiB"],
            ],
        )
    )


if __name__ == "__main__":
    main()
