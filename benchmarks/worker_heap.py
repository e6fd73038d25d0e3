"""The workers' heap: page faults and time of a batched grad with glibc's defaults and
with other mallopt settings, each in a fresh interpreter (a setting cannot be undone).

One process, the call on a thread of its own as in a worker (``GradActor.compute``):
the 10-dim Rosenbrock grad at 100,000 points, 3 calls to warm up, then the median of
20 and their page faults. ``keep`` is what Ray workers run with
(``actor.keep_freed_memory``).

Run: ``python benchmarks/worker_heap.py`` (about a minute).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> {mallopt parameter: value}; -1 trim threshold, -2 top pad, -3 mmap threshold
SETTINGS: dict[str, dict[int, int]] = {
    "glibc defaults": {},
    "keep (mmap 32 MiB, pad 64 MiB)": {-3: 32 * 2**20, -2: 64 * 2**20},
    "mmap 32 MiB, pad 16 MiB": {-3: 32 * 2**20, -2: 16 * 2**20},
    "pad 64 MiB alone": {-2: 64 * 2**20},
    "mmap 32 MiB, trim 256 MiB": {-3: 32 * 2**20, -1: 256 * 2**20},
}

CHILD = """
import ctypes, json, resource, statistics, sys, time
for key, value in json.loads(sys.argv[1]).items():
    assert ctypes.CDLL(None).mallopt(int(key), value)
import numpy as np
from gradserve_workers.actor import GradActor
from gradserve_workers.tasks import ComputeSpec
source = "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)"
x = np.random.default_rng(0).uniform(-1.5, 1.5, size=(100_000, 10))
actor = GradActor()
spec = ComputeSpec(source, "h", ("grad",), None, True, "float64")
for _ in range(3):
    actor.compute(spec, {"x": x}, 0, len(x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
times = []
for _ in range(20):
    t = time.perf_counter()
    actor.compute(spec, {"x": x}, 0, len(x))
    times.append(time.perf_counter() - t)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
rss = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
print(json.dumps({"ms": statistics.median(times) * 1e3, "faults": faults, "rss_mib": rss}))
"""


def measure(setting: dict[int, int]) -> dict[str, float]:
    env_path = f"{ROOT / 'workers'}"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(setting)],
        capture_output=True, text=True, timeout=600, env={"PYTHONPATH": env_path, "PATH": ""},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    print(f"{'setting':34} {'call':>9} {'faults/call':>12} {'RSS':>8}")
    for rounds in range(2):  # twice, alternating, so that drift shows
        for name, setting in SETTINGS.items():
            r = measure(setting)
            print(f"{name:34} {r['ms']:7.1f} ms {r['faults']:12.0f} {r['rss_mib']:5.0f} MiB")
        if rounds == 0:
            print()


if __name__ == "__main__":
    main()
