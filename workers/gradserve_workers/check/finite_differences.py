"""The finite-difference check: autograd's derivatives against central differences.

``full`` mode compares every element of the Jacobian (or Hessian) with central
differences along the coordinate axes; ``fast`` mode compares random projections
``vᵀJu`` and re-checks failing points element by element to name the worst element.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from ..ops import OpsRequest
from ..report import CheckReport, WorstElement, describe
from ..tasks import FULL_CHECK_MAX_INPUTS, valid_tolerance
from ..transforms import Fn
from .analytic import analytic_full, compute
from .comparison import Operands, all_pairs, compare, symmetry
from .evaluation import Evaluator, flat_fn, width
from .fd_error import with_error_estimate
from .kinks import find_kink, kink_record
from .options import DEFAULT_OPTIONS, CheckOptions
from .points import F64, CheckError, Setup, setup, shape_txt, unit_rows
from .report import from_input, make_report, worst_element

__all__ = ["finite_difference_check"]


def finite_difference_check(
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    wrt: Sequence[str] | None = None,
    batched: bool = False,
    order: int = 1,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    eps: float = 1e-6,
    fast: bool | None = None,
    fast_threshold: int = FULL_CHECK_MAX_INPUTS,
    num_projections: int = 4,
    seed: int = 0,
    allow_vmap: bool = True,
    columns: tuple[int, int] | None = None,
    options: CheckOptions = DEFAULT_OPTIONS,
) -> CheckReport:
    """Check autograd's derivatives of ``fn`` against central differences in float64.

    ``order=1`` compares the full Jacobian (every output, every ``wrt`` input
    element); ``order=2`` compares the Hessian of a scalar ``fn`` with central
    differences of its gradient and checks its symmetry. All perturbed points are
    evaluated as one vmapped batch (a per-point loop for data-dependent control flow);
    from 256 input elements on (1,024 with several points), first-order checks
    evaluate them one-hot, sharing the work of the elements a perturbation does not
    touch (see ``_perturb``).
    ``fast`` (automatic above ``fast_threshold`` input elements per point) compares
    ``num_projections`` random projections vᵀJu instead, and on a failure re-checks
    the failing points element by element to name the worst element.

    Where one-sided differences disagree and keep disagreeing at a smaller step (a
    kink: ``relu`` or ``abs`` at 0), the report says ``non_differentiable`` and fails.
    The worst element (or projection) carries the difference's own error estimate
    (``worst.fd_error``, Richardson with ``eps`` and ``eps/2``, see ``fd_error``): the
    message says whether the error is beyond it or within finite-difference noise.

    A large Jacobian (2^18 elements) with at least as many outputs as input elements
    is built by forward mode, and reverse mode is held to it on random projections
    (to round-off); otherwise autograd's Jacobian is reverse mode's.
    ``columns=(start, stop)`` checks only the input elements ``start <= i < stop`` of
    the flattened ``wrt`` inputs (order 1, full check): one shard of a check that the
    server splits across workers, merged by :func:`merge_shards`.

    >>> x = torch.tensor([0.5, -1.0, 2.0])
    >>> r = finite_difference_check(lambda x: torch.sin(x) * x.sum(), ["x"], {"x": x})
    >>> r.passed, r.kind, r.order, r.mode, r.max_abs_error < 1e-8
    (True, 'finite_difference', 1, 'full', True)
    >>> r = finite_difference_check(lambda x: torch.abs(x).sum(), ["x"],
    ...                             {"x": torch.tensor([1.0, 0.0])})
    >>> r.passed, r.non_differentiable, r.kink.input_index
    (False, True, (1,))
    >>> round(r.kink.right, 6), round(r.kink.left, 6), r.kink.autograd
    (1.0, -1.0, 0.0)
    >>> r = finite_difference_check(lambda x: (x ** 4).sum(), ["x"], {"x": x}, order=2)
    >>> r.passed, r.symmetric
    (True, True)
    >>> f = lambda x: torch.cumsum(x ** 2, 0)  # d f_i / d x_j = 2 x_j for j <= i
    >>> halves = [finite_difference_check(f, ["x"], {"x": x}, columns=c) for c in [(0, 2), (2, 3)]]
    >>> from gradserve_workers.report import merge_shards
    >>> whole = merge_shards(halves)
    >>> whole.passed, whole.max_abs_error < 1e-8
    (True, True)
    """
    call = f"check(f, order={order})" if order != 1 else "check(f)"
    if order not in (1, 2):
        raise CheckError(f"check(f): order must be 1 or 2, not {order!r}")
    if not valid_tolerance("eps", eps):
        raise CheckError(f"{call}: eps must be a positive number, not {eps!r}")
    if not (valid_tolerance("atol", atol) and valid_tolerance("rtol", rtol)):
        raise CheckError(f"{call}: atol and rtol must be finite and >= 0 (got {atol!r}, {rtol!r})")
    if num_projections < 1:
        raise CheckError(f"{call}: num_projections must be >= 1, not {num_projections!r}")
    s = setup(fn, input_names, inputs, wrt, batched, call, options)
    if order == 2 and math.prod(s.out_shape) != 1:
        raise CheckError(
            f"{call}: f returns shape {shape_txt(s.out_shape)}, not a scalar; second-order "
            "checks compare the Hessian of a scalar function (write sum(...) in the function)"
        )
    if columns is not None:
        c0, c1 = columns
        if order != 1 or fast or not 0 <= c0 < c1 <= s.layout.n:
            raise CheckError(
                f"{call}: columns={columns!r} needs order=1, the full check and "
                f"0 <= start < stop <= {s.layout.n} (the input elements)"
            )
        report = _full_check(fn, s, order, atol, rtol, eps, allow_vmap, (c0, c1))
    elif fast if fast is not None else s.layout.n > fast_threshold:
        report = _fast_check(fn, s, order, atol, rtol, eps, num_projections, seed, allow_vmap)
    else:
        report = _full_check(fn, s, order, atol, rtol, eps, allow_vmap)
    if not options.fd_error_estimate:
        return report
    # the worst element's difference carries its own error estimate
    return with_error_estimate(
        report,
        fn,
        input_names,
        inputs,
        batched=batched,
        eps=eps,
        seed=seed,
        num_projections=num_projections,
    )


def _full_check(
    fn: Fn,
    s: Setup,
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
    at, f0, vm1 = analytic_full(fn, s, order, allow_vmap, columns)  # at: (N, c1 - c0, m)
    g = flat_fn(fn, s.layout, order)
    vmapped = allow_vmap and vm1
    one_hot = vmapped and order == 1
    ev = Evaluator(g, s.consts, vmapped, one_hot, width(s, order), s.options)
    plus, minus = ev.along(s.x, None, [eps, -eps], c0, c1)  # (N, c1 - c0, m)
    ops = Operands(at, None, at, plus, minus, 2 * f0[:, None, :], eps, transposed=True)
    cmp, screened = compare(ops, atol, rtol, s.options.compare_block)
    # the screen is a necessary condition only for rtol <= 1 (see _find_kink)
    pairs = screened if rtol <= 1 else all_pairs(plus.shape[0], plus.shape[1], plus.device)
    found = find_kink(ev, s.x, f0, plus, minus, pairs, at, eps, atol, rtol, offset=c0)
    worst = worst_element(from_input(cmp, c0), s.layout, s.out_shape, order)
    kink = None
    point_passed = list(cmp.point_passed)
    if found is not None:
        kink, kink_ok = kink_record(found, s, order, fast=False)
        point_passed = [a_ and b_ for a_, b_ in zip(point_passed, kink_ok, strict=True)]
    symmetric: bool | None = None
    max_asym = 0.0
    if order == 2:
        sym_ok, max_asym = symmetry(at, at.transpose(1, 2), atol, rtol)
        symmetric = bool(sym_ok.all())
        sym_points = sym_ok.reshape(sym_ok.shape[0], -1).all(1).tolist()
        point_passed = [a_ and b_ for a_, b_ in zip(point_passed, sym_points, strict=True)]
    return make_report(
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


def _fast_check(
    fn: Fn,
    s: Setup,
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
    u = unit_rows(num_projections, n, gen).to(s.x.device)  # (P, n)
    v = unit_rows(num_projections, m, gen).to(s.x.device)  # (P, m)
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
            r = compute(fn, lay.names, s.inputs64, req, s.call)
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
            ru = compute(
                fn,
                lay.names,
                s.inputs64,
                OpsRequest(
                    ops=("grad", "hvp"), wrt=lay.wrt, batched=True, vector=vec_u, allow_vmap=vmapped
                ),
                s.call,
            )
            rv = compute(
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
    g = flat_fn(fn, lay, order)
    ev = Evaluator(g, s.consts, vmapped, width=width(s, order), options=s.options)
    plus, minus = ev.along(s.x, u, [eps, -eps])  # (N, P, m)
    numeric = ((plus - minus) / (2 * eps) * v[None]).sum(-1)  # (N, P)
    projections = Operands(analytic[:, None, :], numeric[:, None, :], analytic[:, None, :])
    cmp, _ = compare(projections, atol, rtol, s.options.compare_block)
    pairs = all_pairs(n_pts, num_projections, s.x.device)
    found = find_kink(ev, s.x, f0, plus, minus, pairs, analytic, eps, atol, rtol, dirs=u, proj=v)
    kink = None
    point_passed = list(cmp.point_passed)
    if found is not None:
        kink, kink_ok = kink_record(found, s, order, fast=True)
        point_passed = [a_ and b_ for a_, b_ in zip(point_passed, kink_ok, strict=True)]
    symmetric: bool | None = None
    max_asym = 0.0
    if order == 2:
        sym_ok_t, max_asym = symmetry(analytic, transposed, atol, rtol)
        symmetric = bool(sym_ok_t.all())
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
    report = make_report(
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
    if not failing or n * m > s.options.full_fallback_limit:
        return report
    # name the worst element: the element-wise check at the failing points
    sub = failing[: s.options.full_fallback_points]
    sub_setup = s.subset(sub)
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
