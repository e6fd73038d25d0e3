"""One report model: every field of the worker's check report reaches the SDK's
CheckReport, by the unary path (report_to_proto, a CheckResponse) and by the job
path (the store's JSON, the merge of chunks, report_to_proto, a TaskResult).

The fields are read from the worker's dataclasses, so a field added there fails
this test until it is carried through the proto and the SDK (or named in RENAMED
with what carries it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

import pytest

import gradserve
from gradserve import _core
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.encoding import describe_execution, report_to_proto
from gradserve_server.jobs import codec
from gradserve_workers import report as worker

# worker field -> the SDK's name for it, where the two differ
RENAMED = {
    "vmapped": "execution_path",  # the call's path: "vmap" or "per_point" (see below)
    "autograd_matches_fd": "autograd_matches_finite_differences",
}
# values the wire carries as names of a proto enum: any other string would be lost
NAMED = {"kind": "claimed_hessian", "dtype": "float32", "mode": "fast"}


def sample(cls: type, seed: int = 0) -> Any:
    """An instance of a worker dataclass with every field set, none to its default,
    and no two numbers alike (so a field mapped onto another would show)."""
    values: dict[str, Any] = {}
    for i, field in enumerate(dataclasses.fields(cls)):
        values[field.name] = sample_value(
            field.name, typing.get_type_hints(cls)[field.name], seed + i
        )
    return cls(**values)


def sample_value(name: str, hint: Any, n: int) -> Any:
    if name in NAMED:
        return NAMED[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = args  # an optional field: set it
        return sample_value(name, hint, n)
    if dataclasses.is_dataclass(hint):
        return sample(typing.cast(type, hint), 100 * (n + 1))
    if hint is bool:
        return n % 2 == 1
    if hint is int:
        return 3 + n
    if hint is float:
        return 0.5 + n / 8
    if hint is str:
        return f"{name} {n}"
    if typing.get_origin(hint) is tuple and args[-1] is Ellipsis:
        return tuple(sample_value(name, args[0], n + k) for k in range(2))
    raise AssertionError(f"no sample value for {name}: {hint}; extend sample_value")


def assert_reaches(theirs: Any, ours: Any, vmapped_path: str, where: str) -> None:
    """Every field of the worker's ``theirs`` is on the SDK's ``ours``, same value."""
    for field in dataclasses.fields(theirs):
        value = getattr(theirs, field.name)
        name = RENAMED.get(field.name, field.name)
        assert hasattr(ours, name), f"{where}.{field.name} does not reach the SDK"
        got = getattr(ours, name)
        if field.name == "vmapped":
            assert got == vmapped_path, f"{where}.vmapped"
        elif dataclasses.is_dataclass(value):
            assert got is not None, f"{where}.{field.name} is lost"
            assert_reaches(value, got, vmapped_path, f"{where}.{field.name}")
        elif isinstance(value, float):
            assert math.isclose(got, value), f"{where}.{field.name}: {got} != {value}"
        else:
            assert got == value, f"{where}.{field.name}: {got!r} != {value!r}"


@pytest.mark.parametrize("vmapped", [True, False])
def test_every_field_of_a_unary_check_report_reaches_the_sdk(vmapped: bool) -> None:
    report = dataclasses.replace(sample(worker.CheckReport), vmapped=vmapped)
    meta = pb.ComputeMetadata()
    describe_execution(meta, report.vmapped, ())
    reply = pb.CheckResponse(report=report_to_proto(report, meta.execution_path), metadata=meta)
    ours = _core.decode_check(pb.CheckResponse.FromString(reply.SerializeToString()))
    assert isinstance(ours, gradserve.CheckReport)
    assert_reaches(report, ours, "vmap" if vmapped else "per_point", "CheckReport")


def test_every_field_of_a_job_check_report_reaches_the_sdk() -> None:
    report = sample(worker.CheckReport)
    # a chunk's report as the store keeps it, read back and merged as the runner does
    stored = json.loads(json.dumps(codec.report_to_json(report)))
    assert codec.report_from_json(stored) == report
    merged = worker.merge_reports([codec.report_from_json(stored)], [0])
    meta = pb.ComputeMetadata()
    describe_execution(meta, merged.vmapped, ())
    header = pb.TaskResult(task_index=0, task_id="t")
    header.check.CopyFrom(report_to_proto(merged, meta.execution_path))
    ours = _core.task_result(pb.TaskResult.FromString(header.SerializeToString()), []).check
    assert ours is not None
    assert_reaches(merged, ours, "vmap" if merged.vmapped else "per_point", "CheckReport")
    # the merge keeps the fields it has no reason to change
    for name in ("dtype", "three_way", "autograd_matches_fd"):
        assert getattr(merged, name) == getattr(report, name), name
    assert merged.worst is not None and merged.worst.projection == report.worst.projection
    assert merged.kink is not None and merged.kink.direction == report.kink.direction


def test_a_field_the_sdk_lacks_fails_the_test() -> None:
    @dataclasses.dataclass(frozen=True)
    class Wider(worker.Kink):
        novel: int | None = None

    kink = sample(Wider)
    known = {f.name: getattr(kink, f.name) for f in dataclasses.fields(worker.Kink)}
    assert_reaches(sample(worker.Kink), gradserve.Kink(**known), "", "Kink")
    with pytest.raises(AssertionError, match="novel does not reach the SDK"):
        assert_reaches(kink, gradserve.Kink(**known), "", "Kink")


def test_the_sample_sets_every_field_off_its_default() -> None:
    for cls in (worker.CheckReport, worker.WorstElement, worker.Kink):
        made = sample(cls)
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                assert getattr(made, field.name) != field.default, (cls.__name__, field.name)
