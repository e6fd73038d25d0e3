"""The actor class in process: every call computes on its one compute thread, user
errors come back as data, and its results equal the worker modules' (the oracle).

Through Ray the same class runs in every end-to-end test; here its own rules."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import torch

from gradserve_workers.actor import COMPUTE_THREAD, GradActor
from gradserve_workers.check import finite_difference_check
from gradserve_workers.lang import compile_function
from gradserve_workers.tasks import CheckSpec, ChunkResult, ComputeSpec


def test_every_call_runs_on_the_same_compute_thread() -> None:
    """One thread whose allocator arena holds only the computations' memory, so a
    call's large arrays reuse the last call's pages (see GradActor.__init__)."""
    actor = GradActor()
    seen: list[tuple[int | None, str]] = []

    def work() -> ChunkResult:
        seen.append((threading.get_ident(), threading.current_thread().name))
        return ChunkResult()

    for _ in range(3):
        result = actor._run(work)
        assert result.error is None and result.actor == actor.name and result.seconds >= 0
    assert len({ident for ident, _ in seen}) == 1
    assert seen[0][1].startswith(COMPUTE_THREAD)
    assert seen[0][0] != threading.get_ident()


def test_user_errors_come_back_as_data_from_the_compute_thread() -> None:
    actor = GradActor()

    def bad() -> ChunkResult:
        raise ValueError("x must be positive")

    result = actor._run(bad)
    assert result.error is not None and result.error.kind == "invalid"
    assert "x must be positive" in result.error.message
    spec = ComputeSpec(source="sum(x", source_hash="h-bad", ops=("grad",), wrt=None,
                       batched=False, dtype="float64")  # fmt: skip
    result = actor.compute(spec, {"x": np.ones(3)}, 0, 1)
    assert result.error is not None and result.error.kind == "spec"
    assert result.error.line == 1  # the position survives the thread hop
    ok = ComputeSpec(source="sum(x * x)", source_hash="h-ok", ops=("grad",), wrt=None,
                     batched=False, dtype="float64")  # fmt: skip
    result = actor.compute(ok, {"x": np.arange(3.0)}, 0, 1)
    assert result.error is None
    np.testing.assert_array_equal(result.outputs["grad"]["x"], 2 * np.arange(3.0))


def test_checks_and_shards_equal_the_worker_modules() -> None:
    actor = GradActor()
    x = np.random.default_rng(5).uniform(-2, 2, 300)
    spec = CheckSpec(source="cumsum(sin(x))", source_hash="h-cs", wrt=None, batched=False,
                     dtype="float64", kind="finite_difference")  # fmt: skip
    fn = compile_function("cumsum(sin(x))")
    for columns in (None, (0, 120), (120, 300)):
        got = actor.check(dataclasses.replace(spec, columns=columns), {"x": x}, 0, 1)
        assert got.error is None
        want = finite_difference_check(fn, ["x"], {"x": torch.from_numpy(x)}, columns=columns)
        assert dataclasses.asdict(got.report) == dataclasses.asdict(want)
