"""The server's one mapping from failures to gRPC status (errors.to_status)."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import grpc
import pytest

from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import calls, errors
from gradserve_workers import lang
from gradserve_workers.ops import OpsError
from gradserve_workers.tasks import ChunkError, ChunkResult

T = TypeVar("T")


def test_spec_error_is_invalid_argument_with_its_position() -> None:
    with pytest.raises(lang.SpecError) as info:
        lang.parse_and_validate("x +\n  sin(")
    status = errors.to_status(info.value)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.line == info.value.line and status.column == info.value.column
    assert dict(status.trailing_metadata())["gradserve-spec-line"] == str(info.value.line)
    assert status.field == "function"


def test_limit_is_resource_exhausted() -> None:
    with pytest.raises(lang.LimitExceededError) as info:
        lang.parse_and_validate("x" + " + x" * 10, lang.Limits(max_nodes=5))
    assert errors.to_status(info.value).code is grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("spec", grpc.StatusCode.INVALID_ARGUMENT),
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
        ("limit", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("internal", grpc.StatusCode.INTERNAL),
    ],
)
def test_chunk_errors(kind: str, code: grpc.StatusCode) -> None:
    status = errors.to_status(errors.from_chunk_error(ChunkError(kind, "boom", 1, 2)))
    assert status.code is code and "boom" in status.message


def test_timeouts_are_deadlines() -> None:
    assert errors.to_status(TimeoutError()).code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_lost_workers_are_unavailable() -> None:
    from ray import exceptions as rex

    assert errors.to_status(rex.ActorDiedError()).code is grpc.StatusCode.UNAVAILABLE


def test_unexpected_errors_are_internal_without_a_traceback() -> None:
    status = errors.to_status(KeyError("secret internals"))
    assert status.code is grpc.StatusCode.INTERNAL
    assert "secret" not in status.message and "Traceback" not in status.message
    assert "internal error" in status.message


def test_bad_request_detail_names_the_field() -> None:
    from google.rpc import error_details_pb2

    rich = errors.Status(grpc.StatusCode.INVALID_ARGUMENT, "bad", field="inputs").rich()
    detail = error_details_pb2.BadRequest()
    assert rich.details[0].Unpack(detail)
    assert detail.field_violations[0].field == "inputs"


def _in_a_call(work: Callable[[], T]) -> tuple[str, T]:
    """``work()`` inside a call's context (its request id), as a handler runs."""

    def run() -> tuple[str, T]:
        call = calls.Call("Compute")
        calls.begin(call)
        return call.request_id, work()

    return contextvars.copy_context().run(run)


def test_a_bug_in_a_worker_op_is_internal_with_the_calls_id_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gradserve_workers.actor import GradActor

    def op_with_a_bug() -> ChunkResult:
        raise RuntimeError("deliberate bug in an op")

    actor = GradActor()
    result = actor._wait(*actor._begin(op_with_a_bug))  # its own guard, as for every chunk
    assert result.error is not None
    with caplog.at_level(logging.ERROR, logger="gradserve.server"):
        request_id, status = _in_a_call(lambda: errors.to_status(errors.from_chunk_error(
            result.error)))  # fmt: skip
    assert status.code is grpc.StatusCode.INTERNAL
    assert status.message == (
        f"internal error {request_id}; see the server log (the worker failed: RuntimeError)"
    )
    assert "deliberate" not in status.message  # our internals stay in the log
    logged = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert len(logged) == 1
    assert "Traceback" in logged[0] and "deliberate bug in an op" in logged[0]
    assert "in op_with_a_bug" in logged[0]


@pytest.mark.parametrize(
    "error",
    [OpsError("hessian(f): the output must be a scalar"), lang.FunctionRuntimeError("bad")],
)
def test_a_users_mistake_in_a_worker_stays_invalid_argument(error: Exception) -> None:
    from gradserve_workers.actor import classify

    _, status = _in_a_call(lambda: errors.to_status(errors.from_chunk_error(classify(error))))
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.message == str(error)


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff", b"\x9b\x06" * 10_000 + b"\x9c\x06" * 10_000],  # junk; groups too deep
)
def test_bytes_that_are_no_message_are_refused_as_invalid(data: bytes) -> None:
    decoded = errors.safe_deserializer(pb.ComputeRequest)(data)
    assert isinstance(decoded, errors.Undecodable)
    with pytest.raises(errors.ServiceError) as info:
        errors.decoded(decoded)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ComputeRequest message" in info.value.message


def test_the_jobs_gauge_is_skipped_only_for_a_closed_store(tmp_path: Path) -> None:
    from gradserve_server.jobs.store import JobStore
    from gradserve_server.metrics import _PoolCollector

    store = JobStore(tmp_path)
    store.close()  # as while the server stops
    names = [m.name for m in _PoolCollector(SimpleNamespace(store=store)).collect()]
    assert "gradserve_jobs" not in names and "gradserve_workers" in names

    def broken() -> dict[str, int]:
        raise RuntimeError("a bug in the store")

    buggy = SimpleNamespace(store=SimpleNamespace(count_by_state=broken))
    with pytest.raises(RuntimeError, match="a bug in the store"):  # not hidden
        list(_PoolCollector(buggy).collect())
