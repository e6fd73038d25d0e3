"""The SDK's one exception tree: every gRPC status maps to a GradserveError subclass."""

from __future__ import annotations

import grpc
import pytest

import gradserve
from gradserve import errors


def test_every_status_code_is_mapped() -> None:
    unmapped = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]
    unmapped = [c for c in unmapped if c not in errors.STATUS_TO_ERROR]
    assert unmapped == []
    for code, cls in errors.STATUS_TO_ERROR.items():
        assert issubclass(cls, gradserve.GradserveError)
        assert cls.code == code.name


class _FakeRpcError(grpc.RpcError):
    """A grpc.RpcError as grpc raises it (grpc's own type, not one of ours)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])
def test_from_rpc_error_keeps_code_and_message(code: grpc.StatusCode) -> None:
    err = errors.from_rpc_error(_FakeRpcError(code, "what went wrong"))
    assert isinstance(err, errors.STATUS_TO_ERROR[code])
    assert err.code == code.name
    assert err.message == "what went wrong"


def test_spec_position_comes_from_trailing_metadata() -> None:
    err = errors.from_rpc_error(
        _FakeRpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "line 2, column 5: bad",
            ((errors.SPEC_LINE_KEY, "2"), (errors.SPEC_COLUMN_KEY, "5")),
        )
    )
    assert isinstance(err, gradserve.InvalidSpecError)
    assert (err.line, err.column) == (2, 5)
    assert isinstance(err, gradserve.InvalidArgumentError)


def test_invalid_argument_without_position_is_not_a_spec_error() -> None:
    err = errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad shape"))
    assert type(err) is gradserve.InvalidArgumentError
