"""Claimed derivatives: a gradient, Jacobian or Hessian the user claims, held to
autograd's at the given points."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from .._vmap import vmap_or_loop
from ..ops import OpsRequest
from ..report import CheckReport, WorstElement, largest
from ..tasks import valid_tolerance
from ..transforms import Fn
from .analytic import analytic_full, compute
from .comparison import Comparison, Operands, compare, symmetry
from .options import DEFAULT_OPTIONS, CheckOptions
from .points import F64, TINY, CheckError, Setup, setup, shape_txt, unravel
from .report import from_input, make_report, worst_element

__all__ = ["claimed_check"]


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
                    f"{call}: the claimed {what} has shape {shape_txt(got.shape[1:])}, "
                    f"expected {shape_txt(expected)}"
                ) from None
    return got, vm


def _claimed_jacobian(
    fn: Fn,
    claim_fns: Mapping[str, Callable[..., Any]],
    pairs: list[tuple[str, str, str]],
    s: Setup,
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
    at, _, vmapped = analytic_full(fn, s, 1, allow_vmap, columns)  # (N, k, m)
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
    if at.is_contiguous():  # forward mode: compare in its layout, the claim copied across
        ops = Operands(at, at, claimed.transpose(1, 2).contiguous(), transposed=True)
    else:  # reverse mode's Jacobian: Aᵀ is a view of the report's layout
        auto = at.transpose(1, 2)  # (N, m, k)
        ops = Operands(auto, auto, claimed)
    cmp, _ = compare(ops, atol, rtol, s.options.compare_block)
    worst = worst_element(from_input(cmp, c0), lay, s.out_shape, 1)
    return make_report(
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


def claimed_check(
    fn: Fn,
    claim_fns: Mapping[str, Callable[..., Any]],
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    kind: str,
    batched: bool = False,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    allow_vmap: bool = True,
    columns: tuple[int, int] | None = None,
    options: CheckOptions = DEFAULT_OPTIONS,
) -> CheckReport:
    """Compare claimed derivatives with autograd's, at the given points.

    ``claim_fns`` maps an input name to a callable of the same positional inputs as
    ``fn`` returning the claimed derivative with respect to that input: for
    ``kind="grad"`` the input's shape, for ``"jacobian"`` ``out_shape + in_shape``,
    for ``"hessian"`` the key ``"x"`` means d²f/dx² and ``"a,b"`` a cross term
    (``in_shape_a + in_shape_b``). A claim that returns a broadcastable value (a
    constant) is broadcast. In the report's worst element, ``analytic`` is autograd's
    value and ``numeric`` the claimed one. A large claimed Jacobian with at least as
    many outputs as inputs is compared with forward mode's (reverse mode held to
    it, as in :func:`finite_difference_check`); ``columns=(start, stop)`` compares
    only those elements of the claimed inputs (a shard, see :func:`merge_shards`).

    The gradient of ``2 * dot(x, x)`` is ``4 * x``, not ``2 * x``:

    >>> x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    >>> f = lambda x: 2 * torch.dot(x, x)
    >>> claimed_check(f, {"x": lambda x: 4 * x}, ["x"], {"x": x}, kind="grad",
    ...               batched=True).passed
    True
    >>> r = claimed_check(f, {"x": lambda x: 2 * x}, ["x"], {"x": x}, kind="grad",
    ...                   batched=True)
    >>> r.passed, r.point_passed, r.worst.point, r.worst.input_index
    (False, (False, False), 1, (0,))
    >>> r.worst.numeric, r.worst.analytic
    (6.0, 12.0)
    >>> "claimed 6 vs autograd 12" in r.message
    True
    """
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
    s = setup(fn, names, inputs, wrt, batched, call, options)
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
    r = compute(fn, names, s.inputs64, req, call)
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
    best: tuple[float, Comparison, int] | None = None
    point_passed = [True] * n_pts
    max_abs = max_rel = 0.0
    for i, (auto, got) in enumerate(zip(autos, claims, strict=True)):
        cmp, _ = compare(Operands(auto, auto, got), atol, rtol, s.options.compare_block)
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
            name, out_idx, in_idx = a, (), unravel(col, shapes[a])
        else:
            sa, sb = shapes[a], shapes[b]
            blk = unravel(col, sa + sb)
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
            ok, asym = symmetry(m_ab, m_ba, atol, rtol)
            sym_results.append(ok)
            max_asym = max(max_asym, asym)
        if sym_results:
            symmetric = all(bool(t.all()) for t in sym_results)
    total = Comparison(all(point_passed), point_passed, max_abs, max_rel, None, 0, 0, 0, 0)
    return make_report(
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
