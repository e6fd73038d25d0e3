"""Derivative checks: autograd against finite differences, or a claimed derivative.

Both sides of every comparison are computed in float64, whatever the inputs' dtype,
so float32 inputs do not produce false failures. An element passes when
``|analytic - reference| <= atol + rtol * |reference|`` (gradcheck's rule), where the
reference is the finite-difference value, or autograd's value for claimed
derivatives. The report names the worst element (point, input, indices, both values)
in one paragraph, says when the function is not differentiable at a point (one-sided
differences disagree), and gives a verdict per point for batched checks.

The report types are torch-free and live in :mod:`gradserve_workers.report`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._check_impl import CheckError, claimed_check_impl, finite_difference_check_impl
from .fd_error import with_error_estimate
from .report import CheckReport, Kink, WorstElement, merge_reports, merge_shards
from .tasks import FULL_CHECK_MAX_INPUTS
from .transforms import Fn

CheckError.__module__ = __name__

__all__ = [
    "CheckError",
    "CheckReport",
    "Kink",
    "WorstElement",
    "claimed_check",
    "finite_difference_check",
    "merge_reports",
    "merge_shards",
]


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
    >>> whole = merge_shards(halves)
    >>> whole.passed, whole.max_abs_error < 1e-8
    (True, True)
    """
    report = finite_difference_check_impl(
        fn,
        input_names,
        inputs,
        wrt=wrt,
        batched=batched,
        order=order,
        atol=atol,
        rtol=rtol,
        eps=eps,
        fast=fast,
        fast_threshold=fast_threshold,
        num_projections=num_projections,
        seed=seed,
        allow_vmap=allow_vmap,
        columns=columns,
    )
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
    return claimed_check_impl(
        fn,
        claim_fns,
        input_names,
        inputs,
        kind=kind,
        batched=batched,
        atol=atol,
        rtol=rtol,
        allow_vmap=allow_vmap,
        columns=columns,
    )
