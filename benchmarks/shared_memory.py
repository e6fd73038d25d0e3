"""Shared memory against the wire: batched grad of the 10-dim Rosenbrock function at
200,000 points (16 MB in, 16 MB out), three ways interleaved in one run:

- wire: ``Client.grad(...)``, tensors through gRPC (ComputeStream at this size);
- shm: ``Client(shared_memory=True).grad(...)``, tensors through a shared-memory
  region the client registered (inputs read in place by the workers);
- shm array: the same with the input made in shared memory
  (``Client.shared_array``): not even copied into the segment;
- in-process: ``vmap(grad(f))`` on a tensor already in memory, one thread per worker.

Every call returns a NumPy array the caller owns (shm: lent, a view of the call's segment
that the client reuses only once the array is gone).
Also the resident memory of the server and of its workers after the runs, and the
server's own accounting (wall from validation to reply, worker compute summed).

Run alone: ``python benchmarks/shared_memory.py [--quick] [--points N]`` (starts its
own server with an embedded Ray).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import torch
from _harness import fmt_rate, fmt_time, median, spread, start_server, table

import gradserve

SOURCE = "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)"
DIM = 10


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return torch.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def rss_mb(server_pid: int) -> dict[str, float]:
    """Resident MB of the server process and of its Ray workers (GradActor)."""
    server = psutil.Process(server_pid)
    workers = 0.0
    for proc in server.children(recursive=True):
        try:
            if "GradActor" in " ".join(proc.cmdline()):
                workers += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"server": server.memory_info().rss / 2**20, "workers": workers / 2**20}


def run(address: str, server_pid: int, threads: int, points: int, reps: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    x = np.random.default_rng(0).uniform(-1.5, 1.5, size=(points, DIM))
    xt = torch.from_numpy(x)
    local = torch.func.vmap(torch.func.grad(rosenbrock))
    with (
        gradserve.Client(address, timeout=300) as by_wire,
        gradserve.Client(address, timeout=300, shared_memory=True) as by_shm,
    ):
        xs = by_shm.shared_array(x.shape)
        xs[:] = x
        ways: dict[str, Callable[[], Any]] = {
            "wire": lambda: by_wire.compute(SOURCE, {"x": x}, ["grad"], batched=True),
            "shm": lambda: by_shm.compute(SOURCE, {"x": x}, ["grad"], batched=True),
            "shm array": lambda: by_shm.compute(SOURCE, {"x": xs}, ["grad"], batched=True),
            "in-process": lambda: local(xt),
        }
        last: dict[str, Any] = {}
        for name, fn in ways.items():  # warm: actors, caches, the region registered
            last[name] = fn()
        times: dict[str, list[float]] = {name: [] for name in ways}
        walls: dict[str, list[float]] = {"wire": [], "shm": [], "shm array": []}
        computes: dict[str, list[float]] = {"wire": [], "shm": [], "shm array": []}
        for _ in range(reps):  # interleaved: drift on a shared machine hits all three
            for name, fn in ways.items():
                t0 = time.perf_counter()
                last[name] = fn()
                times[name].append(time.perf_counter() - t0)
                if name in walls:
                    walls[name].append(last[name].metadata.wall_seconds)
                    computes[name].append(last[name].metadata.compute_seconds)
        want = last["in-process"].numpy()
        agree = {
            name: bool(np.allclose(last[name]["grad"], want, rtol=1e-12, atol=1e-12))
            for name in ("wire", "shm", "shm array")
        }
        same = all(
            np.array_equal(last["wire"]["grad"], last[name]["grad"])
            for name in ("shm", "shm array")
        )
        memory = rss_mb(server_pid)
    rates = {name: points / median(t) for name, t in times.items()}
    return {
        "points": points, "dim": DIM, "threads": threads, "reps": reps,
        "seconds": times, "pts_per_s": rates,
        "spread": {name: spread(t) for name, t in times.items()},
        "server_wall_s": {k: median(v) for k, v in walls.items()},
        "worker_compute_s": {k: median(v) for k, v in computes.items()},
        "ratios": {
            "shm / wire": rates["shm"] / rates["wire"],
            "shm / in-process": rates["shm"] / rates["in-process"],
            "shm array / in-process": rates["shm array"] / rates["in-process"],
            "wire / in-process": rates["wire"] / rates["in-process"],
        },
        "agree_with_in_process": agree, "shm_equals_wire_bit_for_bit": same,
        "rss_mb": memory,
    }  # fmt: skip


def render(r: dict[str, Any]) -> str:
    rows = [
        [
            name, fmt_time(median(r["seconds"][name])), fmt_rate(r["pts_per_s"][name]),
            f"{r['pts_per_s'][name] / r['pts_per_s']['in-process']:.2f}",
            fmt_time(r["server_wall_s"].get(name, 0.0)) if name in r["server_wall_s"] else "-",
            fmt_time(r["worker_compute_s"][name]) if name in r["worker_compute_s"] else "-",
            f"{r['spread'][name]:.2f}",
        ]
        for name in ("wire", "shm", "shm array", "in-process")
    ]  # fmt: skip
    title = (
        f"Shared memory: grad of {r['dim']}-dim Rosenbrock at {r['points']:,} points, "
        f"{r['threads']} workers x 1 thread vs {r['threads']} threads in-process, median of "
        f"{r['reps']} interleaved"
    )
    head = ["way", "call", "points/s", "vs in-process", "server wall", "worker compute",
            "spread"]  # fmt: skip
    lines = [table(title, head, rows)]
    ratio, same, rss = r["ratios"]["shm / wire"], r["shm_equals_wire_bit_for_bit"], r["rss_mb"]
    lines.append(
        f"shm / wire {ratio:.2f}x; shm equals wire bit for bit: {same}; RSS after: server "
        f"{rss['server']:.0f} MB, workers {rss['workers']:.0f} MB"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", help="also write the raw numbers here")
    args = p.parse_args()
    reps = 3 if args.quick else 9
    with start_server(args.workers) as server:
        result = run(server.address, server.proc.pid, args.workers, args.points, reps)
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
