"""The server's one mapping from failures to gRPC status (errors.to_status)."""

from __future__ import annotations

import grpc
import pytest

from gradserve_server import errors
from gradserve_workers import lang
from gradserve_workers.tasks import ChunkError


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
