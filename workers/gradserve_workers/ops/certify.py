"""The certificate: every derivative answer checked by a second route before it leaves.

A first-order answer is checked on random unit projections ``u`` (output-shaped) and
``v`` (input-shaped) against the automatic-differentiation mode that did not make it:

=========  ==================================================================
grad       ``g·v`` against ``Jv`` by one jvp (forward mode)
vjp        ``w·v`` against ``cotangent·(Jv)`` by one jvp
jvp        ``u·t`` against ``(uᵀJ)·tangent`` by one vjp (reverse mode)
jacobian   ``uᵀJv`` against both ``u·(Jv)`` by jvp and ``(uᵀJ)·v`` by vjp
hessian    ``aᵀHb`` against ``bᵀHa`` (symmetry) and against ``(aᵀH)·b``
           reverse-over-reverse (``a·(Hb)`` forward-over-reverse when the
           Hessian itself ran reverse-over-reverse)
hvp        ``a·h`` against ``(aᵀH)·vector`` reverse-over-reverse
=========  ==================================================================

Every route is one product per point under at most one ``vmap`` over points:
never ``jacfwd`` or ``hessian`` under ``vmap`` (nested forward AD through
det/slogdet/solve is silently wrong under vmap in torch 2.13; single products are
right), so the routes that check are themselves trustworthy.

Two numbers ``a`` and ``b`` agree when ``|a - b| <= rtol * (scale + 1)``: ``scale``
is the sum of the magnitudes of the terms both sides add up (``Σ|uᵢ||(Jv)ᵢ|`` and
the like), so cancellation inside a sum does not make rounding look like disagreement,
and the ``+ 1`` (``u`` and ``v`` are unit vectors) makes derivatives smaller than
one compare absolutely. ``rtol`` is :func:`rtol_for` the dtype. A wrong derivative
is off by far more than rounding: torch's nested forward-AD bug by 1e4 to 1e8.

Pure torch: no Ray, no gRPC.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .._vmap import vmap_or_loop
from ..transforms import (
    Fn,
    as_scalar,
    bind_wrt,
    chunk_for,
    forward_ad_unsupported,
    jvp_of,
    measure,
    vjp_fn_of,
)
from .request import OpsRequest, OpsResult

__all__ = [
    "DEFAULT_OPS",
    "Certificate",
    "CertificateError",
    "certify",
    "default_verify",
    "describe",
    "rtol_for",
]

# Certified unless a caller says verify=False: a Hessian of at least
# DEFAULT_MIN_COLUMNS columns, the one place where the certificate's extra products
# measured under 15 % of the worker op (interleaved A/B medians of thread CPU time,
# benchmarks/certificate_cost.py; docs/sdk.md quotes the figures). Its fixed cost, a
# forward-mode pass through torch.func and a few reductions (0.4 to 1.5 ms), is 50 to
# 250 % of a gradient, vector product or Jacobian of these sizes on CPU. Everything
# else is certified on verify=True.
DEFAULT_OPS: frozenset[str] = frozenset({"hessian"})
DEFAULT_MIN_COLUMNS = 256
# ops a certificate has something to say about
_CERTIFIED = ("grad", "jacobian", "hessian", "vjp", "jvp", "hvp")
_SEED = 20261202


class CertificateError(Exception):
    """Two routes to the same derivative disagree: the answer is not returned.

    Deliberately not a ``ValueError``: it is the service's failure (or torch's), never
    the user's, and maps to gRPC ``INTERNAL``.
    """


@dataclass(frozen=True)
class Certificate:
    """What the certificate compared and how well the routes agreed.

    ``disagreement`` is the largest ``|a - b| / (scale + 1)`` over the checks and
    points (see the module doc); the answer passed because it is at most
    ``tolerance``. ``points`` counts the points compared: a point where either side
    is not finite (a derivative that is infinite there) is left out, and ``skipped``
    says why a check could not run at all.
    """

    checks: tuple[str, ...]
    disagreement: float
    tolerance: float
    points: int
    seconds: float
    skipped: tuple[str, ...] = ()


def default_verify(
    request: OpsRequest, result: OpsResult, inputs: Mapping[str, torch.Tensor]
) -> bool:
    """Whether an answer whose request left ``verify`` unset (``None``) is certified:
    one with an op of :data:`DEFAULT_OPS` (a Hessian) of at least
    :data:`DEFAULT_MIN_COLUMNS` columns."""
    if not any(op in result.outputs for op in DEFAULT_OPS):
        return False
    wrt = tuple(inputs) if request.wrt is None else request.wrt
    skip = 1 if request.batched else 0
    columns = sum(math.prod(inputs[w].shape[skip:]) for w in wrt)
    return columns >= DEFAULT_MIN_COLUMNS


def hessian_by_forward(result: OpsResult) -> bool:
    """Whether ``result``'s Hessian ran forward-over-reverse (``jacfwd`` of the
    gradient, the ops' direct transform), not rerouted to reverse-over-reverse (see
    ``OpsResult.routes``)."""
    return not any(route.startswith("hessian:") for route in result.routes)


def rtol_for(dtype: torch.dtype) -> float:
    """The agreement tolerance: ``64 * sqrt(eps)`` of the dtype (1e-6 for float64,
    2e-2 for float32): far above rounding, far below a wrong derivative."""
    return 64.0 * math.sqrt(torch.finfo(dtype).eps)


@dataclass(frozen=True)
class _Check:
    label: str
    diff: torch.Tensor  # (points,) |a - b|
    scale: torch.Tensor  # (points,)


def certify(
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    request: OpsRequest,
    result: OpsResult,
    *,
    name: str = "f",
) -> Certificate:
    """Certify ``result`` (from :func:`gradserve_workers.ops.compute` with ``request``).

    Raises :class:`CertificateError` naming the op, ``name``, the point and both
    numbers when two routes disagree beyond the tolerance.
    """
    started = time.perf_counter()
    ops = [op for op in _CERTIFIED if op in result.outputs]
    names = tuple(input_names)
    wrt = names if request.wrt is None else tuple(request.wrt)
    if not ops or not wrt:
        return Certificate((), 0.0, 0.0, 0, time.perf_counter() - started)
    wrt_idx = tuple(names.index(w) for w in wrt)
    batched = request.batched
    dtype = inputs[wrt[0]].dtype
    device = inputs[wrt[0]].device

    def lead(t: torch.Tensor) -> torch.Tensor:
        # everything below has a leading point dimension
        return t if batched else t.unsqueeze(0)

    args = [lead(inputs[n]) for n in names]
    n_points = int(args[0].shape[0]) if args else 1
    gen = torch.Generator().manual_seed(_SEED)
    out_shape = tuple(result.out_shape)

    def unit(shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        """Random tensors of ``shapes`` (each with the point dimension), jointly of
        norm one at every point."""
        parts = [torch.randn((n_points, *s), generator=gen, dtype=dtype).to(device) for s in shapes]
        norm = torch.stack([(p.reshape(n_points, -1) ** 2).sum(1) for p in parts]).sum(0).sqrt()
        norm = norm.clamp_min(torch.finfo(dtype).tiny)
        return [
            p / norm.reshape((n_points,) + (1,) * len(s))
            for p, s in zip(parts, shapes, strict=True)
        ]

    in_shapes = [tuple(args[i].shape[1:]) for i in wrt_idx]
    (u,) = unit([out_shape])
    v = unit(in_shapes)
    # a second projection for second-order answers only (random draws cost)
    a = unit(in_shapes) if "hessian" in ops or "hvp" in ops else v
    # each answer against the route that did not make it: a reverse Jacobian against
    # a jvp, a forward one against a vjp; a forward-over-reverse Hessian against a
    # reverse-over-reverse product and the other way round
    jac_forward = result.jacobian_mode == "forward"
    hess_forward = hessian_by_forward(result)
    want = {
        "jv": any(op in ops for op in ("grad", "vjp")) or ("jacobian" in ops and not jac_forward),
        "uj": "jvp" in ops or ("jacobian" in ops and jac_forward),
        "hb": "hessian" in ops and not hess_forward,
        "ah": "hvp" in ops or ("hessian" in ops and hess_forward),
    }
    skipped: list[str] = []
    products = _products(fn, args, wrt_idx, u, v, a, want, result.vmapped, skipped)
    outputs = {op: {k: lead(t) for k, t in by.items()} for op, by in result.outputs.items()}
    extras = _extras(request, wrt, lead)
    checks = _checks(ops, wrt, outputs, extras, u, v, a, products)

    rtol = rtol_for(dtype)
    worst = 0.0
    compared = torch.zeros(n_points, dtype=torch.bool, device=device)
    for check in checks:
        rel = check.diff / (check.scale + 1)
        finite = torch.isfinite(rel)
        compared |= finite
        if not bool(finite.any()):
            continue
        rel = torch.where(finite, rel, torch.zeros_like(rel))
        point = int(torch.argmax(rel))
        value = float(rel[point])
        if value > rtol:
            where = f" at point {point}" if batched else ""
            raise CertificateError(
                f"{'+'.join(ops)}({name}): the derivative certificate failed{where}: "
                f"{check.label}: the two sides differ by {float(check.diff[point]):.3e} "
                f"(relative {value:.3e}, tolerance {rtol:.1e} for {_dtype_name(dtype)}). "
                "The answer is withheld rather than returned wrong; this is a fault in the "
                "service or in torch, not in the request."
            )
        worst = max(worst, value)
    return Certificate(
        checks=tuple(c.label for c in checks),
        disagreement=worst,
        tolerance=rtol,
        points=int(compared.sum()),
        seconds=time.perf_counter() - started,
        skipped=tuple(skipped),
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _extras(
    request: OpsRequest, wrt: Sequence[str], lead: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if request.cotangent is not None:
        extras["cotangent"] = lead(request.cotangent)
    if request.tangents is not None:
        extras["tangents"] = [lead(request.tangents[w]) for w in wrt]
    if request.vector is not None:
        extras["vector"] = [lead(request.vector[w]) for w in wrt]
    return extras


def _products(
    fn: Fn,
    args: Sequence[torch.Tensor],
    wrt_idx: tuple[int, ...],
    u: torch.Tensor,
    v: Sequence[torch.Tensor],
    a: Sequence[torch.Tensor],
    want: dict[str, bool],
    allow_vmap: bool,
    skipped: list[str],
) -> dict[str, Any]:
    """The products the checks need, one pass each per point: ``jv`` = Jv (forward),
    ``uj`` = uᵀJ (reverse), ``hb`` = Hv (forward-over-reverse), ``ah`` = aᵀH
    (reverse-over-reverse). Forward products are dropped (and said in ``skipped``)
    for functions without forward-mode AD."""
    n_in = len(args)
    k = len(wrt_idx)

    def per_point(*xs: torch.Tensor) -> dict[str, Any]:
        point, uu, vv, aa = xs[:n_in], xs[n_in], xs[n_in + 1 : n_in + 1 + k], xs[n_in + 1 + k :]
        g = bind_wrt(fn, point, wrt_idx)
        primals = tuple(point[i] for i in wrt_idx)
        out: dict[str, Any] = {}
        if want["jv"]:
            out["jv"] = jvp_of(g, primals, tuple(vv))[1]
        if want["uj"]:
            out["uj"] = tuple(vjp_fn_of(g, *primals)[1](uu))
        if want["hb"] or want["ah"]:
            grad_g = torch.func.grad(as_scalar(g), tuple(range(k)))
            if want["hb"]:
                out["hb"] = tuple(jvp_of(grad_g, primals, tuple(vv))[1])
            if want["ah"]:
                out["ah"] = tuple(vjp_fn_of(grad_g, *primals)[1](tuple(aa)))
        return out

    all_args = [*args, u, *v, *a]
    try:
        return _map_points(fn, args, per_point, all_args, allow_vmap)
    except Exception as exc:
        if not forward_ad_unsupported(exc):
            raise
    skipped.append("forward-mode products: the function has no forward-mode AD")
    want = {**want, "jv": False, "hb": False}
    return _map_points(fn, args, per_point, all_args, allow_vmap)


def _map_points(
    fn: Fn,
    args: Sequence[torch.Tensor],
    per_point: Callable[..., dict[str, Any]],
    all_args: Sequence[torch.Tensor],
    allow_vmap: bool,
) -> dict[str, Any]:
    n_points = int(all_args[0].shape[0])
    in_dims = [0] * len(all_args)
    if n_points == 1:
        # one point (an unbatched call): no vmap to pay for
        out = per_point(*(t[0] for t in all_args))
        return dict(pytree.tree_map(lambda t: t.unsqueeze(0), out))
    chunk_size = None
    if allow_vmap:
        # a few copies of the function's largest intermediate per point mapped at once
        with torch.no_grad():
            _, peak = measure(fn, [t[0] for t in args])
        chunk_size = chunk_for(8 * peak, n_points)
    out, _ = vmap_or_loop(
        per_point, all_args, in_dims, allow_vmap=allow_vmap, chunk_size=chunk_size
    )
    return dict(out)


def _dot(
    xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point: ``Σ x·y`` and ``Σ |x||y|`` over matching tensors."""
    total = abs_total = None
    for x, y in zip(xs, ys, strict=True):
        xf, yf = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
        d, s = (xf * yf).sum(1), (xf.abs() * yf.abs()).sum(1)
        total = d if total is None else total + d
        abs_total = s if abs_total is None else abs_total + s
    assert total is not None and abs_total is not None
    return total, abs_total


def _apply(mats: Sequence[torch.Tensor], rights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per point: ``Σ M right`` over the blocks ``mats`` (one per ``rights``), flattened
    to ``(points, rows)``: one pass over each block, no copy of it."""
    p = rights[0].shape[0]
    total = None
    for m, r in zip(mats, rights, strict=True):
        rf = r.reshape(p, -1)
        prod = torch.matmul(m.reshape(p, -1, rf.shape[1]), rf.unsqueeze(-1)).squeeze(-1)
        total = prod if total is None else total + prod
    assert total is not None
    return total


def _agree(
    label: str, left: tuple[torch.Tensor, torch.Tensor], right: tuple[torch.Tensor, torch.Tensor]
) -> _Check:
    return _Check(label, (left[0] - right[0]).abs(), torch.maximum(left[1], right[1]))


def _checks(
    ops: Sequence[str],
    wrt: Sequence[str],
    outputs: Mapping[str, Mapping[str, torch.Tensor]],
    extras: Mapping[str, Any],
    u: torch.Tensor,
    v: Sequence[torch.Tensor],
    a: Sequence[torch.Tensor],
    products: Mapping[str, Any],
) -> list[_Check]:
    checks: list[_Check] = []
    jv, uj = products.get("jv"), products.get("uj")
    if "grad" in ops and jv is not None:
        grads = [outputs["grad"][w] for w in wrt]
        checks.append(
            _agree("grad·v against jvp", _dot(grads, v), _dot([torch.ones_like(jv)], [jv]))
        )
    if "vjp" in ops and jv is not None:
        w_ans = [outputs["vjp"][w] for w in wrt]
        checks.append(
            _agree("vjp·v against cotangent·jvp", _dot(w_ans, v), _dot([extras["cotangent"]], [jv]))
        )
    if "jvp" in ops and uj is not None:
        t_ans = outputs["jvp"][""]
        checks.append(
            _agree("u·jvp against vjp·tangent", _dot([u], [t_ans]), _dot(uj, extras["tangents"]))
        )
    if "jacobian" in ops:
        answer = _dot([u], [_apply([outputs["jacobian"][w] for w in wrt], v)])
        if jv is not None:
            checks.append(_agree("uᵀJv against u·jvp (forward)", answer, _dot([u], [jv])))
        if uj is not None:
            checks.append(_agree("uᵀJv against vjp·v (reverse)", answer, _dot(uj, v)))
    ah = products.get("ah")
    if "hessian" in ops:
        hess = outputs["hessian"]
        blocks = [[hess[f"{x},{y}"] for y in wrt] for x in wrt]
        n = len(wrt)
        hv = [_apply(blocks[i], v) for i in range(n)]  # H b, by row blocks
        ha = [_apply(blocks[i], a) for i in range(n)]  # H a
        answer = _dot(a, hv)
        # symmetry on a random projection: aᵀHb = bᵀHa for a symmetric H
        checks.append(_agree("aᵀHb against bᵀHa (symmetry)", answer, _dot(v, ha)))
        hb = products.get("hb")
        if hb is not None:
            checks.append(_agree("aᵀHb against a·hvp (forward-over-reverse)", answer, _dot(a, hb)))
        if ah is not None:
            checks.append(
                _agree("aᵀHb against vjp(grad)·b (reverse-over-reverse)", answer, _dot(ah, v))
            )
    if "hvp" in ops and ah is not None:
        h_ans = [outputs["hvp"][w] for w in wrt]
        checks.append(
            _agree(
                "a·hvp against vjp(grad)·vector (reverse-over-reverse)",
                _dot(a, h_ans),
                _dot(ah, extras["vector"]),
            )
        )
    return checks


def describe(fn: Fn) -> str:
    """How an error names the function: its ``def`` name, or its source (shortened)."""
    program = getattr(fn, "program", None)
    name = getattr(program, "name", None)
    if isinstance(name, str) and name:
        return name
    source = getattr(program, "source", None)
    if isinstance(source, str) and source.strip():
        text = " ".join(source.split())
        return repr(text if len(text) <= 60 else text[:57] + "...")
    return getattr(fn, "__name__", "f")
