"""Checks: gradserve's ``check`` vs ``torch.autograd.gradcheck`` (slow and fast mode).

Same functions, same float64 inputs, sizes 10, 100 and 1,000 inputs, a scalar and a
vector-valued function. Two situations per function:

- correct: gradserve checks autograd against central differences; gradcheck does
  the same for the plain torch function. Both should pass.
- wrong claim: gradserve checks a claimed derivative (``grad=`` / ``jacobian=``)
  that is wrong; gradcheck checks a ``torch.autograd.Function`` whose backward is
  that same wrong claim. Both should fail.

gradserve's time is the whole round trip through the server (SDK, gRPC, the server,
and Ray or the server's fast lane: the "lanes" column counts where the rounds' calls
ran), with 2 workers; gradcheck runs in-process with torch's default number of threads.

Run alone: ``python benchmarks/checks.py [--quick]`` (starts its own server).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from _harness import fmt_time, median, start_server, table, timed

import gradserve

Tensor = torch.Tensor


@dataclass(frozen=True)
class CheckCase:
    name: str
    source: str  # the function, in the function language
    torch_fn: Callable[[Tensor], Tensor]
    claim_kind: str  # "grad" or "jacobian"
    wrong_claim: str  # a wrong derivative, in the function language
    wrong_vjp: Callable[[Tensor, Tensor], Tensor]  # (x, grad_out) -> the same wrong claim's vjp


def _wrong_scalar_vjp(x: Tensor, g: Tensor) -> Tensor:
    return g * torch.cos(x) * x  # the true gradient is cos(x) * x + sin(x)


def _wrong_vector_vjp(x: Tensor, g: Tensor) -> Tensor:
    return g * torch.cos(x)  # diag(cos(x)); the true Jacobian is lower-triangular


CASES = [
    CheckCase(
        "scalar sum(sin(x)*x)",
        "sum(sin(x) * x)",
        lambda x: torch.sum(torch.sin(x) * x),
        "grad",
        "cos(x) * x",
        _wrong_scalar_vjp,
    ),
    CheckCase(
        "vector cumsum(sin(x))",
        "cumsum(sin(x))",
        lambda x: torch.cumsum(torch.sin(x), 0),
        "jacobian",
        "diag(cos(x))",
        _wrong_vector_vjp,
    ),
]


def _claimed_function(case: CheckCase) -> Callable[[Tensor], Tensor]:
    """``case.torch_fn`` with its backward replaced by the (wrong) claim."""

    class Claimed(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Tensor) -> Tensor:
            ctx.save_for_backward(x)
            return case.torch_fn(x)

        @staticmethod
        def backward(ctx: Any, g: Tensor) -> Tensor:
            (x,) = ctx.saved_tensors
            return case.wrong_vjp(x, g)

    return Claimed.apply  # type: ignore[no-any-return]


def _gradcheck(fn: Callable[[Tensor], Tensor], x: Tensor, fast: bool) -> bool:
    return bool(torch.autograd.gradcheck(fn, (x,), fast_mode=fast, raise_exception=False))


def run(address: str, quick: bool) -> list[dict[str, Any]]:
    # gradcheck runs with torch's default threads, as a user's would: gradserve may
    # split one large check across its workers (the machine's cores), so gradcheck
    # gets the cores too (it gains 0-25 % from a second thread, measured at n=1000)
    sizes = [10, 100, 1000]
    rows: list[dict[str, Any]] = []
    with gradserve.Client(address) as client:
        for case in CASES:
            for n in sizes:
                x_np = np.random.default_rng(n).uniform(-2.0, 2.0, n)
                rounds = 2 if quick else 3
                for situation in ("correct", "wrong claim"):
                    x = torch.from_numpy(x_np.copy()).requires_grad_(True)
                    tfn = case.torch_fn if situation == "correct" else _claimed_function(case)
                    claim = {} if situation == "correct" else {case.claim_kind: case.wrong_claim}
                    lanes: Counter[str] = Counter()  # where the calls ran (metadata.lane)

                    def ours() -> Any:
                        report = client.check(case.source, {"x": x_np}, **claim)  # noqa: B023
                        lanes[report.metadata.lane] += 1  # noqa: B023
                        return report

                    verdict = bool(ours().passed)
                    slow_verdict = _gradcheck(tfn, x, fast=False)
                    fast_verdict = _gradcheck(tfn, x, fast=True)
                    # in rounds, so that drift on a busy machine hits both sides alike;
                    # three calls of each a round (with one gradcheck call, the ratio's
                    # median rested on three samples of a time that drifts by 2x on
                    # this VM), ours after an untimed one (a call right after gradcheck,
                    # which has just used both cores and the caches, runs ~25 % slower)
                    t_ours: list[float] = []
                    t_slow: list[float] = []
                    t_fast: list[float] = []
                    round_ratios: list[float] = []
                    for i in range(rounds):
                        if i == 0:  # a check's first runs are on Ray (see fastlane.py)
                            timed(ours, 0, warmup=2)
                            lanes.clear()
                        ours_r = timed(ours, 3, warmup=1)
                        slow_r = timed(lambda: _gradcheck(tfn, x, False), 3, warmup=0)  # noqa: B023
                        t_fast += timed(lambda: _gradcheck(tfn, x, True), 3, warmup=0)  # noqa: B023
                        t_ours += ours_r
                        t_slow += slow_r
                        round_ratios.append(median(slow_r) / median(ours_r))
                    row = {
                        "function": case.name, "n": n, "situation": situation,
                        "gradserve_s": t_ours, "gradcheck_slow_s": t_slow,
                        "gradcheck_fast_s": t_fast,
                        "gradserve_passed": verdict, "gradcheck_slow_passed": slow_verdict,
                        "gradcheck_fast_passed": fast_verdict,
                        "speedup_vs_slow": median(t_slow) / median(t_ours),
                        "speedup_vs_slow_by_round": round_ratios,
                        "speedup_vs_fast": median(t_fast) / median(t_ours),
                        "verdicts_agree": verdict == slow_verdict == fast_verdict,
                        "lanes": dict(lanes),
                    }  # fmt: skip
                    rows.append(row)
                    print(f"  {case.name:22s} n={n:<5d} {situation:11s} gradserve "
                          f"{fmt_time(median(t_ours))} ({verdict}), gradcheck slow "
                          f"{fmt_time(median(t_slow))} ({slow_verdict}), fast "
                          f"{fmt_time(median(t_fast))} ({fast_verdict})", flush=True)  # fmt: skip
    return rows


def _round_range(ratios: list[float]) -> str:
    """The lowest and highest of the rounds' own ratios: how much the drift moved it."""
    return f"{min(ratios):.1f}-{max(ratios):.1f}x"


def render(rows: list[dict[str, Any]]) -> str:
    def verdict(b: bool) -> str:
        return "pass" if b else "FAIL"

    body = [
        [
            r["function"], str(r["n"]), r["situation"],
            fmt_time(median(r["gradserve_s"])), fmt_time(median(r["gradcheck_slow_s"])),
            fmt_time(median(r["gradcheck_fast_s"])),
            f"{r['speedup_vs_slow']:.1f}x", _round_range(r["speedup_vs_slow_by_round"]),
            f"{r['speedup_vs_fast']:.1f}x",
            "/".join(verdict(r[k]) for k in
                     ("gradserve_passed", "gradcheck_slow_passed", "gradcheck_fast_passed")),
            "yes" if r["verdicts_agree"] else "NO",
            " ".join(f"{k}:{v}" for k, v in sorted(r.get("lanes", {}).items())),
        ]
        for r in rows
    ]  # fmt: skip
    return table(
        "2. Checks (median wall time): gradserve check (through the server) vs "
        "torch.autograd.gradcheck in-process; goal >= 10x vs slow mode at n=1000, same verdicts",
        ["function", "n", "situation", "gradserve", "gc slow", "gc fast", "vs slow",
         "rounds", "vs fast", "verdicts (gs/slow/fast)", "agree", "lanes (timed)"],
        body,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    with start_server(2) as server:
        rows = run(server.address, args.quick)
    print(render(rows))


if __name__ == "__main__":
    main()
