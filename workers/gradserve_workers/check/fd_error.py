"""The finite difference's own error at the worst element (Richardson, steps h and h/2).

A central difference ``D(h) = (f(x + h) - f(x - h)) / 2h`` is off by ``c·h²``
(truncation) plus round-off ``~ ε·|f| / h``. ``D(h)`` and ``D(h/2)`` differ by
about ``¾·c·h²`` plus their round-offs, so ``|D(h) - D(h/2)|·4/3`` plus the
round-off bound estimates the error of the difference the check compared with
(the numdifftools idea, for one element: four more evaluations of ``f``; of its
gradient for a second-order check, which differences the gradient; along the
random direction ``u`` and projected on ``v`` for fast mode's worst ``vᵀJu``). The
report then tells a real disagreement (the error is far beyond this estimate)
from the noise of finite differences (it is within it: a tighter tolerance than
the differences can resolve).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch

from ..lang.errors import FunctionRuntimeError
from ..registry import failure_message
from ..report import CheckReport, WorstElement, describe
from ..transforms import Fn
from .points import unit_rows

F64 = torch.float64
EPS64 = float(torch.finfo(F64).eps)

# the derivative's value at a step along the difference's direction, and its scale
Along = Callable[[float], tuple[float, float]]


def with_error_estimate(
    report: CheckReport,
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    batched: bool,
    eps: float,
    seed: int = 0,
    num_projections: int = 4,
) -> CheckReport:
    """``report`` with ``worst.fd_error`` set: at first order for a difference of
    ``f``, at second order for a difference of its gradient (``d²f / da[i] db[j]``
    differences ``df / da[i]`` along ``b[j]``), and in fast mode for the worst random
    projection (``seed`` and ``num_projections`` as the check drew them).

    >>> from gradserve_workers.check import finite_difference_check
    >>> x = torch.tensor([0.5, 2.0], dtype=F64)
    >>> f = lambda x: torch.exp(3 * x).sum()
    >>> r = finite_difference_check(f, ["x"], {"x": x})
    >>> r = with_error_estimate(r, f, ["x"], {"x": x}, batched=False, eps=1e-6)
    >>> r.worst.fd_error < 1e-3 < r.worst.numeric
    True
    >>> r = finite_difference_check(f, ["x"], {"x": x}, order=2)
    >>> r.worst.fd_error < 1e-3 < r.worst.numeric
    True
    >>> r = finite_difference_check(f, ["x"], {"x": x}, fast=True)
    >>> r.worst.projection, r.worst.fd_error < 1e-3
    (0, True)
    """
    w = report.worst
    if w is None or report.kind != "finite_difference" or report.order not in (1, 2):
        return report
    names = list(input_names)
    if any(n not in inputs for n in names):
        return report
    point = [(inputs[n][w.point] if batched else inputs[n]).detach().to(F64).clone() for n in names]
    try:
        if w.projection is None:
            along = _element(fn, names, point, w, report.order)
        else:
            along = _projection(fn, names, point, w, report.order, seed, num_projections)
        if along is None:
            return report
        (p1, s1), (m1, s2) = along(eps), along(-eps)
        (p2, s3), (m2, s4) = along(eps / 2), along(-eps / 2)
    except Exception as error:
        if not _fails_off_the_point(error):
            raise  # a budget (LimitExceededError) or a bug of ours: not the function's doing
        return report  # the function fails off the point: no estimate, not a new error
    d1, d2 = (p1 - m1) / (2 * eps), (p2 - m2) / eps
    truncation = abs(d1 - d2) * 4 / 3
    roundoff = EPS64 * max(s1, s2, s3, s4) / eps
    estimated = replace(report, worst=replace(w, fd_error=truncation + roundoff))
    return replace(estimated, message=describe(estimated))


def _fails_off_the_point(error: BaseException) -> bool:
    """Whether ``error`` is the user's function failing where it was evaluated: the
    language's runtime error, or an exception a registered function raised itself."""
    return isinstance(error, FunctionRuntimeError) or failure_message(error) is not None


def _element(
    fn: Fn, names: list[str], point: list[torch.Tensor], w: WorstElement, order: int
) -> Along | None:
    """The worst element's derivative, one input element moved by the step."""
    row, _, column = w.input.rpartition(",") if order == 2 else ("", "", w.input)
    if column not in names or (order == 2 and row not in names):
        return None
    target = names.index(column)
    shape = tuple(point[target].shape)
    element = _flat_index(w.input_index, shape)
    rows = [names.index(row)] if order == 2 else []

    def along(step: float) -> tuple[float, float]:
        args = list(point)
        moved = args[target].reshape(-1).clone()
        moved[element] += step
        args[target] = moved.reshape(shape)
        (out,) = _evaluate(fn, args, order, rows)
        value = out[tuple(w.output_index)] if w.output_index else out.reshape(-1)[0]
        return float(value), float(out.abs().max())

    return along


def _projection(
    fn: Fn,
    names: list[str],
    point: list[torch.Tensor],
    w: WorstElement,
    order: int,
    seed: int,
    num_projections: int,
) -> Along | None:
    """Fast mode's worst ``vᵀJu``: ``vᵀ`` times the output (or gradient) moved along
    ``u``, the unit rows the check drew (same generator, same order: u, then v)."""
    wrt = w.input.split(",")
    if any(n not in names for n in wrt) or not 0 <= int(w.projection or 0) < num_projections:
        return None
    rows = [names.index(n) for n in wrt]
    shapes = [tuple(point[i].shape) for i in rows]
    x0 = torch.cat([point[i].reshape(-1) for i in rows])
    n = x0.numel()
    m = n if order == 2 else _evaluate(fn, point, 1, [])[0].numel()
    gen = torch.Generator().manual_seed(seed)
    u = unit_rows(num_projections, n, gen)[w.projection]
    v = unit_rows(num_projections, m, gen)[w.projection]

    def along(step: float) -> tuple[float, float]:
        args = list(point)
        moved = x0 + step * u
        offset = 0
        for i, shape in zip(rows, shapes, strict=True):
            size = args[i].numel()
            args[i] = moved[offset : offset + size].reshape(shape)
            offset += size
        out = torch.cat([t.reshape(-1) for t in _evaluate(fn, args, order, rows)])
        return float(v @ out), float(out.abs().max())

    return along


def _evaluate(fn: Fn, args: list[torch.Tensor], order: int, rows: list[int]) -> list[torch.Tensor]:
    """``[f(args)]`` (order 1) or ``df / d args[i]`` for each ``i`` in ``rows`` (order 2,
    what a second-order check differences), in float64."""
    if order == 1:
        with torch.no_grad():
            return [torch.as_tensor(fn(*args)).to(F64)]
    args = list(args)
    for i in rows:
        args[i] = args[i].detach().requires_grad_(True)
    with torch.enable_grad():
        out = torch.as_tensor(fn(*args)).to(F64).reshape(())
        grads = torch.autograd.grad(out, [args[i] for i in rows], allow_unused=True)
    return [
        torch.zeros_like(args[i]) if g is None else g.detach()
        for i, g in zip(rows, grads, strict=True)
    ]


def _flat_index(index: Sequence[int], shape: tuple[int, ...]) -> int:
    flat = 0
    for i, size in zip(index, shape, strict=True):
        flat = flat * size + int(i)
    return flat
