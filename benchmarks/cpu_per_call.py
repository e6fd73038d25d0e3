"""Where one call's time goes: CPU time per call of every thread on the machine.

Starts a server (embedded Ray, 2 workers), warms it up, then reads each thread's CPU
time from ``/proc/<pid>/task/<tid>/stat`` before and after a loop of identical check
calls and prints, per thread that used any, its CPU milliseconds per call. On a small
machine the work of one call is serial (SDK -> server -> actor -> server -> SDK), so
the wall time per call is about the sum: this shows which part to cut. Linux only.

Run: ``python benchmarks/cpu_per_call.py [--calls 200] [--function "cumsum(sin(x))"]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from _harness import start_server, timed

import gradserve

TICK = os.sysconf("SC_CLK_TCK")


def _threads() -> dict[str, tuple[float, str]]:
    """CPU seconds and a label for every thread of every process."""
    out: dict[str, tuple[float, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:48]
            for task in (proc / "task").iterdir():
                stat = (task / "stat").read_text()
                name = stat.split("(", 1)[1].rsplit(")", 1)[0]
                fields = stat.rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
                out[f"{proc.name}/{task.name}"] = (cpu, f"{cmd.strip()} [{name}]")
        except OSError:  # a thread that ended while we read
            continue
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--function", default="sum(sin(x) * x)")
    p.add_argument("--n", type=int, default=1000, help="input elements")
    args = p.parse_args()
    x = np.random.default_rng(1000).uniform(-2.0, 2.0, args.n)
    with start_server(2) as server, gradserve.Client(server.address) as client:
        timed(lambda: client.check(args.function, {"x": x}), 20, warmup=5)
        before, t0 = _threads(), time.perf_counter()
        for _ in range(args.calls):
            client.check(args.function, {"x": x})
        wall, after = time.perf_counter() - t0, _threads()
    print(f"check({args.function!r}) at n={args.n}: {wall / args.calls * 1e3:.2f} ms a call "
          f"(wall), CPU ms a call by thread:")  # fmt: skip
    rows = [
        ((cpu - before[key][0]) / args.calls * 1e3, label)
        for key, (cpu, label) in after.items()
        if key in before and cpu > before[key][0]
    ]
    for ms, label in sorted(rows, reverse=True):
        if ms >= 0.05:  # one clock tick over the loop is noise
            print(f"  {ms:6.2f}  {label}")
    print(f"  {sum(ms for ms, _ in rows):6.2f}  in all")


if __name__ == "__main__":
    main()
