"""A worker's two ways in: Ray's actor call against the direct channel (the server's
``channel.py``), on one actor, for the same packed chunk call.

An embedded Ray with one ``GradActor``; a small packed compute (grad of ``2 *
dot(x, x)`` at 10 inputs, the worker's own time ~0.1-0.3 ms) sent 300 times each way,
alternating, from an asyncio loop as the server sends it; medians and p90.

Run: ``python benchmarks/channel_rtt.py`` (about 20 s).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import ray

from gradserve_server.channel import Channel
from gradserve_workers.actor import GradActor
from gradserve_workers.tasks import ChunkCall, ComputeSpec, pack_call

CALLS = 300


async def run() -> None:
    actor = ray.remote(GradActor).options(max_concurrency=1).remote()
    where = await actor.channel.remote()
    channel = await Channel.open(where["address"], where["token"])
    spec = ComputeSpec("2 * dot(x, x)", "h", ("grad",), None, False, "float64")
    message = pack_call(ChunkCall(spec, {"x": np.arange(10.0)}, 0, 1))
    ways: dict[str, Callable[[], Awaitable[Any]]] = {
        "Ray actor call": lambda: actor.run.remote(message),
        "direct channel": lambda: channel.call(message),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for call in ways.values():  # warm
        for _ in range(20):
            await call()
    for _ in range(CALLS):
        for name, call in ways.items():
            started = time.perf_counter()
            result = await call()
            times[name].append(time.perf_counter() - started)
            assert result.error is None
    for name, ts in times.items():
        ts.sort()
        print(
            f"{name:16} median {statistics.median(ts) * 1e3:6.3f} ms"
            f"   p90 {ts[int(0.9 * len(ts))] * 1e3:6.3f} ms"
        )
    channel.close()


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        asyncio.run(run())
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
