"""Check reports: plain, picklable, torch-free (the server imports this module).

:class:`CheckReport` is what :mod:`gradserve_workers.check` returns; a batched check
split into chunks is put back together with :func:`merge_reports`, which re-indexes
the points and rewrites the message from the fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

__all__ = [
    "KINDS",
    "CheckReport",
    "Kink",
    "WorstElement",
    "describe",
    "merge_reports",
    "violation",
]

KINDS = ("finite_difference", "claimed_grad", "claimed_jacobian", "claimed_hessian")


@dataclass(frozen=True)
class WorstElement:
    """The derivative element that is furthest outside the tolerance (or closest to it).

    ``analytic`` is autograd's value. ``numeric`` is the finite-difference value, or,
    for a claimed-derivative check, the claimed value. For second-order checks
    ``input`` is ``"a,b"``: the element is d²f / d a[output_index] d b[input_index].
    In fast mode, when no element-wise check could follow, ``projection`` says which
    random projection vᵀJu failed (and the indices are empty).
    """

    point: int
    input: str
    output_index: tuple[int, ...]
    input_index: tuple[int, ...]
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    projection: int | None = None
    # the finite difference's own error estimate (Richardson, h and h/2), when known
    fd_error: float | None = None


@dataclass(frozen=True)
class Kink:
    """Where one-sided differences disagree: the function is not differentiable there.

    ``right`` and ``left`` are the forward and backward differences at step ``eps``;
    ``autograd`` is what autograd returns there (a subgradient, at best). ``at`` is the
    input element's value (``None`` along a random direction in fast mode, where
    ``direction`` says which).
    """

    point: int
    input: str
    output_index: tuple[int, ...]
    input_index: tuple[int, ...]
    at: float | None
    right: float
    left: float
    autograd: float
    direction: int | None = None


@dataclass(frozen=True)
class CheckReport:
    """The verdict of a derivative check, with the worst element and one paragraph.

    ``kind``: ``finite_difference``, ``claimed_grad``, ``claimed_jacobian`` or
    ``claimed_hessian``. ``mode``: ``full`` (every element) or ``fast`` (random
    projections vᵀJu). ``point_passed`` has one verdict per point. ``symmetric`` is
    set for second-order checks. ``kink`` (when ``non_differentiable``) says where
    one-sided differences disagree. ``dtype`` is the inputs' dtype (both sides of the
    comparison are computed in float64 regardless).
    """

    passed: bool
    kind: str
    order: int
    mode: str
    max_abs_error: float
    max_rel_error: float
    worst: WorstElement | None
    non_differentiable: bool
    symmetric: bool | None
    point_passed: tuple[bool, ...]
    message: str
    atol: float
    rtol: float
    eps: float
    num_points: int
    vmapped: bool
    kink: Kink | None = None
    dtype: str = "float64"
    max_asymmetry: float = 0.0
    # numeric claims: which of the claim, autograd and finite differences disagree
    # (a sentence, also the message's last), and autograd's own check against
    # finite differences (see gradserve_server.numeric)
    three_way: str = ""
    autograd_matches_fd: bool | None = None


def largest(values: Iterable[float]) -> float:
    """The largest of ``values``, NaN if any is (as a maximum over the elements is),
    whatever the order: ``max`` keeps or drops a NaN depending on where it stands.

    >>> largest([1.0, math.nan, 3.0]), largest([2.0, 0.5])
    (nan, 2.0)
    """
    vals = list(values)
    return math.nan if any(math.isnan(v) for v in vals) else max(vals)


def violation(worst: WorstElement, kind: str, atol: float, rtol: float) -> float:
    """How far outside the tolerance an element is: ``abs_error / allowed`` (> 1 fails).

    The reference value is the numeric one for finite differences and autograd's for
    claimed derivatives.

    >>> w = WorstElement(0, "x", (), (0,), 4.0, 3.0, 1.0, 1 / 3)
    >>> round(violation(w, "finite_difference", 0.0, 0.5), 3)
    0.667
    """
    ref = worst.numeric if kind == "finite_difference" else worst.analytic
    allowed = atol + rtol * abs(ref)
    if not math.isfinite(allowed):  # as the comparison treats a non-finite reference
        allowed = math.inf
    if math.isnan(worst.abs_error):
        return math.inf
    if allowed == 0:
        return math.inf if worst.abs_error > 0 else 0.0
    ratio = worst.abs_error / allowed
    return math.inf if math.isnan(ratio) else ratio


def _idx(index: Sequence[int]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]" if index else ""


def _num(v: float) -> str:
    return f"{v:.6g}"


def _element(w: WorstElement, order: int, claimed: bool) -> str:
    if w.projection is not None:
        return f"random projection {w.projection} (vᵀJu) at point {w.point}"
    if order == 2 and "," in w.input:
        a, b = w.input.split(",", 1)
        return f"d²f / d{a}{_idx(w.output_index)} d{b}{_idx(w.input_index)} at point {w.point}"
    if claimed and not w.output_index:
        return f"df / d{w.input}{_idx(w.input_index)} at point {w.point}"
    out = f"f{_idx(w.output_index)}"
    return f"d{out} / d{w.input}{_idx(w.input_index)} at point {w.point}"


# an error this many times the difference's own error estimate is a real disagreement
BEYOND_FD_ERROR = 3.0


def beyond_fd_error(w: WorstElement) -> bool | None:
    """Whether autograd and the difference differ by more than the difference's own
    error (``None``: no estimate)."""
    if w.fd_error is None:
        return None
    return w.abs_error > BEYOND_FD_ERROR * w.fd_error


def fd_error_sentence(w: WorstElement, passed: bool) -> str:
    est = (
        f"The finite difference's own error there is about {w.fd_error:.2g} (Richardson, h and h/2)"
    )
    if beyond_fd_error(w):
        return f"{est}: the difference of {w.abs_error:.3g} is beyond it, a real disagreement."
    if passed:
        return f"{est}."
    return (
        f"{est}: the difference of {w.abs_error:.3g} is within the noise of finite "
        "differences; the tolerance is tighter than they can resolve here (loosen atol/rtol "
        "or change eps)."
    )


def describe(r: CheckReport) -> str:
    """One paragraph: the verdict, the worst element with the values side by side, advice.

    Built from the report's fields only, so a merged report gets a fresh message.
    """
    claimed = r.kind != "finite_difference"
    if claimed:
        noun = {
            "claimed_grad": "gradient",
            "claimed_jacobian": "Jacobian",
            "claimed_hessian": "Hessian",
        }.get(r.kind, "derivative")
        what = f"claimed {noun} vs autograd (float64)"
    else:
        target = (
            "Hessian vs central differences of the gradient"
            if r.order == 2
            else ("autograd vs central differences")
        )
        how = "random projections vᵀJu" if r.mode == "fast" else "every element"
        what = f"{target} ({how}, float64, eps={r.eps:g})"
    pts = f"{r.num_points} point{'' if r.num_points == 1 else 's'}"
    if r.passed:
        verdict = "PASSED"
    elif r.non_differentiable:
        verdict = "NOT DIFFERENTIABLE"
    else:
        verdict = "FAILED"
    parts = [f"{verdict}: {what} at {pts}, atol={r.atol:g}, rtol={r.rtol:g}."]
    failing = sum(1 for p in r.point_passed if not p)
    if failing and r.num_points > 1:
        parts.append(f"{failing} of {r.num_points} points fail.")
    parts.append(f"Max abs error {r.max_abs_error:.3g}, max rel error {r.max_rel_error:.3g}.")
    if r.kink is not None:
        k = r.kink
        where = (
            f"{k.input.split(',')[-1]}{_idx(k.input_index)} = {k.at:g}"
            if k.at is not None
            else f"point {k.point} along random direction {k.direction}"
        )
        out = f" (output f{_idx(k.output_index)})" if k.output_index else ""
        deriv = "its gradient" if r.order == 2 else "f"
        parts.append(
            f"{deriv} is not differentiable at {where} (point {k.point}){out}: one-sided "
            f"derivatives {_num(k.right)} (right) and {_num(k.left)} (left) disagree; "
            f"autograd returns {_num(k.autograd)} (a subgradient at best). Finite "
            "differences cannot check a derivative at a kink: move the point off it."
        )
    w = r.worst
    if w is not None:
        if claimed:
            values = f"claimed {_num(w.numeric)} vs autograd {_num(w.analytic)}"
        else:
            values = f"analytic (autograd) {_num(w.analytic)} vs numeric {_num(w.numeric)}"
        label = "Worst element" if w.projection is None else "Worst"
        parts.append(
            f"{label}: {_element(w, r.order, claimed)}: {values} (abs error "
            f"{w.abs_error:.3g}, rel error {w.rel_error:.3g})."
        )
        if w.fd_error is not None:
            parts.append(fd_error_sentence(w, r.passed))
        if w.projection is not None and not r.passed:
            parts.append(
                "The Jacobian is too large for an element-wise check to name the element; "
                "check smaller inputs or pass fast=False."
            )
    if r.symmetric is False:
        parts.append(
            f"The {'claimed ' if claimed else ''}Hessian is not symmetric: max |H - Hᵀ| = "
            f"{r.max_asymmetry:.3g} (f is not twice continuously differentiable here, or "
            "a second derivative is wrong)."
        )
    if not r.passed and r.kink is None and w is not None and w.abs_error > 0:
        if claimed:
            parts.append(
                "The claimed derivative disagrees with autograd beyond atol + rtol·|autograd|."
            )
        else:
            parts.append(
                "Autograd and finite differences disagree beyond atol + rtol·|numeric|: check "
                "any custom backward in f; if the errors are tiny next to the values, loosen "
                "atol/rtol."
            )
    if r.dtype == "float32":
        parts.append(
            "The inputs are float32; both sides were computed in float64, so float32 "
            "round-off cannot cause a false failure."
        )
    return " ".join(parts)


def merge_reports(reports: Sequence[CheckReport], point_offsets: Sequence[int]) -> CheckReport:
    """Combine the chunk reports of one batched check into one report.

    ``point_offsets[i]`` is the index of chunk ``i``'s first point in the whole batch;
    point indices in ``worst`` and ``kink`` are shifted by it and ``point_passed`` is
    laid out by it.

    >>> ok = CheckReport(True, "finite_difference", 1, "full", 1e-9, 1e-8, None, False, None,
    ...                  (True, True), "", 1e-5, 1e-3, 1e-6, 2, True)
    >>> bad_w = WorstElement(1, "x", (), (0,), 4.0, 3.0, 1.0, 1 / 3)
    >>> bad = replace(ok, passed=False, max_abs_error=1.0, worst=bad_w,
    ...               point_passed=(True, False))
    >>> m = merge_reports([ok, bad], [0, 2])
    >>> m.passed, m.worst.point, m.point_passed, m.num_points
    (False, 3, (True, True, True, False), 4)
    """
    if not reports:
        raise ValueError("merge_reports: no reports")
    if len(reports) != len(point_offsets):
        raise ValueError(
            f"merge_reports: {len(reports)} reports but {len(point_offsets)} point offsets"
        )
    first = reports[0]
    for r in reports[1:]:
        if (r.kind, r.order) != (first.kind, first.order):
            raise ValueError(
                f"merge_reports: cannot merge a {r.kind} order-{r.order} report with a "
                f"{first.kind} order-{first.order} report"
            )
    total = max(off + r.num_points for r, off in zip(reports, point_offsets, strict=True))
    point_passed = [True] * total
    worst: WorstElement | None = None
    worst_v = -1.0
    kink: Kink | None = None
    for r, off in zip(reports, point_offsets, strict=True):
        for i, p in enumerate(r.point_passed):
            point_passed[off + i] = p
        if r.worst is not None:
            v = violation(r.worst, r.kind, r.atol, r.rtol)
            if v > worst_v:
                worst_v = v
                worst = replace(r.worst, point=r.worst.point + off)
        if r.kink is not None:
            jump = abs(r.kink.right - r.kink.left)
            if kink is None or jump > abs(kink.right - kink.left):
                kink = replace(r.kink, point=r.kink.point + off)
    symmetric_values = [r.symmetric for r in reports if r.symmetric is not None]
    merged = replace(
        first,
        passed=all(r.passed for r in reports),
        mode="fast" if any(r.mode == "fast" for r in reports) else first.mode,
        max_abs_error=largest(r.max_abs_error for r in reports),
        max_rel_error=largest(r.max_rel_error for r in reports),
        worst=worst,
        non_differentiable=any(r.non_differentiable for r in reports),
        symmetric=all(symmetric_values) if symmetric_values else None,
        point_passed=tuple(point_passed),
        num_points=total,
        vmapped=all(r.vmapped for r in reports),
        kink=kink,
        max_asymmetry=max(r.max_asymmetry for r in reports),
        message="",
    )
    return replace(merged, message=describe(merged))


def merge_shards(reports: Sequence[CheckReport]) -> CheckReport:
    """Combine the reports of one check split by input elements (``columns``) into one.

    The shards cover the same points and disjoint input elements, in order. A point
    passes when it passes in every shard; the worst element is the one furthest
    outside its tolerance (:func:`violation`), the first in (point, output, input)
    order among equals, as the whole check would name it; the kink is the one with
    the largest jump between its one-sided derivatives, the first in (point, input)
    order among equals, again as the whole check chooses.

    >>> w = WorstElement(0, "x", (1,), (0,), 4.0, 3.0, 1.0, 1 / 3)
    >>> a = CheckReport(False, "finite_difference", 1, "full", 1.0, 1 / 3, w, False, None,
    ...                 (False,), "", 1e-5, 1e-3, 1e-6, 1, True)
    >>> b = replace(a, passed=True, max_abs_error=1e-9, max_rel_error=1e-7,
    ...             worst=replace(w, input_index=(5,), abs_error=1e-9), point_passed=(True,))
    >>> m = merge_shards([a, b])
    >>> m.passed, m.worst.input_index, m.max_abs_error, m.point_passed
    (False, (0,), 1.0, (False,))
    """
    if not reports:
        raise ValueError("merge_shards: no reports")
    first = reports[0]
    for r in reports[1:]:
        if (r.kind, r.order, r.num_points) != (first.kind, first.order, first.num_points):
            raise ValueError("merge_shards: the shards are not of one check")
    point_passed = [all(ps) for ps in zip(*(r.point_passed for r in reports), strict=True)]
    # shards are in input order, so their index breaks the remaining ties
    worsts = [(-violation(w, r.kind, r.atol, r.rtol), w.point, w.output_index, i, w)
              for i, r in enumerate(reports) if (w := r.worst) is not None]  # fmt: skip
    kinks = [(-abs(k.right - k.left), k.point, i, k)
             for i, r in enumerate(reports) if (k := r.kink) is not None]  # fmt: skip
    worst = min(worsts, key=lambda t: t[:4])[-1] if worsts else None
    kink = min(kinks, key=lambda t: t[:3])[-1] if kinks else None
    merged = replace(
        first,
        passed=all(point_passed) and kink is None,
        max_abs_error=largest(r.max_abs_error for r in reports),
        max_rel_error=largest(r.max_rel_error for r in reports),
        worst=worst,
        non_differentiable=kink is not None,
        point_passed=tuple(point_passed),
        vmapped=all(r.vmapped for r in reports),
        kink=kink,
        message="",
    )
    return replace(merged, message=describe(merged))
