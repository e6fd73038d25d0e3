"""Torch implementations of the whitelisted functions.

Each implementation takes the call's Context and then every parameter of its
table entry in order (the compiler fills in defaults), so the table in table.py
is the single description of the signatures. Implementations are pure: no
in-place ops (inputs belong to the caller, and torch.func transforms need
functional code), and anything that could allocate a large tensor checks the
size with the context first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as nnf

from . import sizes
from .errors import FunctionRuntimeError
from .runtime import Context, shape_text, to_int, to_number, transpose_last
from .table import FUNCTIONS

__all__ = ["IMPLEMENTATIONS"]

Impl = Callable[..., Any]
_IMPLS: dict[str, Impl] = {}


def _register(name: str) -> Callable[[Impl], Impl]:
    def add(impl: Impl) -> Impl:
        assert name in FUNCTIONS, f"{name} is implemented but not in the table"
        _IMPLS[name] = impl
        return impl

    return add


# -- argument helpers -------------------------------------------------------------


def _dims(value: object, what: str = "dim") -> int | tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(to_int(v, what) for v in value)
    return to_int(value, what)


def _one_dim(value: object) -> int | None:
    dims = _dims(value)
    if isinstance(dims, tuple):
        raise FunctionRuntimeError("dim must be a single integer here, not a tuple")
    return dims


def _flag(value: object, what: str) -> bool:
    if isinstance(value, bool | int):
        return bool(value)
    raise FunctionRuntimeError(f"{what} must be True or False")


def _shape(value: object, what: str = "shape") -> tuple[int, ...]:
    if isinstance(value, tuple):
        return tuple(to_int(v, what) for v in value)
    return (to_int(value, what),)


def _tensors(ctx: Context, values: object, name: str) -> list[torch.Tensor]:
    if not isinstance(values, tuple) or not values:
        raise FunctionRuntimeError(
            f"{name}() needs a non-empty tuple of tensors, e.g. {name}((x, y))"
        )
    return [ctx.tensor(v) for v in values]


def _matrix(value: torch.Tensor, name: str) -> torch.Tensor:
    if value.dim() != 2:
        raise FunctionRuntimeError(
            f"{name}() needs a matrix (2 dims), got shape {shape_text(value.shape)}"
        )
    return value


# -- elementwise --------------------------------------------------------------------

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "asin": torch.asin,
    "acos": torch.acos,
    "atan": torch.atan,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "tanh": torch.tanh,
    "asinh": torch.asinh,
    "acosh": torch.acosh,
    "atanh": torch.atanh,
    "exp": torch.exp,
    "expm1": torch.expm1,
    "log": torch.log,
    "log1p": torch.log1p,
    "log2": torch.log2,
    "log10": torch.log10,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "abs": torch.abs,
    "sign": torch.sign,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "round": torch.round,
    "trunc": torch.trunc,
    "square": torch.square,
    "reciprocal": torch.reciprocal,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "softplus": nnf.softplus,
    "gelu": nnf.gelu,
    "silu": nnf.silu,
    "erf": torch.erf,
    "erfc": torch.erfc,
}


def _unary(op: Callable[[torch.Tensor], torch.Tensor]) -> Impl:
    def impl(ctx: Context, x: object) -> torch.Tensor:
        return op(ctx.tensor(x))

    return impl


for _name, _op in _UNARY.items():
    _register(_name)(_unary(_op))

_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "atan2": torch.atan2,
    "pow": torch.pow,
    "hypot": torch.hypot,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
}


def _binary(name: str, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Impl:
    def impl(ctx: Context, x: object, y: object) -> torch.Tensor:
        a, b = ctx.tensor(x), ctx.tensor(y)
        ctx.broadcast((a, b), f"{name}()")
        return op(a, b)

    return impl


for _name, _bop in _BINARY.items():
    _register(_name)(_binary(_name, _bop))


@_register("clamp")
def _clamp(ctx: Context, x: object, low: object, high: object) -> torch.Tensor:
    t = ctx.tensor(x)
    if low is None and high is None:
        raise FunctionRuntimeError("clamp() needs min= or max=")
    if isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
        # torch.clamp wants both bounds of one kind: tensors if either is a tensor.
        lo = None if low is None else ctx.tensor(low)
        hi = None if high is None else ctx.tensor(high)
        ctx.broadcast(tuple(v for v in (t, lo, hi) if v is not None), "clamp()")
        return torch.clamp(t, lo, hi)
    lo_n = None if low is None else to_number(low, "min")
    hi_n = None if high is None else to_number(high, "max")
    return torch.clamp(t, lo_n, hi_n)


@_register("where")
def _where(ctx: Context, cond: object, x: object, y: object) -> torch.Tensor:
    if isinstance(cond, torch.Tensor):
        c = cond if cond.dtype == torch.bool else cond != 0
    elif isinstance(cond, bool | int | float):
        c = torch.as_tensor(bool(cond), device=ctx.device)
    else:
        raise FunctionRuntimeError("where() needs a condition tensor, e.g. where(x > 0, x, 0)")
    a, b = ctx.tensor(x), ctx.tensor(y)
    ctx.broadcast((c, a, b), "where()")
    return torch.where(c, a, b)


# -- reductions ---------------------------------------------------------------------


def _keep_all(result: torch.Tensor, ndim: int, keepdim: bool) -> torch.Tensor:
    return result.reshape((1,) * ndim) if keepdim else result


def _reduction(op: Callable[..., torch.Tensor]) -> Impl:
    def impl(ctx: Context, x: object, dim: object, keepdim: object) -> torch.Tensor:
        t = ctx.tensor(x)
        d = _dims(dim)
        keep = _flag(keepdim, "keepdim")
        if d is None:
            return _keep_all(op(t), t.dim(), keep)
        return op(t, dim=d, keepdim=keep)

    return impl


_register("sum")(_reduction(torch.sum))
_register("mean")(_reduction(torch.mean))


@_register("prod")
def _prod(ctx: Context, x: object, dim: object, keepdim: object) -> torch.Tensor:
    t = ctx.tensor(x)
    d = _one_dim(dim)
    keep = _flag(keepdim, "keepdim")
    if d is None:
        return _keep_all(torch.prod(t), t.dim(), keep)
    return torch.prod(t, dim=d, keepdim=keep)


def _extreme(name: str, reduce: Impl, elementwise: Impl) -> Impl:
    def impl(ctx: Context, x: object, other: object, dim: object, keepdim: object) -> torch.Tensor:
        if other is not None:
            if dim is not None:
                raise FunctionRuntimeError(
                    f"{name}(x, y) compares elementwise and takes no dim; "
                    f"for a reduction write {name}(x, dim=...)"
                )
            a, b = ctx.tensor(x), ctx.tensor(other)
            ctx.broadcast((a, b), f"{name}()")
            return elementwise(a, b)
        t = ctx.tensor(x)
        d = _dims(dim)
        keep = _flag(keepdim, "keepdim")
        if d is None:
            return _keep_all(reduce(t), t.dim(), keep)
        # amax/amin return the values only (not a (values, indices) pair) and share
        # the gradient evenly between ties.
        return reduce(t, dim=d, keepdim=keep)

    return impl


_register("max")(_extreme("max", torch.amax, torch.maximum))
_register("min")(_extreme("min", torch.amin, torch.minimum))


@_register("norm")
def _norm(ctx: Context, x: object, order: object, dim: object, keepdim: object) -> torch.Tensor:
    t = ctx.tensor(x)
    o = None if order is None else to_number(order, "ord")
    return torch.linalg.norm(t, ord=o, dim=_dims(dim), keepdim=_flag(keepdim, "keepdim"))


@_register("logsumexp")
def _logsumexp(ctx: Context, x: object, dim: object, keepdim: object) -> torch.Tensor:
    t = ctx.tensor(x)
    d = _dims(dim)
    keep = _flag(keepdim, "keepdim")
    if d is None:
        return _keep_all(torch.logsumexp(t.reshape(-1), 0), t.dim(), keep)
    return torch.logsumexp(t, d, keepdim=keep)


@_register("softmax")
def _softmax(ctx: Context, x: object, dim: object) -> torch.Tensor:
    return torch.softmax(ctx.tensor(x), to_int(dim, "dim"))


@_register("log_softmax")
def _log_softmax(ctx: Context, x: object, dim: object) -> torch.Tensor:
    return torch.log_softmax(ctx.tensor(x), to_int(dim, "dim"))


def _moment(op: Callable[..., torch.Tensor]) -> Impl:
    def impl(
        ctx: Context, x: object, dim: object, keepdim: object, correction: object
    ) -> torch.Tensor:
        t = ctx.tensor(x)
        c = to_number(correction, "correction")
        return op(t, dim=_dims(dim), keepdim=_flag(keepdim, "keepdim"), correction=c)

    return impl


_register("var")(_moment(torch.var))
_register("std")(_moment(torch.std))


def _running(name: str, op: Callable[..., torch.Tensor]) -> Impl:
    def impl(ctx: Context, x: object, dim: object) -> torch.Tensor:
        t = ctx.tensor(x)
        d = _one_dim(dim)
        if d is None:
            if t.dim() > 1:
                raise FunctionRuntimeError(
                    f"{name}() of a tensor with {t.dim()} dims needs dim=, e.g. {name}(A, dim=0)"
                )
            d = 0
        return op(t, d)

    return impl


_register("cumsum")(_running("cumsum", torch.cumsum))
_register("cumprod")(_running("cumprod", torch.cumprod))


@_register("all")
def _all(ctx: Context, x: object) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(ctx.tensor(x) != 0)
    return torch.all(t)


@_register("any")
def _any(ctx: Context, x: object) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(ctx.tensor(x) != 0)
    return torch.any(t)


# -- linear algebra -----------------------------------------------------------------


@_register("dot")
def _dot(ctx: Context, x: object, y: object) -> torch.Tensor:
    a, b = ctx.tensor(x), ctx.tensor(y)
    if a.dim() != 1 or b.dim() != 1 or a.shape[0] != b.shape[0]:
        raise FunctionRuntimeError(
            f"shapes {shape_text(a.shape)} and {shape_text(b.shape)}: dot needs two vectors "
            "of the same length (for matrices write A @ B)"
        )
    return torch.dot(a, b)


@_register("matmul")
def _matmul(ctx: Context, x: object, y: object) -> torch.Tensor:
    return ctx.matmul(x, y, "matmul()")


@_register("outer")
def _outer(ctx: Context, x: object, y: object) -> torch.Tensor:
    a, b = ctx.tensor(x), ctx.tensor(y)
    if a.dim() != 1 or b.dim() != 1:
        raise FunctionRuntimeError(
            f"outer() needs two vectors, got shapes {shape_text(a.shape)} and {shape_text(b.shape)}"
        )
    ctx.check_numel(a.numel() * b.numel(), "the result of outer()")
    return torch.outer(a, b)


@_register("kron")
def _kron(ctx: Context, x: object, y: object) -> torch.Tensor:
    a, b = ctx.tensor(x), ctx.tensor(y)
    ctx.check_numel(a.numel() * b.numel(), "the result of kron()")
    # torch 2.13's kron views its operands: a transposed one (kron(A, A.T)) fails
    return torch.kron(a.contiguous(), b.contiguous())


@_register("trace")
def _trace(ctx: Context, a: object) -> torch.Tensor:
    # diagonal().sum() rather than torch.trace: it has batching and forward-mode rules.
    return torch.diagonal(_matrix(ctx.tensor(a), "trace")).sum()


def _square_op(name: str, op: Callable[[torch.Tensor], torch.Tensor]) -> Impl:
    def impl(ctx: Context, a: object) -> torch.Tensor:
        return op(_matrix(ctx.tensor(a), name))

    return impl


_register("det")(_square_op("det", torch.linalg.det))
_register("logdet")(_square_op("logdet", torch.logdet))
_register("inv")(_square_op("inv", torch.linalg.inv))
_register("cholesky")(_square_op("cholesky", torch.linalg.cholesky))
_register("eigvalsh")(_square_op("eigvalsh", torch.linalg.eigvalsh))


@_register("solve")
def _solve(ctx: Context, a: object, b: object) -> torch.Tensor:
    return torch.linalg.solve(_matrix(ctx.tensor(a), "solve"), ctx.tensor(b))


@_register("diag")
def _diag(ctx: Context, x: object) -> torch.Tensor:
    t = ctx.tensor(x)
    if t.dim() == 1:
        ctx.check_numel(t.numel() ** 2, "the result of diag()")
        return torch.diag_embed(t)
    if t.dim() == 2:
        return torch.diagonal(t)
    raise FunctionRuntimeError(
        f"diag() needs a vector or a matrix, got shape {shape_text(t.shape)}"
    )


@_register("tril")
def _tril(ctx: Context, a: object, diagonal: object) -> torch.Tensor:
    return torch.tril(_matrix(ctx.tensor(a), "tril"), to_int(diagonal, "diagonal"))


@_register("triu")
def _triu(ctx: Context, a: object, diagonal: object) -> torch.Tensor:
    return torch.triu(_matrix(ctx.tensor(a), "triu"), to_int(diagonal, "diagonal"))


# -- shapes -------------------------------------------------------------------------


@_register("transpose")
def _transpose(ctx: Context, x: object, dim0: object, dim1: object) -> torch.Tensor:
    t = ctx.tensor(x)
    if dim0 is None and dim1 is None:
        return transpose_last(t)
    if dim0 is None or dim1 is None:
        raise FunctionRuntimeError("transpose() needs both dims or neither")
    return torch.transpose(t, to_int(dim0, "dim0"), to_int(dim1, "dim1"))


@_register("reshape")
def _reshape(ctx: Context, x: object, shape: object) -> torch.Tensor:
    # Same number of elements (torch checks), so no size check is needed.
    return torch.reshape(ctx.tensor(x), _shape(shape))


@_register("flatten")
def _flatten(ctx: Context, x: object) -> torch.Tensor:
    return torch.flatten(ctx.tensor(x))


@_register("squeeze")
def _squeeze(ctx: Context, x: object, dim: object) -> torch.Tensor:
    t = ctx.tensor(x)
    d = _one_dim(dim)
    return torch.squeeze(t) if d is None else torch.squeeze(t, d)


@_register("unsqueeze")
def _unsqueeze(ctx: Context, x: object, dim: object) -> torch.Tensor:
    return torch.unsqueeze(ctx.tensor(x), to_int(dim, "dim"))


@_register("stack")
def _stack(ctx: Context, tensors: object, dim: object) -> torch.Tensor:
    parts = _tensors(ctx, tensors, "stack")
    ctx.check_numel(sum(p.numel() for p in parts), "the result of stack()")
    return torch.stack(parts, to_int(dim, "dim"))


@_register("cat")
def _cat(ctx: Context, tensors: object, dim: object) -> torch.Tensor:
    parts = _tensors(ctx, tensors, "cat")
    ctx.check_numel(sum(p.numel() for p in parts), "the result of cat()")
    return torch.cat(parts, to_int(dim, "dim"))


@_register("numel")
def _numel(ctx: Context, x: object) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.numel())
    if isinstance(x, tuple):
        raise FunctionRuntimeError("numel() needs a tensor; for a tuple write len(t)")
    return 1


@_register("len")
def _len(ctx: Context, x: object) -> int:
    if isinstance(x, tuple):
        return len(x)
    if isinstance(x, torch.Tensor) and x.dim() > 0:
        return int(x.shape[0])
    raise FunctionRuntimeError("len() needs a tensor with at least one dim, or a tuple")


@_register("shape")
def _shape_of(ctx: Context, x: object) -> tuple[int, ...]:
    if isinstance(x, torch.Tensor):
        return tuple(int(d) for d in x.shape)
    if isinstance(x, tuple):
        raise FunctionRuntimeError("shape() needs a tensor; for a tuple write len(t)")
    return ()


# -- creation -----------------------------------------------------------------------


def _size(value: object, what: str) -> int:
    try:
        return sizes.size_value(to_number(value, what), what)
    except sizes.SizeError as exc:
        raise FunctionRuntimeError(str(exc)) from None


def _created_shape(ctx: Context, shape: object, name: str) -> tuple[int, ...]:
    parts = shape if isinstance(shape, tuple) else (shape,)
    if len(parts) > sizes.MAX_DIMS:
        raise FunctionRuntimeError(
            f"{name}() got a shape of {len(parts)} dims, more than the {sizes.MAX_DIMS} allowed"
        )
    dims = tuple(_size(v, "a size") for v in parts)
    ctx.check_shape(dims, f"{name}{shape_text(dims)}")
    return dims


@_register("zeros")
def _zeros(ctx: Context, shape: object) -> torch.Tensor:
    return torch.zeros(_created_shape(ctx, shape, "zeros"), dtype=ctx.dtype, device=ctx.device)


@_register("ones")
def _ones(ctx: Context, shape: object) -> torch.Tensor:
    return torch.ones(_created_shape(ctx, shape, "ones"), dtype=ctx.dtype, device=ctx.device)


@_register("full")
def _full(ctx: Context, shape: object, value: object) -> torch.Tensor:
    dims = _created_shape(ctx, shape, "full")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise FunctionRuntimeError("full() needs a single value")
        # Adding keeps the value's autograd (and vmap) history; torch.full would not.
        base = torch.zeros(dims, dtype=ctx.dtype, device=ctx.device)
        return base + ctx.tensor(value).reshape(())
    return torch.full(dims, to_number(value, "value"), dtype=ctx.dtype, device=ctx.device)


@_register("zeros_like")
def _zeros_like(ctx: Context, x: object) -> torch.Tensor:
    return torch.zeros_like(ctx.tensor(x))


@_register("ones_like")
def _ones_like(ctx: Context, x: object) -> torch.Tensor:
    return torch.ones_like(ctx.tensor(x))


@_register("eye")
def _eye(ctx: Context, n: object, m: object) -> torch.Tensor:
    rows = _size(n, "n")
    cols = rows if m is None else _size(m, "m")
    dims = _created_shape(ctx, (rows, cols), "eye")
    return torch.eye(dims[0], dims[1], dtype=ctx.dtype, device=ctx.device)


@_register("arange")
def _arange(ctx: Context, start: object, end: object, step: object) -> torch.Tensor:
    first = to_number(start, "start")
    s = to_number(step, "step")
    lo, hi = (0, first) if end is None else (first, to_number(end, "end"))
    count = sizes.arange_count(lo, hi, s)
    if count is None:
        raise FunctionRuntimeError("arange() needs a nonzero, finite step and finite bounds")
    ctx.check_numel(count, "the result of arange()")
    return torch.arange(lo, hi, s, dtype=ctx.dtype, device=ctx.device)


@_register("linspace")
def _linspace(ctx: Context, start: object, end: object, steps: object) -> torch.Tensor:
    n = _size(steps, "steps")
    ctx.check_numel(n, "the result of linspace()")
    lo, hi = to_number(start, "start"), to_number(end, "end")
    return torch.linspace(lo, hi, n, dtype=ctx.dtype, device=ctx.device)


@_register("tensor")
def _tensor(ctx: Context, values: object) -> torch.Tensor:
    def build(value: object) -> torch.Tensor:
        if isinstance(value, tuple):
            if not value:
                return torch.zeros(0, dtype=ctx.dtype, device=ctx.device)
            parts = [build(v) for v in value]
            ctx.check_numel(sum(p.numel() for p in parts), "the result of tensor()")
            try:
                return torch.stack(parts)
            except RuntimeError:
                raise FunctionRuntimeError(
                    "tensor() needs rows of equal length, e.g. tensor(((1, 2), (3, 4)))"
                ) from None
        return ctx.tensor(value)

    return build(values)


# name -> implementation(ctx, *params in table order)
IMPLEMENTATIONS: dict[str, Impl] = dict(_IMPLS)

_missing = set(FUNCTIONS) - set(IMPLEMENTATIONS)
assert not _missing, f"functions in the table without an implementation: {sorted(_missing)}"
