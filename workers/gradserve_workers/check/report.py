"""The check's report: :class:`gradserve_workers.report.CheckReport` (torch-free, what
the server encodes) built from a comparison, with the worst element named by input
and index."""

from __future__ import annotations

from dataclasses import replace

from ..report import CheckReport, Kink, WorstElement, describe
from .comparison import Comparison
from .points import Layout, unravel

__all__ = ["from_input", "make_report", "row_label", "worst_element"]


def row_label(
    layout: Layout, out_shape: tuple[int, ...], order: int, row: int
) -> tuple[str | None, tuple[int, ...]]:
    """The report's name for row ``row``: the gradient's element (input name and
    index) at order 2, the output's index (no name) at order 1."""
    if order == 2:
        name, idx = layout.locate(row)
        return name, idx
    return None, unravel(row, out_shape)


def from_input(cmp: Comparison, c0: int) -> Comparison:
    """``cmp`` of a shard (input elements from ``c0`` on), its worst element's input
    index made global."""
    if cmp.worst_flat is None or not c0:
        return cmp
    p, r, c = cmp.worst_flat
    return replace(cmp, worst_flat=(p, r, c0 + c))


def worst_element(
    cmp: Comparison, layout: Layout, out_shape: tuple[int, ...], order: int
) -> WorstElement | None:
    """The worst element of ``cmp``, named by input and index."""
    if cmp.worst_flat is None:
        return None
    p, r, c = cmp.worst_flat
    col_name, col_idx = layout.locate(c)
    row_name, row_idx = row_label(layout, out_shape, order, r)
    name = f"{row_name},{col_name}" if row_name is not None else col_name
    return WorstElement(
        point=p,
        input=name,
        output_index=row_idx,
        input_index=col_idx,
        analytic=cmp.analytic,
        numeric=cmp.numeric,
        abs_error=cmp.abs_error,
        rel_error=cmp.rel_error,
    )


def make_report(
    *,
    kind: str,
    order: int,
    mode: str,
    cmp: Comparison,
    worst: WorstElement | None,
    kink: Kink | None,
    symmetric: bool | None,
    max_asym: float,
    point_passed: list[bool],
    atol: float,
    rtol: float,
    eps: float,
    vmapped: bool,
    dtype: str,
) -> CheckReport:
    """The report, with its message: it passes when every point does, no kink was
    found and no Hessian is asymmetric."""
    r = CheckReport(
        passed=all(point_passed) and kink is None and symmetric is not False,
        kind=kind,
        order=order,
        mode=mode,
        max_abs_error=cmp.max_abs,
        max_rel_error=cmp.max_rel,
        worst=worst,
        non_differentiable=kink is not None,
        symmetric=symmetric,
        point_passed=tuple(point_passed),
        message="",
        atol=atol,
        rtol=rtol,
        eps=eps,
        num_points=len(point_passed),
        vmapped=vmapped,
        kink=kink,
        dtype=dtype,
        max_asymmetry=max_asym,
    )
    return replace(r, message=describe(r))
