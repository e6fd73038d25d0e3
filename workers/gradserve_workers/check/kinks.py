"""Kinks: where one-sided differences disagree and keep disagreeing at a smaller step.

Such a point (``relu`` or ``abs`` at 0) is not differentiable; the check says so
and fails instead of comparing autograd's one-sided choice with a central
difference that averages both sides.
"""

from __future__ import annotations

import torch

from ..report import Kink
from .evaluation import Evaluator
from .points import UNIT_ROUNDOFF, Setup
from .report import row_label

__all__ = ["axis_rows", "find_kink", "kink_record"]


def _one_sided(
    plus: torch.Tensor,
    minus: torch.Tensor,
    base: torch.Tensor,
    h: float,
    atol: float,
    rtol: float,
    proj: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(right, left, gap, tol) of the one-sided differences at step ``h``: ``gap =
    |right - left|`` is a kink candidate where it exceeds ``tol = atol + rtol·max(|right|,
    |left|)`` plus a round-off allowance of ``80 u S / h`` (``S`` the largest value
    involved). ``proj`` (broadcast against the outputs) projects them (fast mode)."""

    def project(t: torch.Tensor) -> torch.Tensor:
        return t if proj is None else (t * proj).sum(-1)

    right = project((plus - base) / h)
    left = project((base - minus) / h)
    scale = torch.maximum(torch.maximum(plus.abs(), minus.abs()), base.abs())
    noise = (
        8 * UNIT_ROUNDOFF * scale / h
        if proj is None
        else (8 * UNIT_ROUNDOFF * (scale * proj.abs()).sum(-1) / h)
    )
    gap = (right - left).abs()
    tol = atol + rtol * torch.maximum(right.abs(), left.abs()) + 10 * noise
    return right, left, gap, tol


def axis_rows(ds: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The coordinate directions ``e_d`` for ``d`` in ``ds``: (len(ds), n) like ``like``."""
    rows = torch.zeros(ds.shape[0], like.shape[1], dtype=like.dtype, device=like.device)
    rows[torch.arange(ds.shape[0], device=like.device), ds] = 1
    return rows


def find_kink(
    ev: Evaluator,
    x: torch.Tensor,
    f0: torch.Tensor,
    plus: torch.Tensor,
    minus: torch.Tensor,
    pairs: torch.Tensor,
    analytic_dir: torch.Tensor,
    eps: float,
    atol: float,
    rtol: float,
    *,
    dirs: torch.Tensor | None = None,
    proj: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, tuple[int, int, int], float, float, float] | None:
    """Find where one-sided differences disagree and do not shrink with the step.

    ``plus``/``minus``: (N, D, m) values at ``x ± eps d``; ``f0``: (N, m). For smooth
    functions ``right - left = eps·f''`` shrinks with the step; at a kink it does not.
    Only the (point, direction) ``pairs`` ((K, 2), in order) are tested: every pair,
    or those that passed :func:`.comparison.compare`'s screen. The screen is necessary for a
    candidate: with ``S = max(|plus|, |minus|, |f0|)`` the computed ``gap`` is within
    about ``8 u S / eps`` of ``|plus + minus - 2 f0| / eps`` and ``max(|right|,
    |left|)`` within ``6 u S / eps`` of ``|numeric|`` (``u`` the unit round-off),
    while ``tol`` holds the round-off allowance ``80 u S / eps``; so ``gap > tol``
    implies ``|plus + minus - 2 f0| > eps * allowed`` (``rtol <= 1``), four times the
    screen's threshold. Every quantity is element-wise, so testing fewer pairs
    finds the same kink.

    Candidates (gap beyond ``atol + rtol·max(|right|, |left|)`` plus the round-off
    allowance) are re-evaluated at ``eps / 4`` and kept when the gap stays above
    half. ``proj`` (D, m) projects outputs (fast mode), along ``dirs`` (D, n); without
    ``dirs`` direction ``d`` is the axis ``e_(offset+d)``. ``analytic_dir``: (N, D, m)
    or (N, D). Returns (kink mask over (N, D), the chosen (point, dir, out), and
    right, left, autograd at it), or ``None``.
    """
    if pairs.shape[0] == 0:
        return None
    pts_all, ds_all = pairs[:, 0], pairs[:, 1]
    right, left, gap, tol = _one_sided(
        plus[pts_all, ds_all],
        minus[pts_all, ds_all],
        f0[pts_all],
        eps,
        atol,
        rtol,
        None if proj is None else proj[ds_all],
    )
    cand = gap > tol  # (K, m), or (K,) projected
    keep = cand.any(-1) if cand.ndim == 2 else cand
    if not bool(keep.any()):
        return None
    pair_gap = torch.where(cand, gap, 0.0).amax(-1) if cand.ndim == 2 else gap
    sel = torch.nonzero(keep)[:, 0]
    retests = ev.options.kink_retests
    if sel.shape[0] > retests:
        order = torch.argsort(pair_gap[sel], descending=True, stable=True)
        sel = sel[order[:retests]]
    pts, ds = pts_all[sel], ds_all[sel]
    dvec = axis_rows(ds + offset, x) if dirs is None else dirs[ds]
    h2 = eps * ev.options.kink_step_ratio
    p2, m2 = ev.pairs(x, pts, dvec, [h2, -h2])
    _, _, gap2, tol2 = _one_sided(
        p2, m2, f0[pts], h2, atol, rtol, None if proj is None else proj[ds]
    )
    g1 = gap[sel]
    confirmed = (gap2 > tol2) & (gap2 > 0.5 * g1) & cand[sel]
    if not bool(confirmed.any()):
        return None
    # the largest jump between the one-sided derivatives (at eps) names the kink: the
    # rule merge_reports and merge_shards apply across chunks and shards
    score = torch.where(confirmed, g1, -1.0)
    flat = int(torch.argmax(score.reshape(-1)))
    k, o = divmod(flat, score.shape[1]) if score.ndim == 2 else (flat, 0)
    p, d = int(pts[k]), int(ds[k])
    at = (int(sel[k]), o) if right.ndim == 2 else (int(sel[k]),)
    a_val = float(analytic_dir[p, d, o] if analytic_dir.ndim == 3 else analytic_dir[p, d])
    mask = torch.zeros(plus.shape[:2], dtype=torch.bool, device=plus.device)
    hit = confirmed.any(-1) if confirmed.ndim == 2 else confirmed
    mask[pts[hit], ds[hit]] = True
    axis = d + offset if dirs is None else d
    return mask, (p, axis, o), float(right[at]), float(left[at]), a_val


def kink_record(
    found: tuple[torch.Tensor, tuple[int, int, int], float, float, float],
    s: Setup,
    order: int,
    fast: bool,
) -> tuple[Kink, list[bool]]:
    """The report's :class:`Kink` for what :func:`find_kink` found, and per point
    whether it is free of kinks."""
    mask, (p, d, o), right, left, auto = found
    lay = s.layout
    bad_points = mask.reshape(mask.shape[0], -1).any(dim=1).tolist()
    if fast:
        kink = Kink(p, ",".join(lay.wrt), (), (), None, right, left, auto, direction=d)
    else:
        name, idx = lay.locate(d)
        row_name, row_idx = row_label(lay, s.out_shape, order, o)
        label = f"{row_name},{name}" if row_name is not None else name
        at = float(s.x[p, d])
        kink = Kink(p, label if order == 2 else name, row_idx, idx, at, right, left, auto)
    return kink, [not b for b in bad_points]
