"""Comparing a derivative with its reference, element by element.

One blocked pass applies gradcheck's rule ``|other - reference| <= atol + rtol *
|reference|`` to every element of an (N, R, C) array: claimed derivatives against
autograd's, autograd's against central differences (formed block by block), and
fast mode's projections alike. It also screens finite differences for kinks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .options import DEFAULT_OPTIONS
from .points import TINY

__all__ = ["Comparison", "Operands", "all_pairs", "compare", "symmetry"]


@dataclass
class Comparison:
    passed: bool
    point_passed: list[bool]
    max_abs: float
    max_rel: float
    worst_flat: tuple[int, int, int] | None  # (point, row, col) in the report's order
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float


@dataclass
class Operands:
    """What :func:`compare` compares, laid out as (N, R, C).

    ``analytic`` is what the report calls analytic (autograd); the reference (the
    value the tolerance scales with) is ``reference``, or, when that is ``None``,
    the central difference ``(plus - minus) / (2 eps)`` formed block by block;
    ``other`` is the value compared with the reference. ``twice_f0`` (N, 1, C) turns
    on the kink screen. ``transposed``: rows are input elements and columns
    outputs, i.e. the report's (point, row, col) is (point, col, row) here.
    """

    analytic: torch.Tensor
    reference: torch.Tensor | None
    other: torch.Tensor
    plus: torch.Tensor | None = None
    minus: torch.Tensor | None = None
    twice_f0: torch.Tensor | None = None
    eps: float = 0.0
    transposed: bool = False


def _blocks(
    n_pts: int, rows: int, cols: int, device: torch.device, block: int
) -> list[tuple[int, int, int, int]]:
    """(p0, p1, r0, r1) slices of about ``block`` elements, in row-major order: whole
    points, or rows of one point."""
    per_point = rows * cols
    if device.type != "cpu" or n_pts * per_point <= block:
        return [(0, n_pts, 0, rows)]
    if per_point <= block:
        step = block // max(per_point, 1)
        return [(p0, min(p0 + step, n_pts), 0, rows) for p0 in range(0, n_pts, step)]
    step = max(1, block // max(cols, 1))
    return [
        (p, p + 1, r0, min(r0 + step, rows)) for p in range(n_pts) for r0 in range(0, rows, step)
    ]


class _Part(NamedTuple):
    """One block's operands: views of :class:`Operands`' (``twice_f0`` of its points)."""

    other: torch.Tensor
    reference: torch.Tensor | None
    plus: torch.Tensor | None
    minus: torch.Tensor | None
    twice_f0: torch.Tensor | None


def _part(ops: Operands, sl: tuple[slice, ...]) -> _Part:
    """The elements ``ops[sl]`` (without ``twice_f0``)."""

    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[sl]

    return _Part(ops.other[sl], cut(ops.reference), cut(ops.plus), cut(ops.minus), None)


def _split(
    t: torch.Tensor, blocks: list[tuple[int, int, int, int]], rows: int, by_rows: bool = True
) -> list[torch.Tensor]:
    """``t[p0:p1, r0:r1]`` of every block (``t[p0:p1]`` unless ``by_rows``), in order,
    for blocks of ``rows`` rows a point (see :func:`_blocks`): views made by a few
    splits rather than by slicing block by block (a tenth of a block's time)."""
    p0, p1, r0, r1 = blocks[0]
    if len(blocks) == 1:
        return [t]
    if r1 - r0 == rows:  # whole points
        return list(t.split(p1 - p0))
    points = t.split(1)
    if not by_rows:
        return [points[p] for p, _, _, _ in blocks]
    return [part for point in points for part in point.split(r1 - r0, dim=1)]


def _parts(ops: Operands, blocks: list[tuple[int, int, int, int]]) -> list[_Part]:
    """Every block's operands, in order."""
    rows = ops.other.shape[1]

    def split(t: torch.Tensor | None, by_rows: bool = True) -> list[torch.Tensor | None]:
        return [None] * len(blocks) if t is None else list(_split(t, blocks, rows, by_rows))

    return [
        _Part(other, ref, plus, minus, twice_f0)
        for other, ref, plus, minus, twice_f0 in zip(
            _split(ops.other, blocks, rows),
            split(ops.reference),
            split(ops.plus),
            split(ops.minus),
            split(ops.twice_f0, by_rows=False),
            strict=True,
        )
    ]


class _Scratch:
    """Block-sized buffers, allocated once per comparison and reused by every block:
    few enough that a block's working set stays in a core's L2 cache. Each holds one
    term, then, once that is spent, the next (see :func:`compare`)."""

    def __init__(self, size: int, ref: torch.dtype, err: torch.dtype, device: torch.device):
        def buf(dtype: torch.dtype) -> torch.Tensor:
            return torch.empty(size, dtype=dtype, device=device)

        self._bufs = {"ref": buf(ref), "allowed": buf(ref), "err": buf(err)}
        # the kink screen's sums, then |reference|, take the reference's buffer and the
        # ratios the allowances' (buffers of their own only for a reference narrower
        # than the error): three blocks of working set besides the operands
        same = ref == err
        if not same:
            self._bufs |= {"wide": buf(err), "ratio": buf(err)}
        wide = "ref" if same else "wide"
        self._names = {"ref": "ref", "allowed": "allowed", "err": "err", "sum": wide}
        self._names |= {"aref": wide, "ratio": "allowed" if same else "ratio"}
        self._views: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}

    def views(self, shape: torch.Size) -> dict[str, torch.Tensor]:
        """Every term's buffer viewed as ``shape`` (the views are made once per shape)."""
        key = tuple(shape)
        if key not in self._views:
            n = math.prod(key)
            made = {k: b[:n].view(key) for k, b in self._bufs.items()}
            self._views[key] = {name: made[k] for name, k in self._names.items()}
        return self._views[key]


@dataclass
class _Terms:
    """One block's element-wise terms, in scratch buffers."""

    err: torch.Tensor  # |other - ref|, NaN read as infinite
    err_max: float
    allowed: torch.Tensor  # atol + rtol * |ref|
    aref: torch.Tensor  # |ref|
    spare: torch.Tensor  # a buffer for the ratios (the allowances', which they spend)


def _terms(part: _Part, eps: float, bufs: _Scratch, atol: float, rtol: float) -> _Terms:
    """The terms of a block's elements. Its largest error is read here: a NaN error
    (rare) is then made infinite in place."""
    other = part.other
    v = bufs.views(other.shape)
    if part.reference is None:
        assert part.plus is not None and part.minus is not None
        ref = torch.sub(part.plus, part.minus, out=v["ref"]).div_(2 * eps)
    else:
        ref = part.reference
    err = torch.sub(other, ref, out=v["err"]).abs_()
    # the largest error (NaN propagates): a NaN error counts as infinite
    err_max = float(err.amax())
    if math.isnan(err_max):
        err.nan_to_num_(nan=math.inf, posinf=math.inf)
        err_max = math.inf
    aref = torch.abs(ref, out=v["aref"])  # in the formed reference's buffer: it is spent
    allowed = torch.mul(aref, rtol, out=v["allowed"]).add_(atol)
    return _Terms(err, err_max, allowed, aref, v["ratio"])


def _ratio(t: _Terms, atol: float, out: torch.Tensor) -> torch.Tensor:
    """``error / allowed``, an allowance of 0 counting as infinite unless the error is
    0 too; NaN (``inf / inf``) stays NaN here and counts as infinite where ratios are
    ranked."""
    if atol > TINY:  # allowed >= atol > TINY: the division is the ratio
        return torch.div(t.err, t.allowed, out=out)
    allowed = t.allowed.nan_to_num(nan=math.inf, posinf=math.inf)
    torch.div(t.err, allowed.clamp_min(TINY), out=out)
    return out.copy_(torch.where(allowed > 0, out, torch.where(t.err > 0, math.inf, 0.0)))


def compare(
    ops: Operands, atol: float, rtol: float, block: int = DEFAULT_OPTIONS.compare_block
) -> tuple[Comparison, torch.Tensor]:
    """``|other - reference| <= atol + rtol * |reference|`` (gradcheck's rule) over
    (N, R, C), block by block; returns the comparison and, with ``twice_f0``, the
    (point, row) pairs that pass the kink screen, in order ((K, 2); empty without).

    An element passes by that rule itself; a NaN error counts as infinite. Its
    ratio ``error / allowed`` (see :func:`_ratio`) ranks the elements: the largest,
    the first of equal ones in the report's (point, output, input) order, is the
    worst element. Per block of about ``block`` elements every element-wise step
    runs from cache and is reduced to a few numbers (maxima, the largest ratio per
    row of the report); the worst element is then found in the one row of the
    report that holds it, and each point's verdict is read from its largest ratio
    (see :func:`_verdicts`).

    The kink screen: ``|plus + minus - 2 f0| / allowed >= eps / 4`` somewhere in a
    row is necessary (with a wide margin for round-off, see :func:`.kinks.find_kink`) for
    one-sided differences to disagree when ``rtol <= 1``; a row where that is not a
    number passes the screen too, so that the exact test decides. Division is
    monotone, so ``|s| / allowed <= max |s| / min allowed``: a block, or else a row,
    below the threshold by that bound fails the screen without a division per
    element (the usual case: ``s`` is the second difference, about eps² f''); a bound
    that is not a number sends the block to the exact test.
    """
    a = ops.analytic
    n_pts, rows, cols = a.shape
    dev = a.device
    if a.numel() == 0:
        none = torch.zeros(0, 2, dtype=torch.long, device=dev)
        return Comparison(True, [True] * n_pts, 0.0, 0.0, None, 0.0, 0.0, 0.0, 0.0), none
    if ops.reference is None:
        assert ops.plus is not None and ops.minus is not None
        ref_dtype = torch.promote_types(ops.plus.dtype, ops.minus.dtype)
    else:
        ref_dtype = ops.reference.dtype
    err_dtype = torch.promote_types(ops.other.dtype, ref_dtype)
    blocks = _blocks(n_pts, rows, cols, dev, block)
    biggest = max((p1 - p0) * (r1 - r0) * cols for p0, p1, r0, r1 in blocks)
    # ... and a row of the report, which may be longer, for the worst element's
    bufs = _Scratch(max(biggest, rows, cols), ref_dtype, err_dtype, dev)
    screen = torch.zeros(n_pts, rows, dtype=torch.bool, device=dev)
    # the largest ratio per row of the report: (N, R), or (N, C) for transposed operands
    row_max = torch.full(
        (n_pts, cols if ops.transposed else rows), -math.inf, dtype=err_dtype, device=dev
    )
    max_abs = 0.0
    rel_max: list[torch.Tensor] = []
    threshold = ops.eps / 4
    # the kink screen's bound for a whole block divides by the least allowance any
    # element can have (known beforehand, see _least_allowed)
    least_allowed = _least_allowed(ref_dtype, err_dtype, atol, rtol, ops.eps)
    parts = _parts(ops, blocks)
    # each block's part of row_max: of its points only for transposed operands
    row_parts = _split(row_max, blocks, rows, by_rows=not ops.transposed)
    for (p0, p1, r0, r1), part, rows_of in zip(blocks, parts, row_parts, strict=True):
        settled = True
        if part.twice_f0 is not None:
            # the sums first, while the block of plus and minus is in cache for the
            # reference too; of them only the largest is kept, of each row unless the
            # block's bound settles it
            s = _sums(part, bufs.views(part.other.shape)["sum"])
            settled = least_allowed > 0 and float(s.amax()) / least_allowed < threshold
            if not settled:
                s_rows = s.amax(-1)
        t = _terms(part, ops.eps, bufs, atol, rtol)
        max_abs = max(max_abs, t.err_max)
        if not settled and not bool((s_rows / t.allowed.amin(-1) < threshold).all()):
            # the exact test, the sums formed again (rare: a kink, or no bound)
            s = _sums(part, torch.empty(t.err.shape, dtype=err_dtype, device=dev))
            screen[p0:p1, r0:r1] = torch.logical_not(s.div_(t.allowed).amax(-1) < threshold)
        ratio = _ratio(t, atol, t.spare)
        if ops.transposed:
            torch.maximum(rows_of, ratio.amax(1), out=rows_of)
        else:
            torch.amax(ratio, 2, out=rows_of)
        rel = torch.div(t.err, t.aref.clamp_min_(TINY), out=t.aref)
        rel_max.append(rel.amax())
    point_max: list[float] = row_max.amax(1).tolist()  # before NaN is ranked as infinite
    # the worst element: the first largest ratio (NaN counting as infinite) of the
    # first row of the report that holds it
    row_max.nan_to_num_(nan=math.inf, posinf=math.inf)
    p, r = divmod(int(torch.argmax(row_max.reshape(-1))), row_max.shape[1])
    p0, p1, r0, r1 = blocks[-1]
    if p0 <= p < p1 and (r1 - r0 == rows or (not ops.transposed and r0 <= r < r1)):
        # the row is in the last block, whose ratios are still in scratch
        ratio = ratio[p - p0, :, r] if ops.transposed else ratio[p - p0, r - r0]
    else:
        line = (
            (slice(p, p + 1), slice(None), slice(r, r + 1))
            if ops.transposed
            else (slice(p, p + 1), slice(r, r + 1))
        )
        t = _terms(_part(ops, line), ops.eps, bufs, atol, rtol)
        ratio = _ratio(t, atol, t.spare)
    c = int(torch.argmax(ratio.nan_to_num(nan=math.inf, posinf=math.inf).reshape(-1)))
    exact = atol > max(TINY, torch.finfo(ref_dtype).tiny)
    point_passed = _verdicts(parts, ops.eps, point_max, blocks, bufs, exact, atol, rtol)
    max_rel = _nan_max(torch.stack(rel_max).tolist())
    cmp = _comparison_at(ops, (p, r, c), max_abs, max_rel, point_passed)
    if ops.twice_f0 is None:
        return cmp, torch.zeros(0, 2, dtype=torch.long, device=dev)
    return cmp, torch.nonzero(screen)


def _sums(part: _Part, out: torch.Tensor) -> torch.Tensor:
    """``|plus + minus - 2 f0|`` of a block's elements, in ``out``."""
    assert part.plus is not None and part.minus is not None and part.twice_f0 is not None
    return torch.add(part.plus, part.minus, out=out).sub_(part.twice_f0).abs_()


def _least_allowed(
    ref: torch.dtype, err: torch.dtype, atol: float, rtol: float, eps: float
) -> float:
    """A number no allowance ``atol + rtol * |reference|`` of a block is below, and
    that none of them is NaN unless its sum ``plus + minus - 2 f0`` is not finite;
    0 (a bound that rules nothing out) where that does not hold.

    In float64 with ``rtol > 0`` an allowance rounds to at least ``atol``; it is NaN
    only for a NaN reference, and ``(plus - minus) / (2 eps)`` is NaN (with a finite
    ``2 eps``) only where plus or minus is NaN or both are infinite alike, where
    their sum is not finite either. (With ``rtol = 0`` an infinite reference gives
    ``0 * inf``; a narrower dtype rounds ``atol`` itself.)"""
    f64 = torch.float64
    if ref == err == f64 and rtol > 0 and math.isfinite(2 * eps):
        return atol
    return 0.0


def _verdicts(
    parts: list[_Part],
    eps: float,
    point_max: list[float],
    blocks: list[tuple[int, int, int, int]],
    bufs: _Scratch,
    exact: bool,
    atol: float,
    rtol: float,
) -> list[bool]:
    """Per point, whether ``err <= allowed`` everywhere, read from its largest ratio
    (``point_max``). A ratio above 1 always means an error above its allowance. When
    every allowance is a normal number (``exact``: ``atol`` is a normal number of the
    reference's dtype, and above ``TINY``), a correctly rounded ``err / allowed`` is
    at most 1 exactly when ``err <= allowed`` (an error just above the allowance
    gives at least ``1 + 2u``). A point whose largest ratio is NaN (an infinite or
    NaN reference), or at most 1 without ``exact`` (the ratio then divides by a
    clamped allowance), is decided by the rule itself, in a second pass over it."""
    verdicts = [not q > 1 for q in point_max]
    undecided = {p for p, q in enumerate(point_max) if not (q > 1 or (q <= 1 and exact))}
    for (p0, p1, _, _), part in zip(blocks, parts, strict=True) if undecided else []:
        if not undecided.intersection(range(p0, p1)):
            continue
        t = _terms(part, eps, bufs, atol, rtol)
        ok = torch.le(t.err, t.allowed).view(p1 - p0, -1).all(1).tolist()
        for p in undecided.intersection(range(p0, p1)):
            verdicts[p] = verdicts[p] and ok[p - p0]
    return verdicts


def _nan_max(values: list[float]) -> float:
    """The maximum, NaN if any is (as ``torch.max`` over all of them would be)."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _comparison_at(
    ops: Operands,
    worst: tuple[int, int, int],
    max_abs: float,
    max_rel: float,
    point_passed: list[bool],
) -> Comparison:
    """The :class:`Comparison` with the worst element at ``worst`` (p, r, c) in the
    report's order: its numbers come from 0-d tensors, with the same arithmetic as
    the blocks'."""
    p, r, c = worst
    idx = (p, c, r) if ops.transposed else (p, r, c)
    if ops.reference is None:
        assert ops.plus is not None and ops.minus is not None
        ref_t = (ops.plus[idx] - ops.minus[idx]) / (2 * ops.eps)
    else:
        ref_t = ops.reference[idx]
    err_v = float((ops.other[idx] - ref_t).abs())
    err_v = math.inf if math.isnan(err_v) else err_v
    ref_v = float(ref_t)
    # the other side of autograd: the reference, or the value compared with it
    n_v = float(ops.other[idx]) if ops.reference is ops.analytic else ref_v
    return Comparison(
        passed=all(point_passed),
        point_passed=point_passed,
        max_abs=max_abs,
        max_rel=max_rel,
        worst_flat=worst,
        analytic=float(ops.analytic[idx]),
        numeric=n_v,
        abs_error=err_v,
        rel_error=err_v / max(abs(ref_v), TINY),
    )


def symmetry(
    a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float
) -> tuple[torch.Tensor, float]:
    """Where ``a`` (a Hessian, or its projections) equals its transpose ``b``:
    ``|a - b| <= atol + rtol * max(|a|, |b|)`` element by element, and the largest
    ``|a - b|``."""
    asym = (a - b).abs()
    ok = asym <= atol + rtol * torch.maximum(a.abs(), b.abs())
    return ok, float(asym.max()) if asym.numel() else 0.0


def all_pairs(n_pts: int, n_dirs: int, device: torch.device) -> torch.Tensor:
    """Every (point, row) pair, in order: (n_pts * n_dirs, 2)."""
    return torch.nonzero(torch.ones(n_pts, n_dirs, dtype=torch.bool, device=device))
