"""The check's comparison in process, this tree's against a git revision's, interleaved.

``compare`` (``workers/gradserve_workers/check/comparison.py``) of the revision is
loaded beside this tree's, both run on the same operands, those a check at n=1000
hands it (captured from the check itself): the vector function's whole check and
its 500-column shard, the scalar function's check, and the vector function's wrong
claimed Jacobian. Each case first asserts that both give the same comparison and
kink screen, bit for bit; then rounds alternate the two (which goes first
alternates too), and the medians of the calls' thread CPU time are compared, on one
thread, as the worker runs them.

Run: ``PYTHONPATH=workers python benchmarks/compare_ab.py --base <revision>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from gradserve_workers import lang
from gradserve_workers.check import claimed_check, claims, finite_difference_check
from gradserve_workers.check import comparison as ours
from gradserve_workers.check import finite_differences as fd

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "workers/gradserve_workers/check/comparison.py"
Operands = tuple[Any, float, float]


def load_base(revision: str, into: Path) -> ModuleType:
    """The revision's comparison module, as a sibling of ours (its relative imports
    resolve to this tree's package)."""
    text = subprocess.run(
        ["git", "show", f"{revision}:{SOURCE}"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    path = into / "comparison_base.py"
    path.write_bytes(text)
    name = "gradserve_workers.check._comparison_base"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def captured(run: Callable[[], object], where: ModuleType) -> Operands:
    """The operands of the first comparison ``run`` makes through ``where.compare``."""
    seen: list[Operands] = []
    real = where.compare

    def spy(ops: Any, atol: float, rtol: float, block: int) -> Any:
        seen.append((ops, atol, rtol))
        return real(ops, atol, rtol, block)

    where.compare = spy  # type: ignore[attr-defined]
    try:
        run()
    finally:
        where.compare = real  # type: ignore[attr-defined]
    return seen[0]


def cases(n: int) -> dict[str, Operands]:
    x = torch.linspace(-2, 2, n, dtype=torch.float64)
    vector = lang.compile_function("cumsum(sin(x))")
    scalar = lang.compile_function("sum(sin(x) * x)")
    wrong = lang.compile_function("diag(cos(x))")
    return {
        "vector, whole": captured(lambda: finite_difference_check(vector, ["x"], {"x": x}), fd),
        "vector, shard": captured(
            lambda: finite_difference_check(vector, ["x"], {"x": x}, columns=(0, n // 2)), fd
        ),
        "scalar": captured(lambda: finite_difference_check(scalar, ["x"], {"x": x}), fd),
        "vector, wrong claim": captured(
            lambda: claimed_check(vector, {"x": wrong}, ["x"], {"x": x}, kind="jacobian"), claims
        ),
    }


def same(a: tuple[Any, torch.Tensor], b: tuple[Any, torch.Tensor]) -> bool:
    def key(cmp: Any) -> dict[str, object]:
        d = dataclasses.asdict(cmp)
        return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}

    return key(a[0]) == key(b[0]) and torch.equal(a[1], b[1])


def per_call_ms(compare: Callable[..., Any], ops: Operands, calls: int) -> float:
    t0 = time.thread_time()
    for _ in range(calls):
        compare(*ops)
    return (time.thread_time() - t0) / calls * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision to compare with")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=21)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, Path(tmp))
        print(f"comparison at n={args.n}: this tree vs {args.base}, thread CPU ms per call")
        print(f"{'case':22s} {'base':>8s} {'ours':>8s} {'ratio':>6s}  rounds' ratios")
        for name, ops in cases(args.n).items():
            assert same(base.compare(*ops), ours.compare(*ops)), f"{name}: results differ"
            calls = max(1, int(20e-3 / max(1e-6, per_call_ms(ours.compare, ops, 1) / 1e3)))
            theirs, mine = [], []
            for r in range(args.rounds):
                order = [(base.compare, theirs), (ours.compare, mine)]
                for compare, into in order if r % 2 == 0 else order[::-1]:
                    into.append(per_call_ms(compare, ops, calls))
            ratios = sorted(m / t for m, t in zip(mine, theirs, strict=True))
            b, o = statistics.median(theirs), statistics.median(mine)
            print(f"{name:22s} {b:8.3f} {o:8.3f} {o / b:6.3f}  {ratios[0]:.2f}-{ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
