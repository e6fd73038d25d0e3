"""Evaluating the flat function at many perturbed points at once.

:class:`Evaluator` is the one way the check evaluates ``G(xflat, *consts)`` away from
the points themselves (finite differences, kink re-tests): vmapped batches when the
function allows it, a per-point loop when its control flow depends on values
(:func:`gradserve_workers._vmap.vmap_or_loop` decides, and the evaluator remembers),
and one-hot batches along the coordinate axes where they share work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import _perturb
from .._vmap import vmap_or_loop
from ..transforms import Fn
from .options import DEFAULT_OPTIONS, CheckOptions
from .points import F64, Layout, Setup

__all__ = ["Evaluator", "flat_fn", "width"]


class Evaluator:
    """Evaluates a flat function ``G(xflat, *consts) -> (m,)`` at many points at once.

    Perturbations are mapped with ``vmap`` (points outside, perturbations inside) in
    chunks bounded by ``options.eval_budget``; a function with data-dependent control
    flow runs point by point instead, for this call and the following ones. With
    ``one_hot``, perturbations along the coordinate axes are first tried as one-hot
    batches (:mod:`.._perturb`), which share the work of the unperturbed elements;
    what that refuses goes dense.
    """

    def __init__(
        self,
        g: Callable[..., torch.Tensor],
        consts: Sequence[torch.Tensor],
        allow_vmap: bool,
        one_hot: bool = False,
        width: int = 0,
        options: CheckOptions = DEFAULT_OPTIONS,
    ):
        self.g = g
        self.consts = list(consts)
        self.vmapped = allow_vmap
        self.one_hot = one_hot
        # elements one evaluation holds at once (its largest intermediate): batches are
        # sized by it as well as by the input's length
        self.width = width
        self.options = options

    def _along_axes_one_hot(
        self, x: torch.Tensor, steps: Sequence[float], start: int, stop: int
    ) -> list[torch.Tensor]:
        """:meth:`along` for the coordinate axes ``start..stop``, one point at a time,
        one-hot, in chunks of coordinates whose dense rows stay within the budget (as
        the dense batch's do) should the function materialise them."""
        n_pts, n = x.shape
        chunk = max(1, self.options.eval_budget // max(len(steps) * max(n, self.width), 1))
        out = _Filler(len(steps), n_pts, stop - start)
        for p in range(n_pts):
            consts = [c[p] for c in self.consts]
            for d0 in range(start, stop, chunk):
                d1 = min(stop, d0 + chunk)
                rows = _perturb.evaluate(self.g, x[p], consts, steps, d0, d1)  # (S*k, m)
                out.put(rows.reshape(len(steps), 1, d1 - d0, -1), p, p + 1, d0 - start, d1 - start)
        return out.result()

    def _per_point(self, xp: torch.Tensor, *consts: torch.Tensor) -> torch.Tensor:
        """``G`` at the (D, n) perturbed points of one point."""
        in_dims = [0] + [None] * len(consts)
        out, vmapped = vmap_or_loop(self.g, [xp, *consts], in_dims, allow_vmap=self.vmapped)
        self.vmapped = self.vmapped and vmapped
        return out  # type: ignore[no-any-return]

    def _run(self, xs: torch.Tensor, consts: list[torch.Tensor]) -> torch.Tensor:
        """``xs``: (P, D, n) perturbed points of P points; ``consts``: (P, ...) each."""
        if xs.shape[0] == 1:  # one point: no outer map
            return self._per_point(xs[0], *[c[0] for c in consts]).unsqueeze(0)
        in_dims = [0] * (1 + len(consts))
        out, vmapped = vmap_or_loop(
            self._per_point, [xs, *consts], in_dims, allow_vmap=self.vmapped
        )
        self.vmapped = self.vmapped and vmapped
        return out  # type: ignore[no-any-return]

    def along(
        self,
        x: torch.Tensor,
        dirs: torch.Tensor | None,
        steps: Sequence[float],
        start: int = 0,
        stop: int | None = None,
    ) -> list[torch.Tensor]:
        """``G(x_p + s * d)`` for every point p, direction d and step s.

        ``x``: (N, n); ``dirs``: (D, n), or ``None`` for the coordinate axes ``e_start``
        to ``e_(stop-1)`` (all n by default). Returns one (N, D, m) tensor per step; all
        steps are evaluated in one batch.
        """
        n_pts, n = x.shape
        stop = n if stop is None else stop
        opts = self.options
        least = opts.one_hot_min_inputs if n_pts == 1 else opts.one_hot_min_inputs_batched
        if dirs is None and self.one_hot and n >= least:
            try:
                return self._along_axes_one_hot(x, steps, start, stop)
            except _perturb.Unsupported:  # an operation it has no rule for: dense
                self.one_hot = False
        n_dirs = stop - start if dirs is None else dirs.shape[0]
        per_dir = len(steps) * max(n, self.width)
        d_chunk = max(1, min(n_dirs, opts.eval_budget // max(per_dir, 1)))
        p_chunk = max(1, min(n_pts, opts.eval_budget // max(per_dir * d_chunk, 1)))
        out = _Filler(len(steps), n_pts, n_dirs)
        for p0 in range(0, n_pts, p_chunk):
            p1 = min(p0 + p_chunk, n_pts)
            consts = [c[p0:p1] for c in self.consts]
            for d0 in range(0, n_dirs, d_chunk):
                d1 = min(d0 + d_chunk, n_dirs)
                nd = d1 - d0
                if dirs is None:
                    # x + s * e_d for each step s and coordinate d, without building eye(n):
                    # one copy of the points, then a diagonal add per step
                    xs = x[p0:p1, None, :].expand(p1 - p0, len(steps) * nd, n).clone()
                    for i, step in enumerate(steps):
                        block = xs[:, i * nd : (i + 1) * nd, :]
                        block.diagonal(offset=start + d0, dim1=1, dim2=2).add_(step)
                else:
                    block = dirs[d0:d1]
                    pert = torch.cat([s * block for s in steps])  # (S*Dc, n)
                    xs = x[p0:p1, None, :] + pert[None]
                res = self._run(xs, consts)  # (Pc, S*Dc, m)
                by_step = res.reshape(p1 - p0, len(steps), nd, -1).transpose(0, 1)
                out.put(by_step, p0, p1, d0, d1)
        return out.result()

    def pairs(
        self, x: torch.Tensor, point: torch.Tensor, dirs: torch.Tensor, steps: Sequence[float]
    ) -> list[torch.Tensor]:
        """``G(x[point[k]] + s * dirs[k])`` for K (point, direction) pairs; (K, m) per step."""
        per_pair = len(steps) * max(x.shape[1], self.width)
        chunk = max(1, self.options.eval_budget // max(per_pair, 1))
        n_pairs = point.shape[0]
        out = _Filler(len(steps), 1, n_pairs)
        for k0 in range(0, n_pairs, chunk):
            k1 = min(n_pairs, k0 + chunk)
            pts = point[k0:k1]
            consts = [c[pts] for c in self.consts]
            xs = torch.stack([x[pts] + s * dirs[k0:k1] for s in steps], dim=1)
            res = self._run(xs, consts)  # (Kc, S, m)
            out.put(res.transpose(0, 1).unsqueeze(1), 0, 1, k0, k1)
        return [r[0] for r in out.result()]


class _Filler:
    """Chunks of (steps, points, directions, m) results gathered into one tensor.

    The first chunk, when it is the whole, is returned as it is; otherwise the result
    is allocated once and each chunk copied in and dropped. Keeping the chunks until
    the end instead leaves their small allocations between the big freed
    intermediates of the following chunks, and glibc's heap then grows by about one
    intermediate per chunk (3.5 GB for 120 chunks of 29 MB).
    """

    def __init__(self, steps: int, points: int, dirs: int) -> None:
        self.shape = (steps, points, dirs)
        self.out: torch.Tensor | None = None

    def put(self, piece: torch.Tensor, p0: int, p1: int, d0: int, d1: int) -> None:
        """``piece``: (steps, p1 - p0, d1 - d0, m)."""
        if self.out is None:
            if (p1 - p0, d1 - d0) == self.shape[1:]:
                self.out = piece
                return
            self.out = piece.new_empty((*self.shape, piece.shape[-1]))
        self.out[:, p0:p1, d0:d1] = piece

    def result(self) -> list[torch.Tensor]:
        """One (points, directions, m) tensor per step."""
        assert self.out is not None
        return list(self.out.unbind(0))


def width(s: Setup, order: int) -> int:
    """Elements one evaluation of the flat function holds at once: the function's
    largest intermediate, a few times over for a gradient (order 2)."""
    return s.peak if order == 1 else 3 * s.peak


def flat_fn(fn: Fn, layout: Layout, order: int) -> Callable[..., torch.Tensor]:
    """``G(xflat, *consts)``: the flat output (order 1) or flat gradient (order 2)."""

    def value(xflat: torch.Tensor, *consts: torch.Tensor) -> torch.Tensor:
        args: list[Any] = [None] * len(layout.names)
        for i, t in zip(layout.wrt_idx, layout.unflatten(xflat), strict=True):
            args[i] = t
        for i, c in zip(layout.const_idx, consts, strict=True):
            args[i] = c
        out = fn(*args)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out, dtype=F64)
        return out.reshape(-1)

    if order == 1:
        return value

    def gradient(xflat: torch.Tensor, *consts: torch.Tensor) -> torch.Tensor:
        return torch.func.grad(lambda xf: value(xf, *consts).reshape(()))(xflat)

    return gradient
