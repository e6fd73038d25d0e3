"""The finite difference's own error at the worst element (Richardson, steps h and h/2).

A central difference ``D(h) = (f(x + h) - f(x - h)) / 2h`` is off by ``c·h²``
(truncation) plus round-off ``~ ε·|f| / h``. ``D(h)`` and ``D(h/2)`` differ by
about ``¾·c·h²`` plus their round-offs, so ``|D(h) - D(h/2)|·4/3`` plus the
round-off bound estimates the error of the difference the check compared with
(the numdifftools idea, for one element: four more evaluations of ``f``; of its
gradient for a second-order check, which differences the gradient). The
report then tells a real disagreement (the error is far beyond this estimate)
from the noise of finite differences (it is within it: a tighter tolerance than
the differences can resolve).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from ._ops_impl import Fn
from .report import CheckReport, describe

F64 = torch.float64
EPS64 = float(torch.finfo(F64).eps)


def with_error_estimate(
    report: CheckReport,
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    batched: bool,
    eps: float,
) -> CheckReport:
    """``report`` with ``worst.fd_error`` set, for an element-wise check: first order
    (a difference of ``f``) or second order (a difference of the gradient, whose
    element ``d²f / da[i] db[j]`` differences ``df / da[i]`` along ``b[j]``).

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
    """
    w = report.worst
    if w is None or report.kind != "finite_difference" or w.projection is not None:
        return report
    if report.order == 1:
        row, column = None, w.input
    elif report.order == 2 and "," in w.input:
        row, column = w.input.split(",", 1)
    else:
        return report
    if column not in inputs or (row is not None and row not in inputs):
        return report
    names = list(input_names)
    point = [(inputs[n][w.point] if batched else inputs[n]).detach().to(F64).clone() for n in names]
    target = names.index(column)
    flat = point[target].reshape(-1)
    element = _flat_index(w.input_index, tuple(point[target].shape))

    def f_at(step: float) -> tuple[float, float]:
        args = list(point)
        moved = flat.clone()
        moved[element] += step
        args[target] = moved.reshape(point[target].shape)
        if row is None:
            with torch.no_grad():
                out = torch.as_tensor(fn(*args)).to(F64)
        else:
            out = _gradient(fn, args, names.index(row))
        value = out[tuple(w.output_index)] if w.output_index else out.reshape(-1)[0]
        return float(value), float(out.abs().max())

    try:
        (p1, s1), (m1, s2) = f_at(eps), f_at(-eps)
        (p2, s3), (m2, s4) = f_at(eps / 2), f_at(-eps / 2)
    except Exception:  # the function fails off the point: no estimate, not a new error
        return report
    d1, d2 = (p1 - m1) / (2 * eps), (p2 - m2) / eps
    truncation = abs(d1 - d2) * 4 / 3
    roundoff = EPS64 * max(s1, s2, s3, s4) / eps
    estimated = replace(report, worst=replace(w, fd_error=truncation + roundoff))
    return replace(estimated, message=describe(estimated))


def _gradient(fn: Fn, args: list[torch.Tensor], row: int) -> torch.Tensor:
    """``df / d args[row]`` at ``args`` (float64): what a second-order check differences."""
    args = list(args)
    args[row] = args[row].detach().requires_grad_(True)
    with torch.enable_grad():
        out = torch.as_tensor(fn(*args)).to(F64).reshape(())
        (grad,) = torch.autograd.grad(out, args[row], allow_unused=True)
    return torch.zeros_like(args[row]) if grad is None else grad.detach()


def _flat_index(index: Sequence[int], shape: tuple[int, ...]) -> int:
    flat = 0
    for i, size in zip(index, shape, strict=True):
        flat = flat * size + int(i)
    return flat
