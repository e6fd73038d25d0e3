"""A function with large intermediates cannot make a vmapped batch allocate
points x intermediate at once (a denial of service through a small request).

Each case runs in a fresh interpreter and reports its own peak RSS. Measured before
the fix: 4.3 GB for the batched gradient (at 64 points) and 3.5 GB for the check, the
latter not from one batch but from glibc's heap growing by one freed intermediate per
chunk while small chunk results stayed alive between them; after it, 0.60 GB and
0.35 GB (the imports alone: 0.22 GB). Cache-sized pieces of one point each brought
that heap growth back for the gradient (1.47 GB), which the limit catches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from gradserve_workers import transforms
from gradserve_workers.check import CheckOptions, finite_difference_check
from gradserve_workers.check.evaluation import Evaluator
from gradserve_workers.lang import compile_function

ROOT = Path(__file__).resolve().parents[2]
LIMIT_MIB = 900

# The child's own peak: /proc's VmHWM belongs to the memory the child maps after exec.
# (getrusage's ru_maxrss would count the pytest process that forked it: Linux carries
# the parent's high-water mark across fork and exec, and a long test session's
# process is itself over the limit.) The heap is set as in a worker process, which
# keeps freed memory for its next call.
PRELUDE = """
import json, torch
from gradserve_workers.actor import keep_freed_memory
assert keep_freed_memory()  # the heap as a worker process keeps it
def peak_rss_mib():
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
torch.set_num_threads(1)
from gradserve_workers.lang import compile_function
from gradserve_workers.ops import OpsRequest, compute
from gradserve_workers.check import finite_difference_check
"""


def run_measured(body: str) -> dict[str, float]:
    code = (
        PRELUDE
        + textwrap.dedent(body)
        + ("\nout['rss_mib'] = peak_rss_mib()\nprint(json.dumps(out))")
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "workers")])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_batched_gradient_of_a_function_with_a_large_intermediate() -> None:
    out = run_measured(
        """
        fn = compile_function("sum(outer(x, x))")
        x = torch.linspace(-1, 1, 32 * 2000, dtype=torch.float64).reshape(32, 2000)
        r = compute(fn, ["x"], {"x": x}, OpsRequest(ops=("grad",), batched=True))
        g = r.outputs["grad"]["x"]
        expected = 2 * x.sum(dim=1, keepdim=True).expand_as(x)
        out = {"max_err": float((g - expected).abs().max()), "vmapped": r.vmapped}
        """
    )
    assert out["max_err"] < 1e-9 and out["vmapped"]
    assert out["rss_mib"] < LIMIT_MIB, out


def test_full_check_of_a_function_with_a_large_intermediate() -> None:
    out = run_measured(
        """
        fn = compile_function("sum(outer(x, x))")
        x = torch.linspace(-1, 1, 600, dtype=torch.float64)
        r = finite_difference_check(fn, ["x"], {"x": x}, fast=False)
        out = {"passed": r.passed, "max_abs": r.max_abs_error}
        """
    )
    assert out["passed"] and out["max_abs"] < 1e-5
    assert out["rss_mib"] < LIMIT_MIB, out


def test_measure_reports_the_largest_intermediate() -> None:
    fn = compile_function("def f(x):\n    y = outer(x, x)\n    return sum(y) + sum(sin(x))")
    out, peak = transforms.measure(fn, [torch.ones(300, dtype=torch.float64)])
    assert peak == 300 * 300
    assert float(out) == pytest.approx(300 * 300 + 300 * float(torch.sin(torch.tensor(1.0))))
    # a plain callable: its inputs and output stand in
    assert transforms.measure(lambda x: x.sum(), [torch.ones(7)])[1] == 7


@pytest.mark.parametrize(
    ("per_item", "items", "expected"),
    [(10, 5, None), (transforms.BATCH_ELEMENTS, 5, 1), (transforms.BATCH_ELEMENTS // 4, 9, 4)],
)
def test_chunk_sizes(per_item: int, items: int, expected: int | None) -> None:
    assert transforms.chunk_for(per_item, items) == expected


def test_check_batches_shrink_with_the_intermediate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's evaluator maps fewer perturbations at once when one evaluation is
    large: never more than the budget in one intermediate."""
    seen: list[int] = []
    real = Evaluator._run

    def spy(self: Evaluator, xs: torch.Tensor, consts: list[torch.Tensor]) -> torch.Tensor:
        seen.append(xs.shape[0] * xs.shape[1])
        return real(self, xs, consts)

    monkeypatch.setattr(Evaluator, "_run", spy)
    fn = compile_function("sum(outer(x, x))")
    x = torch.linspace(-1, 1, 100, dtype=torch.float64)
    small = CheckOptions(eval_budget=50_000, fd_error_estimate=False)
    r = finite_difference_check(fn, ["x"], {"x": x}, fast=False, options=small)
    assert r.passed
    assert seen and max(seen) * 100 * 100 <= 50_000 * 2  # rows x intermediate within budget


def test_chained_comparisons_count_their_combined_size() -> None:
    """``a < b < c`` combines two comparisons that may broadcast to more than either."""
    fn = compile_function("sum(unsqueeze(x, 1) < 0 < unsqueeze(x, 0))")
    out, peak = transforms.measure(fn, [torch.linspace(-1, 1, 300, dtype=torch.float64)])
    assert peak >= 300 * 300
    assert float(out) == 150 * 150  # negatives (rows) times positives (columns)


def _points_per_batch(
    monkeypatch: pytest.MonkeyPatch, source: str, x: torch.Tensor, ops: tuple[str, ...], **kw: Any
) -> tuple[int | None, dict[str, Any]]:
    """The points ``compute`` maps at once for ``ops`` of ``source`` at ``x``, and its
    outputs."""
    from gradserve_workers.ops import OpsRequest, computation, compute

    seen: list[int | None] = []
    real = computation.vmap_or_loop

    def spy(*args: Any, chunk_size: int | None = None, **kwargs: Any) -> Any:
        seen.append(chunk_size)
        return real(*args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(computation, "vmap_or_loop", spy)
    request = OpsRequest(ops=ops, batched=True, **kw)
    result = compute(compile_function(source), ["x"], {"x": x}, request)
    return seen[0], dict(result.outputs)


def test_cpu_batches_are_sized_for_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU, points are mapped in batches whose intermediates fit the caches
    (1.3-1.8x faster than one batch through memory, docs/performance.md): a grad of a
    10-element function holds ~3 x 10 elements a point in flight. Only where at least
    CPU_MIN_POINTS points fit a piece."""
    x = torch.rand(100_000, 10, dtype=torch.float64)
    size, _ = _points_per_batch(monkeypatch, "sum(x * x)", x, ("grad",))
    assert size == transforms.CPU_BATCH_ELEMENTS // 30
    small = torch.rand(1000, 10, dtype=torch.float64)  # all of it fits: one batch
    assert _points_per_batch(monkeypatch, "sum(x * x)", small, ("grad",))[0] is None
    # a point too large for 16 to share a piece: only the memory bound cuts the batch
    # (one point a piece grew glibc's heap by a freed intermediate each)
    big = torch.rand(64, 200, dtype=torch.float64)
    assert _points_per_batch(monkeypatch, "sum(outer(x, x))", big, ("grad",))[0] is None


@pytest.mark.parametrize(
    ("source", "ops"),
    [
        ("sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)", ("value", "grad")),
        ("sum(sin(x) * x)", ("hvp",)),
        ("cumsum(sin(x))", ("jacobian",)),
    ],
)
def test_cache_sized_batches_give_the_same_bits(
    monkeypatch: pytest.MonkeyPatch, source: str, ops: tuple[str, ...]
) -> None:
    """Cutting the points into batches changes no bit of any result."""
    x = torch.rand(3000, 10, dtype=torch.float64)
    kw = {"vector": {"x": torch.rand(3000, 10, dtype=torch.float64)}} if "hvp" in ops else {}
    monkeypatch.setattr(transforms, "CPU_BATCH_ELEMENTS", 30_000)  # 100-1000 points a piece
    size, cut = _points_per_batch(monkeypatch, source, x, ops, **kw)
    assert size is not None and size < 3000
    monkeypatch.setattr(transforms, "CPU_BATCH_ELEMENTS", transforms.BATCH_ELEMENTS)
    size, whole = _points_per_batch(monkeypatch, source, x, ops, **kw)
    assert size is None
    for op in ops:
        for key, t in whole[op].items():
            assert torch.equal(cut[op][key], t), (op, key)
