"""Pipelined ComputeStream A/B: the same batch through servers that differ only in
``--stream-window-bytes`` (0: received whole, computed, then sent), interleaved with
the in-process ``vmap(grad(f))`` a user would write, in one run.

Per side: median wall time, points/s, the ratio to in-process, the server
process's peak resident memory above its idle level (private: Ray's object store is
shared memory mapped into it), and the CPU seconds per call of the client process,
the server process, and the workers (the chunks' seconds): on a 2-core machine their
sum over 2 bounds the wall time from below, however well transport and compute
overlap. Also the SDK's sending side alone (cutting and
serialising the request's parts), to see whether the client is the bottleneck.

Run: ``python benchmarks/pipeline_ab.py [--points 200000] [--reps 7]``
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import torch
from _harness import fmt_rate, fmt_time, median, table
from support.cluster import ServerProcess, start_ray_head, start_server
from throughput import rosenbrock

import gradserve
from gradserve import wire
from gradserve._core import OutgoingCompute
from gradserve.v1 import gradserve_pb2 as pb

COLUMNS = ["side", "wall", "points/s", "vs in-process", "server peak (private)",
           "client CPU", "server CPU", "worker s"]  # fmt: skip
SOURCE = "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)"


class PeakMemory:
    """A process's peak private resident bytes above where it started."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self._base = self._private()
        self.peak = 0
        self._cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _private(self) -> int:
        info = self._proc.memory_info()
        return int(info.rss - info.shared)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._private() - self._base)
            self._cpu = time.thread_time()

    def cpu(self) -> float:
        """The CPU seconds this sampler took so far (not the client's)."""
        return self._cpu

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def sending_side(x: np.ndarray, reps: int) -> float:
    """Seconds the SDK spends producing a batched request's parts (the header and
    its pieces, cut row by row) and serialising them, as gRPC does before sending."""
    header = pb.ComputeRequest(function=SOURCE, ops=[pb.OP_GRAD], batched=True)
    header.inputs["x"].CopyFrom(wire.encode(x, with_data=False))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for part in OutgoingCompute(header, [x]).parts():
            part.SerializeToString()
        times.append(time.perf_counter() - t0)
    return median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--windows",
        default="0,33554432,8388608",
        help="the servers' --stream-window-bytes, comma-separated (0: not pipelined)",
    )
    args = p.parse_args()
    windows = [int(w) for w in args.windows.split(",")]
    x = np.random.default_rng(0).uniform(-1.5, 1.5, size=(args.points, 10))
    xt = torch.from_numpy(x)
    torch.set_num_threads(args.workers)
    local = torch.func.vmap(torch.func.grad(rosenbrock))
    ray = start_ray_head()
    servers: list[ServerProcess] = []
    try:
        for w in windows:
            servers.append(
                start_server(ray, num_workers=args.workers, extra=["--stream-window-bytes", str(w)])
            )
        clients = [gradserve.Client(s.address, timeout=300) for s in servers]
        sides: list[tuple[str, Callable[[], Any], int | None]] = [
            (f"window {w >> 20} MiB" if w else "whole (no pipelining)",
             lambda c=c: c.compute(SOURCE, {"x": x}, ["grad"], batched=True), s.proc.pid)
            for w, c, s in zip(windows, clients, servers, strict=True)
        ]  # fmt: skip
        sides.append(("in-process vmap(grad)", lambda: local(xt), None))
        times: dict[str, list[float]] = {name: [] for name, _, _ in sides}
        peaks: dict[str, int] = {name: 0 for name, _, _ in sides}
        cpu: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in sides}
        answers = {}
        for rep in range(args.reps + 1):
            order = sides if rep % 2 else sides[::-1]
            for name, fn, pid in order:
                if pid is None:
                    t0 = time.perf_counter()
                    answers[name] = np.asarray(fn())
                    elapsed = time.perf_counter() - t0
                else:
                    server = psutil.Process(pid).cpu_times()
                    with PeakMemory(pid) as mem:
                        client_cpu = time.process_time()
                        t0 = time.perf_counter()
                        result = fn()
                        elapsed = time.perf_counter() - t0
                        client_cpu = time.process_time() - client_cpu - mem.cpu()
                    after = psutil.Process(pid).cpu_times()
                    answers[name] = result["grad"]
                    peaks[name] = max(peaks[name], mem.peak)
                    if rep:
                        cpu[name].append((
                            client_cpu,
                            after.user + after.system - server.user - server.system,
                            result.metadata.compute_seconds,
                        ))  # fmt: skip
                if rep:  # the first round warms up
                    times[name].append(elapsed)
        served = [answers[name] for name, _, pid in sides if pid is not None]
        identical = all(a.tobytes() == served[0].tobytes() for a in served)
        local_s = median(times["in-process vmap(grad)"])
        rows = []
        for name, _, pid in sides:
            s = median(times[name])
            used = [median([c[i] for c in cpu[name]]) if cpu[name] else 0.0 for i in range(3)]
            rows.append([
                name, fmt_time(s), fmt_rate(args.points / s), f"{local_s / s:.2f}",
                "—" if pid is None else f"{peaks[name] / 2**20:.0f} MiB",
                *(["—"] * 3 if pid is None else [fmt_time(u) for u in used]),
            ])  # fmt: skip
        print(
            table(
                f"Rosenbrock grad, {args.points:,} points x 10 (float64), {args.workers} workers;"
                f" medians of {args.reps}, interleaved; replies bit-identical: {identical}",
                COLUMNS,
                rows,
            )
        )
        print(
            f"SDK sending side alone (cut + serialise the {x.nbytes / 1e6:.0f} MB request's "
            f"parts): {fmt_time(sending_side(x, args.reps))}"
        )
        for c in clients:
            c.close()
    finally:
        for s in servers:
            s.stop()
        ray.stop()


if __name__ == "__main__":
    main()
