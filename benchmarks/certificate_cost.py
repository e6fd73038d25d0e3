"""What the derivative certificate costs: the worker op with and without it, in-process.

For every op on a few representative functions, unbatched and batched, calls of
``ops.compute`` with ``verify=False`` and ``verify=True`` alternate (so a noisy
neighbour slows both alike), on one torch thread, timed by the thread's CPU time
(``time.thread_time``: what the call itself computed, not the time it waited for a
core on a shared machine); the table gives the medians and the relative cost
``(on - off) / off``. ``--reps`` sets the calls per side.

    .venv/bin/python benchmarks/certificate_cost.py --reps 41
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from gradserve_workers import lang
from gradserve_workers.ops import CertificateError, OpsRequest, compute

# (label, source, input shapes per point, ops); every input is differentiated
CASES: tuple[tuple[str, str, dict[str, tuple[int, ...]], tuple[str, ...]], ...] = (
    ("scalar n=16", "sum(sin(x) * x + x ** 3)", {"x": (16,)}, ("grad", "hessian", "hvp")),
    ("vector 16->16", "tanh(2 * x) * cos(x)", {"x": (16,)}, ("jacobian", "vjp", "jvp")),
    ("scalar n=64", "sum(sin(x) * x + x ** 3)", {"x": (64,)}, ("grad", "hessian", "hvp")),
    ("vector 64->64", "tanh(2 * x) * cos(x)", {"x": (64,)}, ("jacobian", "vjp", "jvp")),
    ("scalar n=256", "sum(sin(x) * x + x ** 3)", {"x": (256,)}, ("grad", "hessian", "hvp")),
    ("vector 256->256", "tanh(2 * x) * cos(x)", {"x": (256,)}, ("jacobian", "vjp", "jvp")),
    (
        "mlp 32->8",
        "tanh(W2 @ tanh(W1 @ x))",
        {"x": (32,), "W1": (32, 32), "W2": (8, 32)},
        ("jacobian", "vjp", "jvp"),
    ),
    (
        "logdet 4x4",
        "logdet(A @ A.T + diag(1 + x * x))",
        {"x": (4,), "A": (4, 4)},
        ("grad", "hessian", "hvp"),
    ),
)


def _request(
    op: str, shapes: dict[str, tuple[int, ...]], out: tuple[int, ...], points: int | None
) -> OpsRequest:
    lead = () if points is None else (points,)
    gen = torch.Generator().manual_seed(0)

    def r(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(lead + shape, generator=gen, dtype=torch.float64)

    return OpsRequest(
        ops=(op,),
        batched=points is not None,
        cotangent=r(out) if op == "vjp" else None,
        tangents={k: r(s) for k, s in shapes.items()} if op == "jvp" else None,
        vector={k: r(s) for k, s in shapes.items()} if op == "hvp" else None,
    )


def measure(reps: int, points_list: tuple[int | None, ...]) -> list[dict[str, Any]]:
    rows = []
    for label, source, shapes, ops in CASES:
        fn = lang.compile_function(source)
        names = list(fn.inputs)
        for points in points_list:
            lead = () if points is None else (points,)
            gen = torch.Generator().manual_seed(1)
            inputs = {
                n: torch.randn(lead + shapes[n], generator=gen, dtype=torch.float64) for n in names
            }
            with torch.no_grad():
                out = tuple(fn(*(inputs[n][0] if points else inputs[n] for n in names)).shape)
            for op in ops:
                off = _request(op, shapes, out, points)
                on = replace(off, verify=True)
                try:
                    compute(fn, names, inputs, on)
                except CertificateError as exc:  # torch's nested forward-AD bug, caught
                    print(f"{label:14s} {op:9s} withheld: {str(exc)[:70]}...", flush=True)
                    continue
                times: dict[bool, list[float]] = {False: [], True: []}
                for i in range(reps + 2):
                    for verify, req in ((False, off), (True, on)):
                        started = time.thread_time()
                        compute(fn, names, inputs, req)
                        if i >= 2:  # the first calls warm caches
                            times[verify].append(time.thread_time() - started)
                m_off, m_on = statistics.median(times[False]), statistics.median(times[True])
                rows.append(
                    {
                        "case": label,
                        "op": op,
                        "points": points or 1,
                        "batched": points is not None,
                        "off_ms": 1e3 * m_off,
                        "on_ms": 1e3 * m_on,
                        "cost": (m_on - m_off) / m_off,
                    }
                )
                row = rows[-1]
                print(
                    f"{label:14s} {op:9s} {'batched ' + str(points) if points else 'one point':12s}"
                    f" off {row['off_ms']:7.2f} ms  on {row['on_ms']:7.2f} ms"
                    f"  cost {100 * row['cost']:+6.1f} %",
                    flush=True,
                )
    return rows


def measure_calls(reps: int) -> list[dict[str, Any]]:
    """The same A/B for whole calls through a real server (one worker), wall time:
    what a user waits for, the RPC and Ray included."""
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import start_server

    import gradserve

    rng = np.random.default_rng(0)
    cases = [
        ("grad n=16", "sum(sin(x) * x + x ** 3)", "grad", rng.normal(size=16), False),
        ("hessian n=16", "sum(sin(x) * x + x ** 3)", "hessian", rng.normal(size=16), False),
        ("jacobian 64", "tanh(2 * x) * cos(x)", "jacobian", rng.normal(size=64), False),
        ("grad n=16 x64", "sum(sin(x) * x + x ** 3)", "grad", rng.normal(size=(64, 16)), True),
        ("hessian 64 x16", "sum(sin(x) * x + x ** 3)", "hessian", rng.normal(size=(16, 64)), True),
    ]
    rows = []
    with start_server(1) as server, gradserve.Client(server.address, timeout=120) as client:
        for label, source, op, x, batched in cases:
            times: dict[bool, list[float]] = {False: [], True: []}
            for i in range(reps + 2):
                for verify in (False, True):
                    started = time.perf_counter()
                    client.compute(source, {"x": x}, [op], batched=batched, verify=verify)
                    if i >= 2:
                        times[verify].append(time.perf_counter() - started)
            m_off, m_on = statistics.median(times[False]), statistics.median(times[True])
            rows.append({"case": label, "op": op, "off_ms": 1e3 * m_off, "on_ms": 1e3 * m_on,
                         "cost": (m_on - m_off) / m_off})  # fmt: skip
            print(
                f"call {label:16s} off {1e3 * m_off:7.2f} ms  on {1e3 * m_on:7.2f} ms"
                f"  cost {100 * (m_on - m_off) / m_off:+6.1f} %",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=41, help="calls per side (medians)")
    p.add_argument("--points", type=int, default=64, help="points of the batched calls")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--calls", action="store_true", help="whole calls through a server instead")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.calls:
        rows = measure_calls(args.reps)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
        return 0
    rows = measure(args.reps, (None, args.points))
    by_op: dict[str, list[float]] = {}
    for row in rows:
        by_op.setdefault(row["op"], []).append(row["cost"])
    print("\nmedian cost by op over cases and batch sizes:")
    for op, costs in by_op.items():
        print(
            f"  {op:9s} {100 * statistics.median(costs):+6.1f} %  (max {100 * max(costs):+.1f} %)"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
