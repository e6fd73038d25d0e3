"""A/B of a shared-memory batch: a server from this tree against one from another
checkout, with in-process ``vmap(grad(f))`` (2 threads) interleaved as the yardstick.

Both servers run at once (embedded Ray each, 2 workers); the calls alternate between
them and in-process, in alternating order, so that the machine's drift hits all
three. The SDK is this tree's for both sides: the A/B is of the server and workers.

Run: ``python benchmarks/shared_memory_ab.py --base /tmp/base [--reps 15]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import median, start_server
from shared_memory import DIM, SOURCE, rosenbrock
from support.cluster import start_server as start_server_from

import gradserve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the other checkout's root")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--points", type=int, default=200_000)
    args = p.parse_args()
    base = args.base.resolve()
    env = {"PYTHONPATH": f"{base}/client:{base}/server:{base}/workers"}
    x = np.random.default_rng(0).uniform(-1.5, 1.5, size=(args.points, DIM))
    torch.set_num_threads(2)
    local = torch.func.vmap(torch.func.grad(rosenbrock))
    xt = torch.from_numpy(x)
    with (
        start_server(2) as this,
        start_server_from(None, num_workers=2, env=env) as other,
        gradserve.Client(this.address, timeout=300, shared_memory=True) as a,
        gradserve.Client(other.address, timeout=300, shared_memory=True) as b,
    ):
        ways: dict[str, Callable[[], Any]] = {
            "this tree": lambda: a.compute(SOURCE, {"x": x}, ["grad"], batched=True),
            "base": lambda: b.compute(SOURCE, {"x": x}, ["grad"], batched=True),
            "in-process": lambda: local(xt),
        }
        last = {name: fn() for name, fn in ways.items()}  # warm
        times: dict[str, list[float]] = {name: [] for name in ways}
        for i in range(args.reps):
            for name in list(ways) if i % 2 == 0 else list(reversed(ways)):
                t0 = time.perf_counter()
                last[name] = ways[name]()
                times[name].append(time.perf_counter() - t0)
        assert np.array_equal(last["this tree"]["grad"], last["base"]["grad"])
    inproc = median(times["in-process"])
    for name, t in times.items():
        print(
            f"{name:10s} median {median(t) * 1e3:6.1f} ms   vs in-process {inproc / median(t):.2f}x"
        )
    print(f"this tree / base: {median(times['base']) / median(times['this tree']):.2f}x faster")


if __name__ == "__main__":
    main()
