"""Checks on an accelerator: the worker's full check vs ``torch.autograd.gradcheck``
(slow mode), both in-process on the same device. No server and no Ray (the device
machines lent to sessions have PyTorch but not Ray): this measures the worker's
compute, to which the service adds its round trip (~5-7 ms on the dev machine).

Run: ``PYTHONPATH=workers python3 benchmarks/checks_device.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gradserve_workers.check import finite_difference_check
from gradserve_workers.lang import compile_function

CASES: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
    ("sum(sin(x) * x)", lambda v: torch.sum(torch.sin(v) * v)),
    ("cumsum(sin(x))", lambda v: torch.cumsum(torch.sin(v), 0)),
]


def timed_ms(f: Callable[[], Any], reps: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    f()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="1000,4000")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("checks_device.py: no CUDA device here (try --device cpu)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for source, torch_fn in CASES:
        fn = compile_function(source)
        for n in (int(s) for s in args.sizes.split(",")):
            x = torch.from_numpy(np.random.default_rng(n).uniform(-2, 2, n)).to(device)

            def ours_check(fn: Any = fn, x: torch.Tensor = x) -> Any:
                return finite_difference_check(fn, ["x"], {"x": x}, fast=False)

            ours = timed_ms(ours_check, 5, device)
            xg = x.clone().requires_grad_(True)
            # gradcheck of a vector function costs n backward passes: only the smaller size
            if n <= 1000 or source.startswith("sum"):

                def theirs(f: Any = torch_fn, xg: torch.Tensor = xg) -> Any:
                    return torch.autograd.gradcheck(f, (xg,))

                slow = timed_ms(theirs, 1, device)
                ratio = f"{slow / ours:6.1f}x"
            else:
                slow, ratio = float("nan"), "     -"
            print(f"{source:18s} n={n:5d}  gradserve full check {ours:8.1f} ms  "
                  f"gradcheck slow {slow:8.1f} ms  {ratio}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
