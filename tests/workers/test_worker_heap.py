"""A worker process keeps its freed memory for the next call (actor.keep_freed_memory):
measured by the page faults of repeated calls, each in a fresh interpreter.

With glibc's defaults every call of this size maps its large arrays afresh and faults
them in page by page (~3,900 faults a call, one per 4 KiB); with the worker's
setting the second and later calls reuse the heap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CALLS = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
if sys.argv[1] == "keep":
    from gradserve_workers.actor import keep_freed_memory
    assert keep_freed_memory()
import numpy as np, torch
torch.set_num_threads(1)
from gradserve_workers.lang import compile_function
from gradserve_workers.ops import OpsRequest, compute
fn = compile_function("sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)")
x = torch.from_numpy(np.random.default_rng(0).uniform(-1.5, 1.5, (50_000, 10)))
def call():
    return compute(fn, ["x"], {"x": x}, OpsRequest(ops=("grad",), batched=True))
# on a thread of its own, as the actor computes (its own glibc arena)
pool = ThreadPoolExecutor(1)
first = pool.submit(call).result().outputs["grad"]["x"]
for _ in range(3):  # the heap grows to what a call needs
    pool.submit(call).result()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    again = pool.submit(call).result().outputs["grad"]["x"]
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({"faults": faults, "same": bool(torch.equal(first, again))}))
"""


def _faults_per_call(mode: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workers")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CALLS), mode],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_worker_keeps_its_freed_memory_for_the_next_call() -> None:
    default, kept = _faults_per_call("default"), _faults_per_call("keep")
    assert default["same"] and kept["same"]
    # ~2,000 faults a call with glibc's defaults at this size, a few dozen kept
    assert default["faults"] > 500, default
    assert kept["faults"] * 5 < default["faults"], (kept, default)
