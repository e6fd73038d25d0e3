"""The actor class in process: every call computes on its one compute thread, user
errors come back as data, and its results equal the worker modules' (the oracle).

Through Ray the same class runs in every end-to-end test; here its own rules."""

from __future__ import annotations

import dataclasses
import pickle
import threading

import numpy as np
import pytest
import torch

from gradserve_workers.actor import COMPUTE_THREAD, GradActor
from gradserve_workers.check import finite_difference_check
from gradserve_workers.lang import compile_function
from gradserve_workers.ops import OpsError
from gradserve_workers.tasks import (
    CheckSpec,
    ChunkCall,
    ChunkResult,
    ComputeSpec,
    pack_call,
    unpack_call,
)


def test_every_call_runs_on_the_same_compute_thread() -> None:
    """One thread whose allocator arena holds only the computations' memory, so a
    call's large arrays reuse the last call's pages (see GradActor.__init__)."""
    actor = GradActor()
    seen: list[tuple[int | None, str]] = []

    def work() -> ChunkResult:
        seen.append((threading.get_ident(), threading.current_thread().name))
        return ChunkResult()

    for _ in range(3):
        result = actor._wait(*actor._begin(work))
        assert result.error is None and result.actor == actor.name and result.seconds >= 0
    assert len({ident for ident, _ in seen}) == 1
    assert seen[0][1].startswith(COMPUTE_THREAD)
    assert seen[0][0] != threading.get_ident()


def test_user_errors_come_back_as_data_from_the_compute_thread() -> None:
    actor = GradActor()

    def bad() -> ChunkResult:
        raise OpsError("x must be positive")

    result = actor._wait(*actor._begin(bad))
    assert result.error is not None and result.error.kind == "invalid"
    assert "x must be positive" in result.error.message

    def bug() -> ChunkResult:  # a ValueError of our own is not the user's mistake
        raise ValueError("an index went wrong")

    result = actor._wait(*actor._begin(bug))
    assert result.error is not None and result.error.kind == "internal"
    assert result.error.message == "ValueError"  # the user sees its type, not its text
    assert result.error.traceback is not None and "an index went wrong" in result.error.traceback
    assert "in bug" in result.error.traceback  # where, for the server's log
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


def test_a_packed_call_runs_as_its_typed_method() -> None:
    """Small chunks reach the actor as one packed message (``run``); what comes back
    is what the typed methods return for the same spec, arrays and range."""
    actor = GradActor()
    rng = np.random.default_rng(11)
    x = rng.uniform(-2, 2, 40)
    check = CheckSpec(source="cumsum(sin(x))", source_hash="h-pk", wrt=None, batched=False,
                      dtype="float64", kind="finite_difference", columns=(5, 30))  # fmt: skip
    packed = actor.run(pack_call(ChunkCall(check, {"x": x}, 0, 1)))
    typed = actor.check(check, {"x": x}, 0, 1)
    assert packed.error is None and packed.report.num_points == 1
    assert dataclasses.asdict(packed.report) == dataclasses.asdict(typed.report)
    points = rng.normal(size=(6, 3))
    compute = ComputeSpec(source="sum(x * x)", source_hash="h-pk2", ops=("value", "grad"),
                          wrt=None, batched=True, dtype="float64")  # fmt: skip
    packed = actor.run(pack_call(ChunkCall(compute, {"x": points}, 2, 5)))
    assert packed.error is None
    np.testing.assert_array_equal(packed.outputs["grad"]["x"], 2 * points[2:5])
    np.testing.assert_allclose(packed.outputs["value"][""], (points[2:5] ** 2).sum(1), rtol=1e-15)
    # a user error in a packed call still comes back as data, with its position
    bad = dataclasses.replace(compute, source="sum(x +)", source_hash="h-pk3")
    result = actor.run(pack_call(ChunkCall(bad, {"x": points}, 0, 6)))
    assert result.error is not None and result.error.kind == "spec" and result.error.line == 1


def test_a_message_that_is_not_a_chunk_call_is_refused() -> None:
    with pytest.raises(TypeError, match="expected a ChunkCall, got dict"):
        unpack_call(pickle.dumps({"spec": None}))
