"""Private implementation of :mod:`gradserve_workers.check`.

Layout used throughout: the ``wrt`` inputs of one point are flattened and
concatenated into a vector of ``n`` float64 numbers; the function's output (order 1)
or its gradient (order 2) is flattened into ``m`` numbers; the analytic derivative is
an ``(N, m, n)`` array over ``N`` points. Unbatched checks are run as one point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from . import _native, _perturb, _routes_taken
from ._ops_impl import OpsError, OpsRequest, check_finite, compute_impl
from ._vmap import is_data_dependent_error, vmap_or_loop
from .report import CheckReport, Kink, WorstElement, describe, largest
from .tasks import valid_tolerance
from .transforms import Fn, measure

F64 = torch.float64
TINY = 1e-300
# float64 elements per vmapped evaluation (perturbed points x input elements)
EVAL_BUDGET = 1 << 22
# largest n * m (per point) for which a failed fast check re-runs element-wise
FULL_FALLBACK_LIMIT = 1 << 22
# at most this many failing points are re-checked element-wise after a fast failure
FULL_FALLBACK_POINTS = 16
# coordinate perturbations of at least this many input elements are evaluated
# one-hot (see _perturb): below it the dense vmapped batch is as fast (measured:
# ~0.6 ms of Python per evaluation against O(n²) element work)
ONE_HOT_MIN_INPUTS = 256
# ... and with several points, which one-hot takes one at a time in Python while the
# dense batch maps them all at once (200 points of 256: 1.24 s one-hot, 0.24 s dense)
ONE_HOT_MIN_INPUTS_BATCHED = 1024
KINK_STEP_RATIO = 0.25
UNIT_ROUNDOFF = 2.0**-52


class CheckError(OpsError):
    """A check that cannot be run as asked; the message starts with the call form."""


# ---------------------------------------------------------------------------
# layout


@dataclass(frozen=True)
class _Layout:
    names: tuple[str, ...]
    wrt: tuple[str, ...]
    wrt_idx: tuple[int, ...]
    const_idx: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]  # per wrt input, per point
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def locate(self, flat: int) -> tuple[str, tuple[int, ...]]:
        """Input name and index within it of flat column ``flat``."""
        for w, shape, size, off in zip(
            self.wrt, self.shapes, self.sizes, self.offsets, strict=True
        ):
            if off <= flat < off + size:
                return w, _unravel(flat - off, shape)
        raise IndexError(flat)

    def unflatten(self, xflat: torch.Tensor) -> list[torch.Tensor]:
        return [
            xflat[off : off + size].reshape(shape)
            for shape, size, off in zip(self.shapes, self.sizes, self.offsets, strict=True)
        ]


def _unravel(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    idx = []
    for s in reversed(shape):
        idx.append(flat % s)
        flat //= s
    return tuple(reversed(idx))


def _layout(
    names: Sequence[str], wrt: Sequence[str], point0: Mapping[str, torch.Tensor]
) -> _Layout:
    shapes = tuple(tuple(int(s) for s in point0[w].shape) for w in wrt)
    sizes = tuple(math.prod(s) for s in shapes)
    offsets = tuple(sum(sizes[:i]) for i in range(len(sizes)))
    wrt_idx = tuple(names.index(w) for w in wrt)
    const_idx = tuple(i for i in range(len(names)) if i not in wrt_idx)
    return _Layout(tuple(names), tuple(wrt), wrt_idx, const_idx, shapes, sizes, offsets)


def _to64(inputs: Mapping[str, torch.Tensor], batched: bool) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in inputs.items():
        t = v.to(F64) if v.is_floating_point() else v
        out[k] = t if batched else t.unsqueeze(0)
    return out


def _input_dtype(inputs: Mapping[str, torch.Tensor], wrt: Sequence[str]) -> str:
    dtypes = {str(inputs[w].dtype).removeprefix("torch.") for w in wrt}
    return (
        "float32"
        if "float32" in dtypes or "float16" in dtypes or "bfloat16" in dtypes
        else "float64"
    )


def _resolve_wrt(
    call: str, names: Sequence[str], inputs: Mapping[str, torch.Tensor], wrt: Sequence[str] | None
) -> tuple[str, ...]:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise CheckError(f"{call}: missing input(s) {', '.join(missing)}")
    extra = [n for n in inputs if n not in names]
    if extra:
        raise CheckError(f"{call}: unknown input(s) {', '.join(extra)}; f takes {', '.join(names)}")
    for n in names:
        if not isinstance(inputs[n], torch.Tensor):
            raise CheckError(f"{call}: input '{n}' is a {type(inputs[n]).__name__}, not a tensor")
    chosen = tuple(names) if wrt is None else tuple(wrt)
    unknown = [w for w in chosen if w not in names]
    if unknown:
        raise CheckError(f"{call}: wrt names unknown input(s) {', '.join(unknown)}")
    if not chosen:
        raise CheckError(f"{call}: no inputs to check derivatives with respect to")
    for w in chosen:
        if not inputs[w].is_floating_point():
            raise CheckError(f"{call}: input '{w}' has dtype {inputs[w].dtype}; checks need floats")
    return chosen


def _recall(exc: OpsError, call: str) -> CheckError:
    """The ops error's message with our call form in front."""
    msg = str(exc)
    head, sep, rest = msg.partition("(f): ")
    body = rest if sep and "(" not in head else msg
    return CheckError(f"{call}: {body}")


def _compute(
    fn: Fn, names: Sequence[str], inputs: Mapping[str, torch.Tensor], req: OpsRequest, call: str
) -> Any:
    """``compute`` over a batch; a batch of one point runs unbatched (no outer vmap)."""
    one = req.batched and all(t.shape[0] == 1 for t in inputs.values())
    if one:
        squeeze = {k: v[0] for k, v in inputs.items()}
        req = replace(
            req,
            batched=False,
            cotangent=None if req.cotangent is None else req.cotangent[0],
            tangents=None if req.tangents is None else {k: v[0] for k, v in req.tangents.items()},
            vector=None if req.vector is None else {k: v[0] for k, v in req.vector.items()},
        )
        inputs = squeeze
    try:
        r = compute_impl(fn, names, inputs, req, detect_unconnected=False)
    except OpsError as exc:
        raise _recall(exc, call) from exc
    _routes_taken.note(r.routes)
    if one:
        r.outputs = {
            op: {k: t.unsqueeze(0) for k, t in by_key.items()} for op, by_key in r.outputs.items()
        }
    return r


# ---------------------------------------------------------------------------
# evaluating many perturbed points


class _Evaluator:
    """Evaluates a flat function ``G(xflat, *consts) -> (m,)`` at many points at once.

    Uses nested ``vmap`` (points outside, perturbations inside) in chunks bounded by
    :data:`EVAL_BUDGET`, and falls back to a Python loop on data-dependent control flow
    (remembered for the following calls). With ``one_hot``, perturbations along the
    coordinate axes are first tried as one-hot batches (:mod:`._perturb`), which share
    the work of the unperturbed elements; whatever that cannot run goes dense.
    """

    def __init__(
        self,
        g: Callable[..., torch.Tensor],
        consts: Sequence[torch.Tensor],
        allow_vmap: bool,
        one_hot: bool = False,
        width: int = 0,
    ):
        self.g = g
        self.consts = list(consts)
        self.vmapped = allow_vmap
        self.one_hot = one_hot
        # elements one evaluation holds at once (its largest intermediate): batches are
        # sized by it as well as by the input's length
        self.width = width

    def _along_axes_one_hot(
        self, x: torch.Tensor, steps: Sequence[float], start: int, stop: int
    ) -> list[torch.Tensor]:
        """:meth:`along` for the coordinate axes ``start..stop``, one point at a time,
        one-hot, in chunks of coordinates whose dense rows stay within
        :data:`EVAL_BUDGET` (as the dense batch's do) should the function materialise
        them."""
        n_pts, n = x.shape
        chunk = max(1, EVAL_BUDGET // max(len(steps) * max(n, self.width), 1))
        out = _Filler(len(steps), n_pts, stop - start)
        for p in range(n_pts):
            consts = [c[p] for c in self.consts]
            for d0 in range(start, stop, chunk):
                d1 = min(stop, d0 + chunk)
                rows = _perturb.evaluate(self.g, x[p], consts, steps, d0, d1)  # (S*k, m)
                out.put(rows.reshape(len(steps), 1, d1 - d0, -1), p, p + 1, d0 - start, d1 - start)
        return out.result()

    def _run(self, xs: torch.Tensor, consts: list[torch.Tensor]) -> torch.Tensor:
        """``xs``: (P, D, n) perturbed points of P points; ``consts``: (P, ...) each."""
        if self.vmapped:
            k = len(consts)
            inner = torch.func.vmap(self.g, in_dims=(0, *([None] * k)))
            if xs.shape[0] == 1:  # one point: no outer vmap
                try:
                    return inner(xs[0], *[c[0] for c in consts]).unsqueeze(0)
                except Exception as exc:
                    if not is_data_dependent_error(exc):
                        raise
                    self.vmapped = False
                    return self._run(xs, consts)
            outer = torch.func.vmap(inner, in_dims=(0, *([0] * k)))
            try:
                return outer(xs, *consts)
            except Exception as exc:
                if not is_data_dependent_error(exc):
                    raise
                self.vmapped = False
        rows = []
        for p in range(xs.shape[0]):
            cp = [c[p] for c in consts]
            rows.append(torch.stack([self.g(xs[p, d], *cp) for d in range(xs.shape[1])]))
        return torch.stack(rows)

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
        least = ONE_HOT_MIN_INPUTS if n_pts == 1 else ONE_HOT_MIN_INPUTS_BATCHED
        if dirs is None and self.one_hot and n >= least:
            try:
                return self._along_axes_one_hot(x, steps, start, stop)
            except Exception:
                self.one_hot = False
        n_dirs = stop - start if dirs is None else dirs.shape[0]
        per_dir = len(steps) * max(n, self.width)
        d_chunk = max(1, min(n_dirs, EVAL_BUDGET // max(per_dir, 1)))
        p_chunk = max(1, min(n_pts, EVAL_BUDGET // max(per_dir * d_chunk, 1)))
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
        chunk = max(1, EVAL_BUDGET // max(per_pair, 1))
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
    intermediate per chunk (measured: 3.5 GB for 120 chunks of 29 MB).
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


def _width(s: _Setup, order: int) -> int:
    """Elements one evaluation of the flat function holds at once: the function's
    largest intermediate, a few times over for a gradient (order 2)."""
    return s.peak if order == 1 else 3 * s.peak


def _flat_fn(fn: Fn, layout: _Layout, order: int) -> Callable[..., torch.Tensor]:
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


# ---------------------------------------------------------------------------
# comparing


@dataclass
class _Comparison:
    passed: bool
    point_passed: list[bool]
    max_abs: float
    max_rel: float
    worst_flat: tuple[int, int, int] | None  # (point, row, col)
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float


def _compare(
    analytic: torch.Tensor, reference: torch.Tensor, other: torch.Tensor, atol: float, rtol: float
) -> _Comparison:
    """Element-wise ``|other - reference| <= atol + rtol * |reference|`` over (N, r, c).

    ``analytic`` is what the report calls analytic (autograd); ``reference`` is the
    value the tolerance scales with; ``other`` the value compared with it. Runs the
    fused, blocked comparison when it applies (see :func:`_fused_compare`).
    """
    if analytic is reference or analytic is other:
        fused = _fused_compare(
            _Operands(analytic, reference, other, None, None, None, 0.0, False), atol, rtol
        )
        if fused is not None:
            return fused[0]
    return _compare_generic(analytic, reference, other, atol, rtol)


def _compare_generic(
    analytic: torch.Tensor, reference: torch.Tensor, other: torch.Tensor, atol: float, rtol: float
) -> _Comparison:
    """:func:`_compare` element by element over whole tensors, for every input
    (non-finite values, ``atol`` of zero, mixed dtypes)."""
    err = (other - reference).abs()
    err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)
    allowed = atol + rtol * reference.abs()
    ok = err <= allowed
    allowed = torch.where(torch.isfinite(allowed), allowed, torch.full_like(allowed, math.inf))
    ratio = torch.where(
        allowed > 0, err / allowed.clamp_min(TINY), torch.where(err > 0, math.inf, 0.0)
    )
    ratio = torch.where(torch.isnan(ratio), torch.full_like(ratio, math.inf), ratio)
    n_pts = err.shape[0]
    point_passed = (
        [bool(b) for b in ok.reshape(n_pts, -1).all(dim=1)] if err.numel() else [True] * n_pts
    )
    if err.numel() == 0:
        return _Comparison(True, point_passed, 0.0, 0.0, None, 0.0, 0.0, 0.0, 0.0)
    rel = err / reference.abs().clamp_min(TINY)
    flat = int(torch.argmax(ratio.reshape(-1)))
    p, r, c = _unravel(flat, err.shape)
    ref_v = float(reference[p, r, c])
    # the worst element's numbers: analytic is autograd, numeric the other side
    a_v = float(analytic[p, r, c])
    n_v = float(other[p, r, c]) if analytic is reference else float(reference[p, r, c])
    return _Comparison(
        passed=bool(ok.all()),
        point_passed=point_passed,
        max_abs=float(err.max()),
        max_rel=float(rel.max()),
        worst_flat=(p, r, c),
        analytic=a_v,
        numeric=n_v,
        abs_error=float(err[p, r, c]),
        rel_error=float(err[p, r, c]) / max(abs(ref_v), TINY),
    )


# elements per block of the fused comparison: a handful of float64 blocks stay in a
# core's L2 cache, so the dozen element-wise steps per element run from cache
BLOCK = 1 << 15


@dataclass
class _Operands:
    """What :func:`_fused_compare` compares, laid out as (N, R, C).

    Claimed derivatives: ``reference`` and ``other`` are tensors (``analytic`` is
    one of them). Finite differences: ``reference`` is ``None`` and the numeric
    derivative ``(plus - minus) / (2 eps)`` is formed block by block; ``other`` is
    ``analytic``; ``twice_f0`` (N, 1, C) turns on the kink screen. ``transposed``:
    rows are input elements and columns outputs, i.e. the report's (point, row,
    col) is (point, col, row) here.
    """

    analytic: torch.Tensor
    reference: torch.Tensor | None
    other: torch.Tensor
    plus: torch.Tensor | None
    minus: torch.Tensor | None
    twice_f0: torch.Tensor | None
    eps: float
    transposed: bool


def _blocks(n_pts: int, rows: int, cols: int, device: torch.device) -> list[tuple[int, ...]]:
    """(p0, p1, r0, r1) slices of about :data:`BLOCK` elements, in row-major order."""
    per_point = rows * cols
    if device.type != "cpu" or n_pts * per_point <= BLOCK:
        return [(0, n_pts, 0, rows)]
    if per_point <= BLOCK:
        step = BLOCK // max(per_point, 1)
        return [(p0, min(p0 + step, n_pts), 0, rows) for p0 in range(0, n_pts, step)]
    step = max(1, BLOCK // max(cols, 1))
    return [
        (p, p + 1, r0, min(r0 + step, rows)) for p in range(n_pts) for r0 in range(0, rows, step)
    ]


def _block_terms(
    ops: _Operands, blk: tuple[int, ...], bufs: list[torch.Tensor], atol: float, rtol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ref, err, allowed, rel-scratch) of one block, in ``bufs`` (the first three are
    overwritten): ``err = |other - ref|``, ``allowed = atol + rtol * |ref|`` and
    ``|ref|``, with exactly the element-wise operations of :func:`_compare_generic`."""
    p0, p1, r0, r1 = blk
    a = ops.analytic[p0:p1, r0:r1]
    shape = a.shape
    size = a.numel()
    ref, err, aref, allowed = (b[:size].view(shape) for b in bufs[:4])
    if ops.reference is None:
        assert ops.plus is not None and ops.minus is not None
        torch.sub(ops.plus[p0:p1, r0:r1], ops.minus[p0:p1, r0:r1], out=ref)
        ref.div_(2 * ops.eps)
    else:
        ref = ops.reference[p0:p1, r0:r1]
    torch.sub(ops.other[p0:p1, r0:r1], ref, out=err)
    err.abs_()
    torch.abs(ref, out=aref)
    torch.mul(aref, rtol, out=allowed)
    allowed.add_(atol)
    return ref, err, allowed, aref


def _kink_screen(
    ops: _Operands, blk: tuple[int, ...], allowed: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``(plus + minus - 2 f0) / allowed`` over one block, in ``out``: where its
    magnitude reaches ``eps / 4`` one-sided differences may disagree (a kink)."""
    assert ops.plus is not None and ops.minus is not None and ops.twice_f0 is not None
    p0, p1, r0, r1 = blk
    torch.add(ops.plus[p0:p1, r0:r1], ops.minus[p0:p1, r0:r1], out=out)
    out.sub_(ops.twice_f0[p0:p1])
    return out.div_(allowed)


def _fused_compare(
    ops: _Operands, atol: float, rtol: float
) -> tuple[_Comparison, list[torch.Tensor]] | None:
    """:func:`_compare_generic` in one blocked pass, plus the kink screen.

    Per block of about :data:`BLOCK` elements: the error, the tolerance, their ratio
    (computed once; its per-point maximum decides the verdict and its maximum the
    worst element) and the relative error, each reduced to a few numbers; no array of
    the full size is built. With ``twice_f0`` the same pass screens for kinks:
    ``|plus + minus - 2 f0| >= (eps / 4) * allowed`` is necessary (with a wide margin
    for round-off, see :func:`_find_kink_rows`) for one-sided differences to
    disagree, and the (point, row) pairs that pass it come back for the exact test.

    Returns ``None`` (the caller runs :func:`_compare_generic`) when the fast rules do
    not apply: a dtype other than float64, ``atol`` not above :data:`TINY` (so that
    ``allowed > 0``), or a non-finite error (NaN, Inf).
    """
    a = ops.analytic
    tensors = [a, ops.other] + [t for t in (ops.reference, ops.plus, ops.minus) if t is not None]
    if not atol > TINY or any(t.dtype != F64 or t.device != a.device for t in tensors):
        return None
    n_pts, rows, cols = a.shape
    if a.numel() == 0:
        return None
    first = ops.plus if ops.reference is None else ops.reference
    if first is not None and _native.supports(first, ops.minus, ops.other, ops.twice_f0):
        return _native_compare(ops, first, atol, rtol)
    blocks = _blocks(n_pts, rows, cols, a.device)
    biggest = max((p1 - p0) * (r1 - r0) * cols for p0, p1, r0, r1 in blocks)
    bufs = [torch.empty(biggest, dtype=F64, device=a.device) for _ in range(4)]
    point_max = torch.zeros(n_pts, dtype=F64, device=a.device)  # by blocks of whole points
    err_max: list[torch.Tensor] = []
    rel_max: list[torch.Tensor] = []
    ratio_max: list[torch.Tensor] = []
    bounds: list[torch.Tensor] = []  # the kink screen's (min, max) per block
    within: list[tuple[int, int]] = []  # (block, point) of blocks within one point
    threshold = ops.eps / 4
    for b, blk in enumerate(blocks):
        p0, p1 = blk[:2]
        _, err, allowed, aref = _block_terms(ops, blk, bufs, atol, rtol)
        err_max.append(err.max())
        aref.clamp_min_(TINY)
        torch.div(err, aref, out=aref)
        rel_max.append(aref.max())
        torch.div(err, allowed, out=err)  # the ratio, in place of the error
        if p1 - p0 == 1:
            ratio_max.append(err.max())
            within.append((b, p0))
        else:  # whole points (see _blocks)
            per_point = err.view(p1 - p0, -1).amax(1)
            point_max[p0:p1] = per_point
            ratio_max.append(per_point.max())
        if ops.twice_f0 is not None:
            bounds.extend(torch.aminmax(_kink_screen(ops, blk, allowed, aref)))
    # one synchronisation for every block's numbers
    maxima = torch.stack(err_max + ratio_max + bounds).tolist()
    nb = len(blocks)
    if not all(math.isfinite(v) for v in maxima[: 2 * nb]):
        return None
    screened: list[torch.Tensor] = []
    for b, blk in enumerate(blocks if bounds else []):
        lo, hi = maxima[2 * nb + 2 * b : 2 * nb + 2 * b + 2]
        if not (hi < threshold and lo > -threshold):  # NaN included: the exact test
            p0, _, r0, _ = blk
            _, _, allowed, aref = _block_terms(ops, blk, bufs, atol, rtol)
            s = _kink_screen(ops, blk, allowed, aref)
            hit = torch.nonzero((s.abs() >= threshold).any(-1))
            hit[:, 0] += p0
            hit[:, 1] += r0
            screened.append(hit)
    max_abs = max(maxima[:nb])
    worst_ratio = max(maxima[nb : 2 * nb])
    max_rel = float(torch.stack(rel_max).max())
    # the verdict per point: ratio > 1 fails, < 1 passes; exactly 1 is decided by
    # err <= allowed itself
    pm = point_max.tolist()
    for b, p in within:
        pm[p] = max(pm[p], maxima[nb + b])
    point_passed = [v < 1.0 for v in pm]
    for p, v in enumerate(pm):
        if v == 1.0:
            point_passed[p] = _point_ok(ops, p, rows, bufs, atol, rtol)
    p, r, c = _worst_index(ops, blocks, maxima[nb : 2 * nb], worst_ratio, bufs, atol, rtol)
    return _comparison_at(ops, (p, r, c), max_abs, max_rel, point_passed), screened


def _native_compare(
    ops: _Operands, first: torch.Tensor, atol: float, rtol: float
) -> tuple[_Comparison, list[torch.Tensor]] | None:
    """:func:`_fused_compare` by the compiled kernel (:mod:`._native`): one pass over
    memory yields each row's largest error, relative error, ratio (and its first
    column), kink screen value and verdict; the rest is decided from those rows.
    ``first``: the reference, or ``plus`` when the reference is formed from
    ``plus`` and ``minus``."""
    st = _native.compare_rows(
        first, ops.minus, ops.other, ops.twice_f0, 2 * ops.eps, atol, rtol, TINY
    )
    if st is None:
        return None
    n_pts, rows, cols = ops.analytic.shape
    ratio = st.ratio_max.view(n_pts, rows)
    tied = torch.nonzero(ratio == ratio.max())  # (point, row) pairs, in order
    tied_cols = st.ratio_arg.view(n_pts, rows)[tied[:, 0], tied[:, 1]]
    i = 0  # rows are in the report's order: the first tied row decides
    if ops.transposed:  # report order: point, output (our column), input (our row)
        i = int(torch.argmin((tied[:, 0] * cols + tied_cols) * rows + tied[:, 1]))
    worst = (int(tied[i, 0]), int(tied[i, 1]), int(tied_cols[i]))
    point_passed: list[bool] = st.row_ok.view(n_pts, rows).all(1).tolist()
    screened = []
    if ops.twice_f0 is not None:
        hits = torch.nonzero(st.screen_max.view(n_pts, rows) >= ops.eps / 4)
        if hits.numel():
            screened.append(hits)
    max_abs, max_rel = float(st.err_max.max()), float(st.rel_max.max())
    return _comparison_at(ops, worst, max_abs, max_rel, point_passed), screened


def _comparison_at(
    ops: _Operands,
    worst: tuple[int, int, int],
    max_abs: float,
    max_rel: float,
    point_passed: list[bool],
) -> _Comparison:
    """The :class:`_Comparison` with the worst element at ``worst`` (p, r, c) of the
    operands' layout: its numbers come from 0-d tensors, with the same arithmetic."""
    a = ops.analytic
    p, r, c = worst
    a_t = a[p, r, c]
    if ops.reference is None:
        assert ops.plus is not None and ops.minus is not None
        ref_t = (ops.plus[p, r, c] - ops.minus[p, r, c]) / (2 * ops.eps)
    else:
        ref_t = ops.reference[p, r, c]
    other_t = ops.other[p, r, c]
    err_v = float((other_t - ref_t).abs())
    ref_v = float(ref_t)
    n_v = float(other_t) if ops.reference is a else ref_v
    rp, rr, rc = (p, c, r) if ops.transposed else (p, r, c)
    return _Comparison(
        passed=all(point_passed),
        point_passed=point_passed,
        max_abs=max_abs,
        max_rel=max_rel,
        worst_flat=(rp, rr, rc),
        analytic=float(a_t),
        numeric=n_v,
        abs_error=err_v,
        rel_error=err_v / max(abs(ref_v), TINY),
    )


def _point_ok(
    ops: _Operands, p: int, rows: int, bufs: list[torch.Tensor], atol: float, rtol: float
) -> bool:
    """``all(err <= allowed)`` at point ``p``."""
    cols = ops.analytic.shape[2]
    step = max(1, BLOCK // max(cols, 1))
    for r0 in range(0, rows, step):
        _, err, allowed, _ = _block_terms(
            ops, (p, p + 1, r0, min(r0 + step, rows)), bufs, atol, rtol
        )
        if not bool((err <= allowed).all()):
            return False
    return True


def _worst_index(
    ops: _Operands,
    blocks: list[tuple[int, ...]],
    block_max: list[float],
    worst: float,
    bufs: list[torch.Tensor],
    atol: float,
    rtol: float,
) -> tuple[int, int, int]:
    """(p, r, c) of the largest ratio; among equal ones the first in the report's
    (point, output, input) order, as ``argmax`` over the generic layout finds it."""
    best: tuple[int, int, int] | None = None
    best_key = -1
    rows, cols = ops.analytic.shape[1:]
    for blk, v in zip(blocks, block_max, strict=True):
        if v != worst:
            continue
        p0, _, r0, r1 = blk
        _, err, allowed, _ = _block_terms(ops, blk, bufs, atol, rtol)
        err.div_(allowed)
        if not ops.transposed:  # blocks are in the report's order: the first one decides
            flat = int(torch.argmax(err.reshape(-1)))
            pp, rest = divmod(flat, (r1 - r0) * cols)
            rr, cc = divmod(rest, cols)
            return p0 + pp, r0 + rr, cc
        hits = torch.nonzero(err == worst)
        hits[:, 0] += p0
        hits[:, 1] += r0
        # report order: point, then output (our column), then input (our row)
        keys = (hits[:, 0] * cols + hits[:, 2]) * rows + hits[:, 1]
        k = int(torch.argmin(keys))
        key = int(keys[k])
        if best is None or key < best_key:
            best_key = key
            best = (int(hits[k, 0]), int(hits[k, 1]), int(hits[k, 2]))
    assert best is not None
    return best


def _row_label(
    layout: _Layout, out_shape: tuple[int, ...], order: int, row: int
) -> tuple[str | None, tuple[int, ...]]:
    if order == 2:
        name, idx = layout.locate(row)
        return name, idx
    return None, _unravel(row, out_shape)


def _from_input(cmp: _Comparison, c0: int) -> _Comparison:
    """``cmp`` of a shard (input elements from ``c0`` on), its worst element's input
    index made global."""
    if cmp.worst_flat is None or not c0:
        return cmp
    p, r, c = cmp.worst_flat
    return replace(cmp, worst_flat=(p, r, c0 + c))


def _worst_element(
    cmp: _Comparison, layout: _Layout, out_shape: tuple[int, ...], order: int
) -> WorstElement | None:
    if cmp.worst_flat is None:
        return None
    p, r, c = cmp.worst_flat
    col_name, col_idx = layout.locate(c)
    row_name, row_idx = _row_label(layout, out_shape, order, r)
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


# ---------------------------------------------------------------------------
# kinks


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
    involved). ``proj`` (broadcast against the outputs) projects them (fast mode).
    Every kink test runs these same operations, so screened and unscreened searches
    agree."""

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


def _axis_rows(ds: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The coordinate directions ``e_d`` for ``d`` in ``ds``: (len(ds), n) like ``like``."""
    rows = torch.zeros(ds.shape[0], like.shape[1], dtype=like.dtype, device=like.device)
    rows[torch.arange(ds.shape[0], device=like.device), ds] = 1
    return rows


def _find_kink(
    ev: _Evaluator,
    x: torch.Tensor,
    f0: torch.Tensor,
    plus: torch.Tensor,
    minus: torch.Tensor,
    dirs: torch.Tensor | None,
    analytic_dir: torch.Tensor,
    eps: float,
    atol: float,
    rtol: float,
    proj: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, tuple[int, int, int], float, float, float] | None:
    """Find where one-sided differences disagree and do not shrink with the step.

    ``plus``/``minus``: (N, D, m) values at ``x ± eps d``; ``f0``: (N, m). For smooth
    functions ``right - left = eps·f''`` shrinks with the step; at a kink it does not.
    Candidates (gap beyond ``atol + rtol·max(|right|, |left|)`` plus a round-off
    allowance) are re-evaluated at ``eps / 4`` and kept when the gap stays above half.
    ``proj`` (D, m) projects outputs (fast mode). ``analytic_dir``: (N, D, m) or (N, D).
    Returns (kink mask over (N, D[, m])), the chosen (point, dir, out) and right, left,
    autograd at it, or ``None``. With ``dirs=None`` direction ``d`` is the axis
    ``e_(offset+d)``, and the chosen dir is that axis.
    """
    right, left, gap, tol = _one_sided(plus, minus, f0[:, None, :], eps, atol, rtol, proj)
    cand = gap > tol
    if not bool(cand.any()):
        return None
    # the (point, direction) pairs to re-evaluate, the largest gaps first
    pair_gap = gap if gap.ndim == 2 else torch.where(cand, gap, 0.0).amax(-1)
    pair_cand = cand if cand.ndim == 2 else cand.any(-1)
    idx = torch.nonzero(pair_cand)
    if idx.shape[0] > 4096:
        order = torch.argsort(pair_gap[idx[:, 0], idx[:, 1]], descending=True, stable=True)
        idx = idx[order[:4096]]
    pts, ds = idx[:, 0], idx[:, 1]
    dvec = _axis_rows(ds + offset, x) if dirs is None else dirs[ds]
    h2 = eps * KINK_STEP_RATIO
    p2, m2 = ev.pairs(x, pts, dvec, [h2, -h2])
    pr = None if proj is None else proj[ds]
    _, _, gap2, tol2 = _one_sided(p2, m2, f0[pts], h2, atol, rtol, pr)
    g1 = gap[pts, ds]
    confirmed = (gap2 > tol2) & (gap2 > 0.5 * g1) & cand[pts, ds]
    if not bool(confirmed.any()):
        return None
    # the largest jump between the one-sided derivatives (at eps) names the kink: the
    # rule merge_reports and merge_shards apply across chunks and shards
    score = torch.where(confirmed, g1, -1.0)
    flat = int(torch.argmax(score.reshape(-1)))
    if score.ndim == 1:
        k, o = flat, 0
    else:
        k, o = divmod(flat, score.shape[1])
    p, d = int(pts[k]), int(ds[k])
    sel = (p, d, o) if right.ndim == 3 else (p, d)
    a_val = float(analytic_dir[sel])
    mask = torch.zeros_like(gap, dtype=torch.bool)
    kp = pts[confirmed.any(-1)] if confirmed.ndim == 2 else pts[confirmed]
    kd = ds[confirmed.any(-1)] if confirmed.ndim == 2 else ds[confirmed]
    mask[kp, kd] = True
    axis = d + offset if dirs is None else d
    return mask, (p, axis, o), float(right[sel]), float(left[sel]), a_val


def _find_kink_rows(
    ev: _Evaluator,
    x: torch.Tensor,
    f0: torch.Tensor,
    plus: torch.Tensor,
    minus: torch.Tensor,
    analytic_dir: torch.Tensor,
    screened: list[torch.Tensor],
    eps: float,
    atol: float,
    rtol: float,
    offset: int = 0,
) -> tuple[torch.Tensor, tuple[int, int, int], float, float, float] | None:
    """:func:`_find_kink` for coordinate directions (full mode), testing only the
    (point, direction) rows that passed the screen of :func:`_fused_compare`.

    The screen is necessary for a candidate: with ``S = max(|plus|, |minus|, |f0|)``
    the computed ``gap`` is within about ``8 u S / eps`` of ``|plus + minus - 2 f0| /
    eps`` and ``max(|right|, |left|)`` within ``6 u S / eps`` of ``|numeric|``
    (``u`` the unit round-off), while ``tol`` holds the round-off allowance
    ``80 u S / eps``; so ``gap > tol`` implies ``|plus + minus - 2 f0| > eps *
    allowed`` (``rtol <= 1``), four times the screen's threshold. For ``rtol > 1``
    every row is tested. On the screened rows every quantity is computed with the
    same element-wise operations as :func:`_find_kink` (:func:`_one_sided`), so the
    result is the same.
    The returned mask is (N, D): the (point, direction) pairs with a kink.
    """
    if not screened:
        return None
    rows = torch.cat(screened)
    pts_all, ds_all = rows[:, 0], rows[:, 1]
    right, left, gap, tol = _one_sided(
        plus[pts_all, ds_all], minus[pts_all, ds_all], f0[pts_all], eps, atol, rtol
    )
    cand = gap > tol
    keep = cand.any(-1)
    if not bool(keep.any()):
        return None
    pair_gap = torch.where(cand, gap, 0.0).amax(-1)[keep]
    sel_rows = torch.nonzero(keep)[:, 0]
    if sel_rows.shape[0] > 4096:
        order = torch.argsort(pair_gap, descending=True, stable=True)[:4096]
        sel_rows = sel_rows[order]
    pts, ds = pts_all[sel_rows], ds_all[sel_rows]
    h2 = eps * KINK_STEP_RATIO
    p2, m2 = ev.pairs(x, pts, _axis_rows(ds + offset, x), [h2, -h2])
    _, _, gap2, tol2 = _one_sided(p2, m2, f0[pts], h2, atol, rtol)
    g1 = gap[sel_rows]
    confirmed = (gap2 > tol2) & (gap2 > 0.5 * g1) & cand[sel_rows]
    if not bool(confirmed.any()):
        return None
    # the largest jump between the one-sided derivatives (at eps) names the kink: the
    # rule merge_reports and merge_shards apply across chunks and shards
    score = torch.where(confirmed, g1, -1.0)
    flat = int(torch.argmax(score.reshape(-1)))
    k, o = divmod(flat, score.shape[1])
    p, d = int(pts[k]), int(ds[k])
    a_val = float(analytic_dir[p, d, o])
    mask = torch.zeros(plus.shape[:2], dtype=torch.bool, device=plus.device)
    hit = confirmed.any(-1)
    mask[pts[hit], ds[hit]] = True
    r_val, l_val = float(right[sel_rows[k], o]), float(left[sel_rows[k], o])
    return mask, (p, d + offset, o), r_val, l_val, a_val


# ---------------------------------------------------------------------------
# finite-difference check


@dataclass
class _Setup:
    call: str
    layout: _Layout
    x: torch.Tensor  # (N, n) float64
    consts: list[torch.Tensor]
    inputs64: dict[str, torch.Tensor]
    n_points: int
    out_shape: tuple[int, ...]
    dtype: str
    peak: int = 0  # the function's largest intermediate at one point, in elements


def _setup(
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    wrt: Sequence[str] | None,
    batched: bool,
    call: str,
) -> _Setup:
    names = tuple(input_names)
    wrt_t = _resolve_wrt(call, names, inputs, wrt)
    check_finite(call, names, inputs, batched)
    if batched:
        sizes = {int(inputs[n].shape[0]) if inputs[n].ndim else -1 for n in names}
        if len(sizes) != 1 or -1 in sizes:
            raise CheckError(
                f"{call}: batched inputs must share a leading point dimension: "
                + ", ".join(f"{n}: {tuple(inputs[n].shape)}" for n in names)
            )
        if 0 in sizes:
            raise CheckError(f"{call}: batched=True with no points (leading dimension 0)")
    x64 = _to64(inputs, batched)
    n_points = int(x64[names[0]].shape[0]) if names else 1
    point0 = {k: v[0] for k, v in x64.items()}
    layout = _layout(names, wrt_t, point0)
    if layout.n == 0:
        raise CheckError(
            f"{call}: nothing to check: "
            + ", ".join(f"{w} has shape {_shape_txt(point0[w].shape)}" for w in wrt_t)
            + " (no elements to differentiate with respect to)"
        )
    x = torch.cat([x64[w].reshape(n_points, -1) for w in wrt_t], dim=1)
    consts = [x64[names[i]] for i in layout.const_idx]
    with torch.no_grad():
        out0, peak = measure(fn, [point0[k] for k in names])
    if not out0.is_floating_point():
        raise CheckError(
            f"{call}: f returns dtype {out0.dtype}; checks need a floating-point output"
        )
    if out0.numel() == 0:
        raise CheckError(
            f"{call}: nothing to check: f returns shape {_shape_txt(out0.shape)} "
            "(no elements to differentiate)"
        )
    return _Setup(
        call=call,
        layout=layout,
        x=x,
        consts=consts,
        inputs64=x64,
        n_points=n_points,
        out_shape=tuple(int(s) for s in out0.shape),
        dtype=_input_dtype(inputs, wrt_t),
        peak=peak,
    )


def _analytic_full(
    fn: Fn, s: _Setup, order: int, allow_vmap: bool, columns: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(Aᵀ (N, n, m), F0 (N, m), vmapped): autograd's Jacobian or Hessian, transposed
    (one row per input element, like the finite differences), and the base values.

    The Jacobian is reverse mode's (the backward, which gradcheck checks), unless
    :func:`_forward_first`: then it is built by forward mode, which is cheaper there
    and yields Aᵀ contiguous, and reverse mode is held to it by
    :func:`_reverse_agrees`; should they disagree, reverse mode's own Jacobian is
    built and compared instead. For a single ``wrt`` input of a
    reverse-mode Jacobian no copy is made: the transposed view is returned as it is.

    ``columns`` (order 1): only the input elements ``c0 <= i < c1`` (Aᵀ's rows), for
    one shard of a check split across workers: forward mode builds just those.
    """
    lay = s.layout
    n_pts = s.n_points
    if order == 1:
        m = math.prod(s.out_shape)
        c0, c1 = columns if columns is not None else (0, lay.n)
        if _forward_first(m, lay.n, columns) and allow_vmap:
            g = _flat_fn(fn, lay, 1)
            forward = _forward_columns(g, s, c0, c1)
            if forward is not None and _reverse_agrees(g, s, forward[0], c0):
                return forward
        # one output: the Jacobian is the gradient (the same backward pass)
        op = "grad" if m == 1 else "jacobian"
        req = OpsRequest(
            ops=("value", op),
            wrt=lay.wrt,
            batched=True,
            allow_vmap=allow_vmap,
            jacobian_mode="reverse",
        )
        r = _compute(fn, lay.names, s.inputs64, req, s.call)
        parts = [r.outputs[op][w].reshape(n_pts, m, -1).transpose(1, 2) for w in lay.wrt]
        at = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        f0 = r.outputs["value"][""].reshape(n_pts, m)
        return at[:, c0:c1], f0, r.vmapped
    assert columns is None, "only first-order checks are split (see the public entry points)"
    req = OpsRequest(ops=("grad", "hessian"), wrt=lay.wrt, batched=True, allow_vmap=allow_vmap)
    r = _compute(fn, lay.names, s.inputs64, req, s.call)
    # row block b (perturbed input), column block a (gradient component): H[a, b]ᵀ
    rows = []
    for b, b_size in zip(lay.wrt, lay.sizes, strict=True):
        blocks = [
            r.outputs["hessian"][f"{a},{b}"].reshape(n_pts, a_size, b_size).transpose(1, 2)
            for a, a_size in zip(lay.wrt, lay.sizes, strict=True)
        ]
        rows.append(blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2))
    at = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
    f0 = torch.cat([r.outputs["grad"][w].reshape(n_pts, -1) for w in lay.wrt], dim=1)
    return at, f0, r.vmapped


# Jacobians of at least this many elements (and as many outputs as inputs) are built
# by forward mode first: below it the projections that hold reverse mode to it cost
# more than forward mode saves (measured: 0.6 ms more at 10 x 10, even at ~500 x 500)
FORWARD_MIN_ELEMENTS = 1 << 18


def _forward_first(m: int, n: int, columns: tuple[int, int] | None) -> bool:
    """Whether a first-order Jacobian (m outputs, n inputs) is built by forward mode
    (with reverse mode held to it): with at least as many outputs as inputs, when it
    is large, or always for a shard (``columns``), whose elements forward mode builds
    alone."""
    return m > 1 and n <= m and (columns is not None or n * m >= FORWARD_MIN_ELEMENTS)


def _forward_columns(
    g: Callable[..., torch.Tensor], s: _Setup, c0: int, c1: int
) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """:func:`_analytic_full`'s order-1 result by forward mode for the input elements
    ``c0..c1`` (all of them for a whole check, so that a whole check and its shards
    build the same numbers): one ``jvp`` per element, vmapped over elements in chunks
    within :data:`EVAL_BUDGET` (a loop for data-dependent control flow), one point at
    a time; each column comes out contiguous, as the perturbations are laid out.
    ``None`` when forward mode cannot run the function (the reverse-mode path then
    reports any error)."""
    n_pts, n = s.x.shape
    chunk = max(1, EVAL_BUDGET // max(n, s.peak, 1))
    vmapped = True
    cols: list[torch.Tensor] = []
    f0s: list[torch.Tensor] = []
    try:
        for p in range(n_pts):
            xp, cp = s.x[p], [c[p] for c in s.consts]

            def tangent(t: torch.Tensor, xp: torch.Tensor = xp, cp: list[Any] = cp) -> Any:
                return torch.func.jvp(lambda xv: g(xv, *cp), (xp,), (t,))[1]

            with torch.no_grad():
                f0s.append(g(xp, *cp))
            pieces = []
            for a in range(c0, c1, chunk):
                basis = _axis_rows(torch.arange(a, min(c1, a + chunk), device=xp.device), s.x)
                piece, vm = vmap_or_loop(tangent, [basis], [0], allow_vmap=vmapped)
                vmapped = vmapped and vm
                pieces.append(piece)
            cols.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces))
    except Exception:
        return None
    if n_pts == 1:  # no copies
        return cols[0][None], f0s[0][None], vmapped
    return torch.stack(cols), torch.stack(f0s), vmapped


# random cotangents that hold reverse mode to a forward-mode Jacobian
AGREEMENT_PROJECTIONS = 4
# allowed round-off of a projection, in units of (n + m) u |v|ᵀ|J[:, i]|: measured
# differences between the modes on the language's functions stay below 0.95 of that
# unit (0.015 of the tolerance); a false disagreement only costs building reverse
# mode's Jacobian
AGREEMENT_ROUNDOFF = 64.0


def _reverse_agrees(
    g: Callable[..., torch.Tensor], s: _Setup, at: torch.Tensor, c0: int = 0
) -> bool:
    """Whether reverse mode (``vᵀJ`` by one backward pass per cotangent ``v``) agrees
    with the forward-mode Jacobian ``at`` (Aᵀ, (N, k, m): input elements ``c0`` to
    ``c0 + k``) on random unit cotangents, to round-off: ``|vᵀJ_rev - vᵀJ_fwd| <=
    c (n + m) u |v|ᵀ|J[:, i]|`` in every input element ``i``.

    An element ``J[j, i]`` where the two modes differ by ``δ`` moves entry ``i`` by
    ``v_j δ``, so it escapes only if ``|v_j| δ`` stays below that tolerance for every
    one of the :data:`AGREEMENT_PROJECTIONS` independent cotangents. For a difference
    the finite differences could notice (``δ >= atol = 1e-5``) at n = m = 1000 in a
    column of entries up to 1 (``|v|ᵀ|J| <= 30``), the tolerance is 9e-10, against a
    typical ``|v_j| δ`` of 3e-7. A column whose other entries are 10^5 times larger
    than the wrong one's error weakens this in proportion (reverse mode is then only
    checked to that relative accuracy). The cotangents are fixed (seed 0), so reports
    are reproducible. Any failure to run says no.
    """
    n_pts, k, m = at.shape
    n = s.x.shape[1]
    gen = torch.Generator().manual_seed(0)
    v = _unit_rows(AGREEMENT_PROJECTIONS, m, gen).to(at.device)  # (P, m)

    def per_point(xf: torch.Tensor, *consts: torch.Tensor) -> torch.Tensor:
        vjp_fn = torch.func.vjp(lambda xv: g(xv, *consts), xf)[1]
        return torch.func.vmap(vjp_fn)(v)[0]  # (P, n)

    try:
        if n_pts == 1:
            vj = per_point(s.x[0], *[c[0] for c in s.consts])[None]
        else:
            vj, _ = vmap_or_loop(per_point, [s.x, *s.consts], [0] * (1 + len(s.consts)))
    except Exception:
        return False
    vj = vj[:, :, c0 : c0 + k]
    expected = torch.matmul(at, v.T)  # (N, k, P)
    diff = (vj.transpose(1, 2) - expected).abs()
    unit = AGREEMENT_ROUNDOFF * (n + m) * UNIT_ROUNDOFF
    # per projection and element, so that a column's large entries do not hide its
    # small ones: diff <= unit |v|ᵀ|J[:, i]|. Since |v|ᵀ|J[:, i]| >= |vᵀJ[:, i]|,
    # nearly every element passes on the projection itself, and the bound (a pass
    # over the column) is built only for the rest (NaN included)
    undecided = ~(diff <= unit * expected.abs())
    if not bool(undecided.any()):
        return True
    pts, rows = torch.nonzero(undecided.any(-1), as_tuple=True)
    bound = torch.matmul(at[pts, rows].abs(), v.abs().T)  # (K, P)
    return bool((diff[pts, rows] <= unit * bound).all())


def _symmetry(a: torch.Tensor, atol: float, rtol: float) -> tuple[bool, list[bool], float]:
    at = a.transpose(1, 2)
    asym = (a - at).abs()
    ok = asym <= atol + rtol * torch.maximum(a.abs(), at.abs())
    per_point = [bool(b) for b in ok.reshape(a.shape[0], -1).all(dim=1)]
    return bool(ok.all()), per_point, float(asym.max()) if asym.numel() else 0.0


def _kink_record(
    found: tuple[torch.Tensor, tuple[int, int, int], float, float, float],
    s: _Setup,
    order: int,
    fast: bool,
) -> tuple[Kink, list[bool]]:
    mask, (p, d, o), right, left, auto = found
    lay = s.layout
    bad_points = mask.reshape(mask.shape[0], -1).any(dim=1).tolist()
    if fast:
        kink = Kink(p, ",".join(lay.wrt), (), (), None, right, left, auto, direction=d)
    else:
        name, idx = lay.locate(d)
        row_name, row_idx = _row_label(lay, s.out_shape, order, o)
        label = f"{row_name},{name}" if row_name is not None else name
        at = float(s.x[p, d])
        kink = Kink(p, label if order == 2 else name, row_idx, idx, at, right, left, auto)
    return kink, [not b for b in bad_points]


def _full_check(
    fn: Fn,
    s: _Setup,
    order: int,
    atol: float,
    rtol: float,
    eps: float,
    allow_vmap: bool,
    columns: tuple[int, int] | None = None,
) -> CheckReport:
    """The element-wise check; ``columns`` ``(c0, c1)`` checks only the input elements
    ``c0 <= i < c1`` (one shard of a check split across workers, order 1)."""
    c0, c1 = columns if columns is not None else (0, s.layout.n)
    at, f0, vm1 = _analytic_full(fn, s, order, allow_vmap, columns)  # at: (N, c1 - c0, m)
    g = _flat_fn(fn, s.layout, order)
    vmapped = allow_vmap and vm1
    ev = _Evaluator(g, s.consts, vmapped, one_hot=vmapped and order == 1, width=_width(s, order))
    plus, minus = ev.along(s.x, None, [eps, -eps], c0, c1)  # (N, c1 - c0, m)
    fused = None
    if rtol <= 1:  # the kink screen's bound needs rtol <= 1
        ops = _Operands(at, None, at, plus, minus, 2 * f0[:, None, :], eps, True)
        fused = _fused_compare(ops, atol, rtol)
    if fused is not None:
        cmp, screened = fused
        found = _find_kink_rows(ev, s.x, f0, plus, minus, at, screened, eps, atol, rtol, c0)
    else:
        a = at.transpose(1, 2)  # (N, m, c1 - c0)
        numeric = ((plus - minus) / (2 * eps)).transpose(1, 2)
        cmp = _compare_generic(a, numeric, a, atol, rtol)
        found = _find_kink(ev, s.x, f0, plus, minus, None, at, eps, atol, rtol, offset=c0)
    worst = _worst_element(_from_input(cmp, c0), s.layout, s.out_shape, order)
    kink = None
    point_passed = list(cmp.point_passed)
    if found is not None:
        kink, kink_ok = _kink_record(found, s, order, fast=False)
        point_passed = [a_ and b_ for a_, b_ in zip(point_passed, kink_ok, strict=True)]
    symmetric: bool | None = None
    max_asym = 0.0
    if order == 2:
        symmetric, sym_ok, max_asym = _symmetry(at.transpose(1, 2), atol, rtol)
        point_passed = [a_ and b_ for a_, b_ in zip(point_passed, sym_ok, strict=True)]
    return _report(
        kind="finite_difference",
        order=order,
        mode="full",
        cmp=cmp,
        worst=worst,
        kink=kink,
        symmetric=symmetric,
        max_asym=max_asym,
        point_passed=point_passed,
        atol=atol,
        rtol=rtol,
        eps=eps,
        vmapped=vm1 and ev.vmapped,
        dtype=s.dtype,
    )


def _report(
    *,
    kind: str,
    order: int,
    mode: str,
    cmp: _Comparison,
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


def _unit_rows(k: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.randn(k, dim, generator=gen, dtype=F64)
    return u / u.norm(dim=1, keepdim=True).clamp_min(TINY)


def _fast_check(
    fn: Fn,
    s: _Setup,
    order: int,
    atol: float,
    rtol: float,
    eps: float,
    num_projections: int,
    seed: int,
    allow_vmap: bool,
) -> CheckReport:
    lay = s.layout
    n_pts, n = s.x.shape
    m = math.prod(s.out_shape) if order == 1 else n
    gen = torch.Generator().manual_seed(seed)
    u = _unit_rows(num_projections, n, gen).to(s.x.device)  # (P, n)
    v = _unit_rows(num_projections, m, gen).to(s.x.device)  # (P, m)
    vmapped = allow_vmap
    analytic = torch.empty(n_pts, num_projections, dtype=F64, device=s.x.device)
    transposed = torch.empty(n_pts, num_projections, dtype=F64, device=s.x.device)
    f0: torch.Tensor | None = None
    for k in range(num_projections):
        if order == 1:
            cot = v[k].reshape(s.out_shape).expand((n_pts, *s.out_shape))
            req = OpsRequest(
                ops=("value", "vjp"), wrt=lay.wrt, batched=True, cotangent=cot, allow_vmap=vmapped
            )
            r = _compute(fn, lay.names, s.inputs64, req, s.call)
            vj = torch.cat([r.outputs["vjp"][w].reshape(n_pts, -1) for w in lay.wrt], dim=1)
            analytic[:, k] = vj @ u[k]
            if f0 is None:
                f0 = r.outputs["value"][""].reshape(n_pts, m)
        else:
            vec_u = {
                w: t.expand((n_pts, *t.shape))
                for w, t in zip(lay.wrt, lay.unflatten(u[k]), strict=True)
            }
            vec_v = {
                w: t.expand((n_pts, *t.shape))
                for w, t in zip(lay.wrt, lay.unflatten(v[k]), strict=True)
            }
            ru = _compute(
                fn,
                lay.names,
                s.inputs64,
                OpsRequest(
                    ops=("grad", "hvp"), wrt=lay.wrt, batched=True, vector=vec_u, allow_vmap=vmapped
                ),
                s.call,
            )
            rv = _compute(
                fn,
                lay.names,
                s.inputs64,
                OpsRequest(
                    ops=("hvp",), wrt=lay.wrt, batched=True, vector=vec_v, allow_vmap=vmapped
                ),
                s.call,
            )
            hu = torch.cat([ru.outputs["hvp"][w].reshape(n_pts, -1) for w in lay.wrt], dim=1)
            hv = torch.cat([rv.outputs["hvp"][w].reshape(n_pts, -1) for w in lay.wrt], dim=1)
            analytic[:, k] = hu @ v[k]
            transposed[:, k] = hv @ u[k]
            vmapped = vmapped and rv.vmapped
            r = ru
            if f0 is None:
                f0 = torch.cat([ru.outputs["grad"][w].reshape(n_pts, -1) for w in lay.wrt], dim=1)
        vmapped = vmapped and r.vmapped
    assert f0 is not None
    g = _flat_fn(fn, lay, order)
    ev = _Evaluator(g, s.consts, vmapped, width=_width(s, order))
    plus, minus = ev.along(s.x, u, [eps, -eps])  # (N, P, m)
    numeric = ((plus - minus) / (2 * eps) * v[None]).sum(-1)  # (N, P)
    cmp = _compare(analytic[:, None, :], numeric[:, None, :], analytic[:, None, :], atol, rtol)
    found = _find_kink(ev, s.x, f0, plus, minus, u, analytic, eps, atol, rtol, proj=v)
    kink = None
    point_passed = list(cmp.point_passed)
    if found is not None:
        kink, kink_ok = _kink_record(found, s, order, fast=True)
        point_passed = [a_ and b_ for a_, b_ in zip(point_passed, kink_ok, strict=True)]
    symmetric: bool | None = None
    max_asym = 0.0
    if order == 2:
        asym = (analytic - transposed).abs()
        sym_ok_t = asym <= atol + rtol * torch.maximum(analytic.abs(), transposed.abs())
        symmetric = bool(sym_ok_t.all())
        max_asym = float(asym.max())
        point_passed = [
            a_ and bool(b_) for a_, b_ in zip(point_passed, sym_ok_t.all(dim=1), strict=True)
        ]
    worst: WorstElement | None = None
    if cmp.worst_flat is not None:
        p, _, k = cmp.worst_flat
        worst = WorstElement(
            point=p,
            input=",".join(lay.wrt),
            output_index=(),
            input_index=(),
            analytic=cmp.analytic,
            numeric=cmp.numeric,
            abs_error=cmp.abs_error,
            rel_error=cmp.rel_error,
            projection=k,
        )
    report = _report(
        kind="finite_difference",
        order=order,
        mode="fast",
        cmp=cmp,
        worst=worst,
        kink=kink,
        symmetric=symmetric,
        max_asym=max_asym,
        point_passed=point_passed,
        atol=atol,
        rtol=rtol,
        eps=eps,
        vmapped=vmapped and ev.vmapped,
        dtype=s.dtype,
    )
    failing = [i for i, ok in enumerate(cmp.point_passed) if not ok]
    if not failing or n * m > FULL_FALLBACK_LIMIT:
        return report
    # name the worst element: the element-wise check at the failing points
    sub = failing[:FULL_FALLBACK_POINTS]
    sub_setup = _subset(s, sub)
    full = _full_check(fn, sub_setup, order, atol, rtol, eps, vmapped and ev.vmapped)
    point_passed = list(report.point_passed)
    for j, i in enumerate(sub):
        point_passed[i] = full.point_passed[j] and (kink is None or kink.point != i)
    worst_full = None if full.worst is None else replace(full.worst, point=sub[full.worst.point])
    kink_full = kink if full.kink is None else replace(full.kink, point=sub[full.kink.point])
    merged = replace(
        report,
        passed=all(point_passed) and kink_full is None and symmetric is not False,
        max_abs_error=full.max_abs_error,
        max_rel_error=full.max_rel_error,
        worst=worst_full,
        point_passed=tuple(point_passed),
        non_differentiable=kink_full is not None,
        kink=kink_full,
        vmapped=report.vmapped and full.vmapped,
    )
    return replace(merged, message=describe(merged))


def _subset(s: _Setup, points: list[int]) -> _Setup:
    idx = torch.tensor(points, device=s.x.device)
    return replace(
        s,
        x=s.x[idx],
        consts=[c[idx] for c in s.consts],
        inputs64={k: v[idx] for k, v in s.inputs64.items()},
        n_points=len(points),
    )


def finite_difference_check_impl(
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    wrt: Sequence[str] | None,
    batched: bool,
    order: int,
    atol: float,
    rtol: float,
    eps: float,
    fast: bool | None,
    fast_threshold: int,
    num_projections: int,
    seed: int,
    allow_vmap: bool,
    columns: tuple[int, int] | None = None,
) -> CheckReport:
    call = f"check(f, order={order})" if order != 1 else "check(f)"
    if order not in (1, 2):
        raise CheckError(f"check(f): order must be 1 or 2, not {order!r}")
    if not valid_tolerance("eps", eps):
        raise CheckError(f"{call}: eps must be a positive number, not {eps!r}")
    if not (valid_tolerance("atol", atol) and valid_tolerance("rtol", rtol)):
        raise CheckError(f"{call}: atol and rtol must be finite and >= 0 (got {atol!r}, {rtol!r})")
    if num_projections < 1:
        raise CheckError(f"{call}: num_projections must be >= 1, not {num_projections!r}")
    s = _setup(fn, input_names, inputs, wrt, batched, call)
    if order == 2 and math.prod(s.out_shape) != 1:
        shape = (
            "(" + ", ".join(map(str, s.out_shape)) + ("," if len(s.out_shape) == 1 else "") + ")"
        )
        raise CheckError(
            f"{call}: f returns shape {shape}, not a scalar; second-order checks compare "
            "the Hessian of a scalar function (write sum(...) in the function)"
        )
    if columns is not None:
        c0, c1 = columns
        if order != 1 or fast or not 0 <= c0 < c1 <= s.layout.n:
            raise CheckError(
                f"{call}: columns={columns!r} needs order=1, the full check and "
                f"0 <= start < stop <= {s.layout.n} (the input elements)"
            )
        return _full_check(fn, s, order, atol, rtol, eps, allow_vmap, (c0, c1))
    use_fast = fast if fast is not None else s.layout.n > fast_threshold
    if use_fast:
        return _fast_check(fn, s, order, atol, rtol, eps, num_projections, seed, allow_vmap)
    return _full_check(fn, s, order, atol, rtol, eps, allow_vmap)


# ---------------------------------------------------------------------------
# claimed derivatives


_CLAIM_KINDS = {
    "grad": ("claimed_grad", 1),
    "jacobian": ("claimed_jacobian", 1),
    "hessian": ("claimed_hessian", 2),
}


def _claim_pairs(
    call: str, kind: str, keys: Sequence[str], names: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(key, a, b) per claim; b == "" for first-order claims."""
    pairs = []
    for key in keys:
        if kind == "hessian":
            parts = key.split(",") if "," in key else [key, key]
            if len(parts) != 2:
                raise CheckError(f"{call}: a Hessian claim key is 'x' or 'a,b', not {key!r}")
            a, b = (p.strip() for p in parts)
        else:
            a, b = key, ""
        for nm in (a, b):
            if nm and nm not in names:
                raise CheckError(
                    f"{call}: the claim for {key!r} names an unknown input; f takes "
                    f"{', '.join(names)}"
                )
        pairs.append((key, a, b))
    return pairs


def _shape_txt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _claimed_values(
    claim: Callable[..., Any],
    args: list[torch.Tensor],
    expected: tuple[int, ...],
    allow_vmap: bool,
    call: str,
    what: str,
) -> tuple[torch.Tensor, bool]:
    """A claim evaluated at every point, ``(N, *expected)`` float64 (a broadcastable
    value broadcast), and whether that ran vmapped."""

    def claim_point(*point: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(claim(*point), dtype=F64)

    got, vm = vmap_or_loop(claim_point, args, [0] * len(args), allow_vmap=allow_vmap)
    got = got.to(F64)
    n_pts = int(args[0].shape[0])
    full = (n_pts, *expected)
    if tuple(got.shape) != full:
        per = tuple(got.shape[1:])
        try:
            if len(per) > len(expected):
                raise RuntimeError("more dimensions than expected")
            padded = got.reshape(n_pts, *([1] * (len(expected) - len(per))), *per)
            got = torch.broadcast_to(padded, full)
        except RuntimeError:
            if got[0].numel() == math.prod(expected):
                got = got.reshape(full)
            else:
                raise CheckError(
                    f"{call}: the claimed {what} has shape {_shape_txt(got.shape[1:])}, "
                    f"expected {_shape_txt(expected)}"
                ) from None
    return got, vm


def _claimed_jacobian(
    fn: Fn,
    claim_fns: Mapping[str, Callable[..., Any]],
    pairs: list[tuple[str, str, str]],
    s: _Setup,
    atol: float,
    rtol: float,
    allow_vmap: bool,
    columns: tuple[int, int] | None,
) -> CheckReport:
    """A claimed Jacobian against autograd's, as one (N, n, m) comparison over the
    claimed inputs' elements (``columns``: only ``c0 <= i < c1``, one shard of a
    check split across workers; see :func:`merge_shards`).

    Autograd's side is :func:`_analytic_full`'s: forward mode with reverse mode held
    to it when there are at least as many outputs as inputs, else reverse mode. Among
    equally bad elements the first in (point, output, input) order is the worst.
    """
    lay = s.layout
    c0, c1 = columns if columns is not None else (0, lay.n)
    at, _, vmapped = _analytic_full(fn, s, 1, allow_vmap, columns)  # (N, k, m)
    m = math.prod(s.out_shape)
    args = [s.inputs64[n] for n in lay.names]
    by_input: dict[str, torch.Tensor] = {}
    for key, a, _ in pairs:
        expected = s.out_shape + tuple(s.inputs64[a].shape[1:])
        got, vm = _claimed_values(
            claim_fns[key], args, expected, allow_vmap and vmapped, s.call, f"jacobian for {key!r}"
        )
        vmapped = vmapped and vm
        by_input[a] = got.reshape(s.n_points, m, -1)
    # the claims of elements c0..c1 only: a view when one input holds them all
    parts = []
    for w, start, size in zip(lay.wrt, lay.offsets, lay.sizes, strict=True):
        lo, hi = max(c0, start), min(c1, start + size)
        if lo < hi:
            parts.append(by_input[w][:, :, lo - start : hi - start])
    claimed = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # (N, m, k)
    fused = None
    if at.is_contiguous():  # forward mode: compare in its layout, the claim read across
        got_t = claimed.transpose(1, 2)
        if not _native.supports(got_t):  # the eager comparison reads it copied, by rows
            got_t = got_t.contiguous()
        fused = _fused_compare(_Operands(at, at, got_t, None, None, None, 0.0, True), atol, rtol)
    if fused is not None:
        cmp = fused[0]
    else:
        auto = at.transpose(1, 2)  # (N, m, k)
        cmp = _compare(auto, auto, claimed, atol, rtol)
    worst = _worst_element(_from_input(cmp, c0), lay, s.out_shape, 1)
    return _report(
        kind="claimed_jacobian",
        order=1,
        mode="full",
        cmp=replace(cmp, worst_flat=None),
        worst=worst,
        kink=None,
        symmetric=None,
        max_asym=0.0,
        point_passed=list(cmp.point_passed),
        atol=atol,
        rtol=rtol,
        eps=0.0,
        vmapped=vmapped,
        dtype=s.dtype,
    )


def claimed_check_impl(
    fn: Fn,
    claim_fns: Mapping[str, Callable[..., Any]],
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    kind: str,
    batched: bool,
    atol: float,
    rtol: float,
    allow_vmap: bool,
    columns: tuple[int, int] | None = None,
) -> CheckReport:
    if kind not in _CLAIM_KINDS:
        raise CheckError(f"check(f): claimed kind must be grad, jacobian or hessian, not {kind!r}")
    call = f"check(f, {kind}=...)"
    if not claim_fns:
        raise CheckError(f"{call}: no claimed derivatives given")
    if not (valid_tolerance("atol", atol) and valid_tolerance("rtol", rtol)):
        raise CheckError(f"{call}: atol and rtol must be finite and >= 0 (got {atol!r}, {rtol!r})")
    names = tuple(input_names)
    pairs = _claim_pairs(call, kind, list(claim_fns), names)
    used = {a for _, a, _ in pairs} | {b for _, _, b in pairs if b}
    wrt = tuple(n for n in names if n in used)
    s = _setup(fn, names, inputs, wrt, batched, call)
    if columns is not None:
        c0, c1 = columns
        if kind != "jacobian" or not 0 <= c0 < c1 <= s.layout.n:
            raise CheckError(
                f"{call}: columns={columns!r} needs a claimed Jacobian and "
                f"0 <= start < stop <= {s.layout.n} (the claimed inputs' elements)"
            )
    if kind == "jacobian":
        return _claimed_jacobian(fn, claim_fns, pairs, s, atol, rtol, allow_vmap, columns)
    report_kind, order = _CLAIM_KINDS[kind]
    n_pts = s.n_points
    req = OpsRequest(ops=(kind,), wrt=wrt, batched=True, allow_vmap=allow_vmap)
    r = _compute(fn, names, s.inputs64, req, call)
    vmapped = r.vmapped
    args = [s.inputs64[n] for n in names]
    autos: list[torch.Tensor] = []
    claims: list[torch.Tensor] = []
    shapes: dict[str, tuple[int, ...]] = {w: tuple(s.inputs64[w].shape[1:]) for w in names}
    for key, a, b in pairs:
        if kind == "grad":
            auto = r.outputs["grad"][a]
            expected = shapes[a]
        else:
            auto = r.outputs["hessian"][f"{a},{b}"]
            expected = shapes[a] + shapes[b]
        what = f"{kind} for {key!r}" if kind != "hessian" else f"Hessian block {a},{b}"
        got, vm = _claimed_values(
            claim_fns[key], args, expected, allow_vmap and vmapped, call, what
        )
        vmapped = vmapped and vm
        autos.append(auto.reshape(n_pts, 1, -1))
        claims.append(got.reshape(autos[-1].shape))
    # compare block by block; keep the worst over blocks
    best: tuple[float, _Comparison, int] | None = None
    point_passed = [True] * n_pts
    max_abs = max_rel = 0.0
    for i, (auto, got) in enumerate(zip(autos, claims, strict=True)):
        cmp = _compare(auto, auto, got, atol, rtol)
        point_passed = [p and q for p, q in zip(point_passed, cmp.point_passed, strict=True)]
        max_abs = largest([max_abs, cmp.max_abs])
        max_rel = largest([max_rel, cmp.max_rel])
        if cmp.worst_flat is None:
            continue
        allowed = atol + rtol * abs(cmp.analytic)
        ratio = math.inf if math.isnan(cmp.abs_error) else cmp.abs_error / max(allowed, TINY)
        if best is None or ratio > best[0]:
            best = (ratio, cmp, i)
    worst = None
    if best is not None:
        _, cmp, i = best
        key, a, b = pairs[i]
        p, _, col = cmp.worst_flat or (0, 0, 0)
        out_idx: tuple[int, ...]
        in_idx: tuple[int, ...]
        if kind == "grad":
            name, out_idx, in_idx = a, (), _unravel(col, shapes[a])
        else:
            sa, sb = shapes[a], shapes[b]
            blk = _unravel(col, sa + sb)
            name, out_idx, in_idx = f"{a},{b}", blk[: len(sa)], blk[len(sa) :]
        worst = WorstElement(
            point=p,
            input=name,
            output_index=out_idx,
            input_index=in_idx,
            analytic=cmp.analytic,
            numeric=cmp.numeric,
            abs_error=cmp.abs_error,
            rel_error=cmp.rel_error,
        )
    symmetric: bool | None = None
    max_asym = 0.0
    if kind == "hessian":
        sym_results = []
        by_pair = {(a, b): c for (_, a, b), c in zip(pairs, claims, strict=True)}
        for (a, b), c in by_pair.items():
            if (b, a) not in by_pair or (a > b and (b, a) in by_pair):
                continue
            na, nb = math.prod(shapes[a]), math.prod(shapes[b])
            m_ab = c.reshape(n_pts, na, nb)
            m_ba = by_pair[(b, a)].reshape(n_pts, nb, na).transpose(1, 2)
            asym = (m_ab - m_ba).abs()
            sym_results.append(asym <= atol + rtol * torch.maximum(m_ab.abs(), m_ba.abs()))
            max_asym = max(max_asym, float(asym.max()))
        if sym_results:
            symmetric = all(bool(t.all()) for t in sym_results)
    total = _Comparison(all(point_passed), point_passed, max_abs, max_rel, None, 0, 0, 0, 0)
    return _report(
        kind=report_kind,
        order=order,
        mode="full",
        cmp=total,
        worst=worst,
        kink=None,
        symmetric=symmetric,
        max_asym=max_asym,
        point_passed=point_passed,
        atol=atol,
        rtol=rtol,
        eps=0.0,
        vmapped=vmapped,
        dtype=s.dtype,
    )
