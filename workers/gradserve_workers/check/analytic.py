"""Autograd's side of a check: the Jacobian or Hessian the checks hold to account.

The Jacobian is reverse mode's (the backward, which gradcheck checks), except where
forward mode builds it cheaper: then reverse mode is held to forward mode's on
random projections, to round-off, and reverse mode's own Jacobian is built only
where they disagree (or forward mode cannot run the function).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from .. import _routes_taken
from .._vmap import is_data_dependent_error, vmap_or_loop
from ..lang.errors import FunctionRuntimeError
from ..ops import OpsError, OpsRequest, OpsResult
from ..ops import compute as compute_ops
from ..transforms import Fn
from .evaluation import flat_fn
from .kinks import axis_rows
from .points import UNIT_ROUNDOFF, CheckError, Setup, unit_rows

__all__ = ["analytic_full", "compute", "forward_columns", "reverse_agrees"]


def _recall(exc: OpsError, call: str) -> CheckError:
    """The ops error's message with our call form in front."""
    msg = str(exc)
    head, sep, rest = msg.partition("(f): ")
    body = rest if sep and "(" not in head else msg
    return CheckError(f"{call}: {body}")


def compute(
    fn: Fn, names: Sequence[str], inputs: Mapping[str, torch.Tensor], req: OpsRequest, call: str
) -> OpsResult:
    """The ops' ``compute`` over a batch, its errors in the check's call form; a batch
    of one point runs unbatched (no outer vmap)."""
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
        r = compute_ops(fn, names, inputs, req, detect_unconnected=False)
    except OpsError as exc:
        raise _recall(exc, call) from exc
    _routes_taken.note(r.routes)
    if one:
        r.outputs = {
            op: {k: t.unsqueeze(0) for k, t in by_key.items()} for op, by_key in r.outputs.items()
        }
    return r


def analytic_full(
    fn: Fn, s: Setup, order: int, allow_vmap: bool, columns: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(Aᵀ (N, n, m), F0 (N, m), vmapped): autograd's Jacobian or Hessian, transposed
    (one row per input element, like the finite differences), and the base values.

    The Jacobian is reverse mode's (the backward, which gradcheck checks), unless
    :func:`_forward_first`: then it is built by forward mode, which is cheaper there
    and yields Aᵀ contiguous, and reverse mode is held to it by
    :func:`reverse_agrees`; should they disagree, reverse mode's own Jacobian is
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
        if _forward_first(m, lay.n, columns, s.options.forward_min_elements) and allow_vmap:
            g = flat_fn(fn, lay, 1)
            forward = forward_columns(g, s, c0, c1)
            if forward is not None and reverse_agrees(g, s, forward[0], c0):
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
        r = compute(fn, lay.names, s.inputs64, req, s.call)
        parts = [r.outputs[op][w].reshape(n_pts, m, -1).transpose(1, 2) for w in lay.wrt]
        at = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        f0 = r.outputs["value"][""].reshape(n_pts, m)
        return at[:, c0:c1], f0, r.vmapped
    assert columns is None, "only first-order checks are split (see the public entry points)"
    req = OpsRequest(ops=("grad", "hessian"), wrt=lay.wrt, batched=True, allow_vmap=allow_vmap)
    r = compute(fn, lay.names, s.inputs64, req, s.call)
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


def _forward_first(m: int, n: int, columns: tuple[int, int] | None, least: int) -> bool:
    """Whether a first-order Jacobian (m outputs, n inputs) is built by forward mode
    (with reverse mode held to it): with at least as many outputs as inputs, when it
    has ``least`` elements or more, or always for a shard (``columns``), whose
    elements forward mode builds alone."""
    return m > 1 and n <= m and (columns is not None or n * m >= least)


def _mode_unavailable(exc: Exception) -> bool:
    """Whether ``exc`` says an autograd mode cannot run the function, rather than that
    the function fails: torch's ``NotImplementedError`` (an operation or custom
    ``autograd.Function`` without that mode's formula; the function language
    re-raises it as a ``FunctionRuntimeError``), or data-dependent control flow
    under ``vmap``. The other mode's route then runs, and reports any error of the
    function itself."""
    unavailable = (NotImplementedError, FunctionRuntimeError)
    return isinstance(exc, unavailable) or is_data_dependent_error(exc)


def forward_columns(
    g: Callable[..., torch.Tensor], s: Setup, c0: int, c1: int
) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """:func:`analytic_full`'s order-1 result by forward mode for the input elements
    ``c0..c1`` (all of them for a whole check, so that a whole check and its shards
    build the same numbers): one ``jvp`` per element, vmapped over elements in chunks
    within ``options.eval_budget`` (a loop for data-dependent control flow), one point at
    a time; each column comes out contiguous, as the perturbations are laid out.
    ``None`` when forward mode cannot run the function (the reverse-mode path then
    reports any error)."""
    n_pts, n = s.x.shape
    chunk = max(1, s.options.eval_budget // max(n, s.peak, 1))
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
                basis = axis_rows(torch.arange(a, min(c1, a + chunk), device=xp.device), s.x)
                piece, vm = vmap_or_loop(tangent, [basis], [0], allow_vmap=vmapped)
                vmapped = vmapped and vm
                pieces.append(piece)
            cols.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces))
    except Exception as exc:
        if not _mode_unavailable(exc):
            raise
        return None
    if n_pts == 1:  # no copies
        return cols[0][None], f0s[0][None], vmapped
    return torch.stack(cols), torch.stack(f0s), vmapped


# random cotangents that hold reverse mode to a forward-mode Jacobian


def reverse_agrees(g: Callable[..., torch.Tensor], s: Setup, at: torch.Tensor, c0: int = 0) -> bool:
    """Whether reverse mode (``vᵀJ`` by one backward pass per cotangent ``v``) agrees
    with the forward-mode Jacobian ``at`` (Aᵀ, (N, k, m): input elements ``c0`` to
    ``c0 + k``) on random unit cotangents, to round-off: ``|vᵀJ_rev - vᵀJ_fwd| <=
    c (n + m) u |v|ᵀ|J[:, i]|`` in every input element ``i``.

    An element ``J[j, i]`` where the two modes differ by ``δ`` moves entry ``i`` by
    ``v_j δ``, so it escapes only if ``|v_j| δ`` stays below that tolerance for every
    one of the ``options.agreement_projections`` independent cotangents. For a difference
    the finite differences could notice (``δ >= atol = 1e-5``) at n = m = 1000 in a
    column of entries up to 1 (``|v|ᵀ|J| <= 30``), the tolerance is 9e-10, against a
    typical ``|v_j| δ`` of 3e-7. A column whose other entries are 10^5 times larger
    than the wrong one's error weakens this in proportion (reverse mode is then only
    checked to that relative accuracy). The cotangents are fixed (seed 0), so reports
    are reproducible. Where reverse mode cannot run the function (see
    :func:`_mode_unavailable`) the answer is no.
    """
    n_pts, k, m = at.shape
    n = s.x.shape[1]
    gen = torch.Generator().manual_seed(0)
    v = unit_rows(s.options.agreement_projections, m, gen).to(at.device)  # (P, m)

    def per_point(xf: torch.Tensor, *consts: torch.Tensor) -> torch.Tensor:
        vjp_fn = torch.func.vjp(lambda xv: g(xv, *consts), xf)[1]
        return torch.func.vmap(vjp_fn)(v)[0]  # (P, n)

    try:
        if n_pts == 1:
            vj = per_point(s.x[0], *[c[0] for c in s.consts])[None]
        else:
            vj, _ = vmap_or_loop(per_point, [s.x, *s.consts], [0] * (1 + len(s.consts)))
    except Exception as exc:
        if not _mode_unavailable(exc):
            raise
        return False
    vj = vj[:, :, c0 : c0 + k]
    expected = torch.matmul(at, v.T)  # (N, k, P)
    diff = (vj.transpose(1, 2) - expected).abs()
    unit = s.options.agreement_roundoff * (n + m) * UNIT_ROUNDOFF
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
