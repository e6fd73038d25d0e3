"""A worker process keeps its freed memory for the next call (actor.keep_freed_memory),
measured by the page faults of a stand-in call (three 8 MiB arrays alive at once, then
freed) repeated on a thread of its own, as a worker computes (its own glibc arena),
each case in a fresh interpreter.

With glibc's defaults the heap gives the freed arrays back when they are freed, and
every later call faults ~1,500 of its pages in again (4 KiB each); kept, only the
first call does. benchmarks/worker_heap.py measures what that buys a real call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = 2048  # an 8 MiB array

AGAIN = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
if sys.argv[1] == "keep":
    from gradserve_workers.actor import keep_freed_memory
    assert keep_freed_memory()

def a_call(pages):
    # three arrays alive at once, as a call's intermediates and result, then freed
    arrays = [np.ones(pages * 512) for _ in range(3)]  # 8 bytes an element, touched
    del arrays

def faults_of_a_call(pages):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    a_call(pages)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

with ThreadPoolExecutor(1) as thread:
    faults = [thread.submit(faults_of_a_call, int(sys.argv[2])).result() for _ in range(4)]
print(json.dumps(faults))
"""


def _faults(mode: str) -> list[int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workers")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(AGAIN), mode, str(PAGES)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_worker_reuses_the_pages_of_what_it_freed() -> None:
    default, kept = _faults("default"), _faults("keep")
    # after the first call: the defaults fault pages in again every time; kept, never
    assert min(default[1:]) > PAGES // 2, default
    assert max(kept[1:]) < PAGES // 16, kept
