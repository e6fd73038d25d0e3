"""What the compiled closures run: the frame of one call, the signals that leave a
loop or the def, the guard that gives every error its node's position, the
operators on numbers and tensors, and the checks of indexing."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch

from .._vmap import is_data_dependent_error
from . import scalars
from .errors import DataDependentControlFlow, FunctionRuntimeError, LangError
from .layout import Where
from .runtime import Context, to_int


class Frame:
    """The state of one call: variables and the Context."""

    __slots__ = ("ctx", "env")

    def __init__(self, env: dict[str, Any], ctx: Context) -> None:
        self.env = env
        self.ctx = ctx


class Return:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


# Statement closures return None to go on, or one of these to leave a loop or the def.
BREAK = object()
CONTINUE = object()

Evaluator = Callable[[Frame], Any]
Executor = Callable[[Frame], object]

_TENSOR_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}

_COMPARE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def _translate(exc: Exception, where: Where) -> LangError:
    """A torch/Python exception as one of ours, positioned at the failing node."""
    if is_data_dependent_error(exc):
        return DataDependentControlFlow(
            f"{where.text}: needs the value of a tensor, which vmap cannot provide "
            "(data-dependent control flow)",
            where.line,
            where.column,
            where.source_line,
        )
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = lines[0] if lines else type(exc).__name__
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return FunctionRuntimeError(
        f"{where.text}: {detail}", where.line, where.column, where.source_line
    )


def guard(where: Where, run: Evaluator, account: bool = False) -> Evaluator:
    """Give every error raised while running `run` the position of its node.

    With ``account``, the node makes new tensors (an operator, a call, an index): its
    result goes through Context.account, which checks the deadline, the cancel flag
    and the memory budget between operations.
    """

    def guarded(frame: Frame) -> Any:
        try:
            value = run(frame)
            if account:
                frame.ctx.account(value, where.quoted)
            return value
        except LangError as exc:
            if exc.line is None:
                # Raised by a helper that does not know where it is: name the expression.
                if isinstance(exc, FunctionRuntimeError) and where.text not in exc.message:
                    exc.message = f"{where.text}: {exc.message}"
                exc.locate(where.line, where.column, where.source_line)
            raise
        except Exception as exc:  # torch and Python errors: report, never crash
            raise _translate(exc, where) from None

    return guarded


def binary(ctx: Context, symbol: str, left: Any, right: Any, what: str) -> Any:
    """One arithmetic operator on numbers and tensors."""
    if isinstance(left, tuple) or isinstance(right, tuple):
        raise FunctionRuntimeError(
            f"tuples cannot be used with `{symbol}`; use tensor((...)) or stack((...))"
        )
    if not isinstance(left, torch.Tensor) and not isinstance(right, torch.Tensor):
        return scalars.binary(symbol, left, right, ctx.limits.max_int)
    if symbol == "@":
        return ctx.matmul(left, right, what)
    a, b = _zero_dim_float(ctx.arith(left), right), _zero_dim_float(ctx.arith(right), left)
    ctx.broadcast((a, b), what)
    return _TENSOR_OPS[symbol](a, b)


def _zero_dim_float(value: Any, other: Any) -> Any:
    """A Python float meeting a 0-d floating tensor, as a tensor of that dtype: torch
    2.13's forward AD gives ``0.5 * t`` a float64 tangent for a 0-d float32 ``t`` (the
    primal stays float32), which later ops refuse or carry into float64 results."""
    if (
        isinstance(value, float)
        and isinstance(other, torch.Tensor)
        and other.ndim == 0
        and other.is_floating_point()
    ):
        return torch.tensor(value, dtype=other.dtype, device=other.device)
    return value


def compare(ctx: Context, symbol: str, left: Any, right: Any, what: str) -> Any:
    if isinstance(left, tuple) or isinstance(right, tuple):
        raise FunctionRuntimeError(f"tuples cannot be compared with `{symbol}`")
    if not isinstance(left, torch.Tensor) and not isinstance(right, torch.Tensor):
        return scalars.compare(symbol, left, right)
    ctx.broadcast((left, right), what)
    return _COMPARE_OPS[symbol](left, right)


def index_part(value: Any) -> Any:
    if isinstance(value, bool):
        raise FunctionRuntimeError("an index must be an integer, not True/False")
    if isinstance(value, int | torch.Tensor):
        return value
    if isinstance(value, float):
        raise FunctionRuntimeError(f"an index must be an integer, got {value}")
    raise FunctionRuntimeError(
        f"an index must be an integer or a slice, got {type(value).__name__}"
    )


def slice_part(value: Any, what: str) -> int | None:
    return None if value is None else to_int(value, what)


def check_index_size(ctx: Context, target: torch.Tensor, index: tuple[Any, ...], what: str) -> None:
    """Indexing with integer tensors can produce more elements than the indexed tensor."""
    index_shapes: list[tuple[int, ...]] = []
    consumed = 1
    dim = 0
    for part in index:
        if part is None:
            continue  # a new dim: consumes none of the target's dims
        if isinstance(part, torch.Tensor):
            if part.dtype == torch.bool:
                dim += max(part.dim(), 1)
                continue
            index_shapes.append(tuple(part.shape))
            if dim < target.dim():
                consumed *= max(int(target.shape[dim]), 1)
        dim += 1
    if not index_shapes:
        return
    try:
        shape = torch.broadcast_shapes(*index_shapes)
    except RuntimeError:
        raise FunctionRuntimeError("index tensors cannot be broadcast together") from None
    rest = target.numel() // consumed
    ctx.check_numel(int(torch.Size(shape).numel()) * rest, f"the result of {what}")


def constant(value: object) -> Evaluator:
    return lambda frame: value
