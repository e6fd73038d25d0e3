"""The service's check against torch.autograd.gradcheck on the custom-Function corpus.

For each function of tests/support/custom_functions.py: both verdicts at every
point, and the time of the service's vectorised check (in-process, one worker's
work) against gradcheck (gradgradcheck at order 2) run point by point, at
``--points`` points. Run: ``.venv/bin/python benchmarks/custom_gradients.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.custom_functions import FIRST_ORDER, SECOND_ORDER, Case, draw

from gradserve_workers.check import finite_difference_check


def _timed(case: Case, points: list[torch.Tensor], order: int) -> tuple[float, float, bool]:
    names = [f"in{i}" for i in range(len(points))]
    started = time.perf_counter()
    report = finite_difference_check(
        case.fn, names, dict(zip(names, points, strict=True)), batched=True, order=order
    )
    service = time.perf_counter() - started
    check = torch.autograd.gradcheck if order == 1 else torch.autograd.gradgradcheck
    started = time.perf_counter()
    verdicts = []
    for i in range(points[0].shape[0]):
        args = tuple(p[i].clone().requires_grad_(True) for p in points)
        verdicts.append(
            bool(check(case.fn, args, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=False))
        )
    reference = time.perf_counter() - started
    return service, reference, tuple(verdicts) == report.point_passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios = []
    agree = 0
    cases = [(c, 1) for c in FIRST_ORDER] + [(c, 2) for c in SECOND_ORDER]
    _timed(cases[0][0], draw(cases[0][0], 4), 1)  # warm up torch.func
    for case, order in cases:
        service, reference, same = _timed(case, draw(case, args.points, seed=3), order)
        ratios.append(reference / service)
        agree += same
        print(f"{case.name:28s} order {order}  service {service * 1e3:8.1f} ms  "
              f"gradcheck {reference * 1e3:9.1f} ms  x{reference / service:6.1f}  "
              f"{'agree' if same else 'DISAGREE'}")  # fmt: skip
    print(f"{agree}/{len(cases)} functions agree at every point; gradcheck / service time: "
          f"median x{statistics.median(ratios):.1f}, min x{min(ratios):.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
