"""Shared pieces of the benchmarks: a real server with an embedded Ray, timing, tables.

Every benchmark compares two things measured in the same run on the same machine,
so the numbers that matter are ratios. Timings are medians of several repetitions
after a warm-up call (compile caches filled, actors warm, pages touched).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.cluster import ServerProcess  # noqa: E402 - the tests' server launcher
from support.cluster import start_server as _start_server  # noqa: E402


def start_server(
    workers: int, *, timeout: float = 180.0, extra: Sequence[str] = ()
) -> ServerProcess:
    """Start the server on a free loopback port (embedded Ray: the benchmark owns the
    whole machine) and wait until it serves; a context manager that stops it."""
    return _start_server(None, num_workers=workers, extra=extra, timeout=timeout)


def timed(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> float:
    """(max - min) / median: how noisy the repetitions were."""
    m = median(xs)
    return float((max(xs) - min(xs)) / m) if m > 0 else 0.0


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return float(s[k])


def fmt_rate(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with a title line."""
    cols = [header, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # fmt: skip

    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *(line(r) for r in rows), rule])
