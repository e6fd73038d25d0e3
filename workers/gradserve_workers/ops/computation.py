"""Answer one :class:`~gradserve_workers.ops.OpsRequest`: plan it, measure the function
at the first point, size the chunks, map the per-point ops over the points (``vmap``,
or a loop for data-dependent control flow), find unconnected inputs, shape the
results and, when asked, certify them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .. import transforms
from .._vmap import is_data_dependent_error, vmap_or_loop
from ..transforms import Fn, bind_wrt, choose_jacobian_mode, chunk_for, measure
from .certify import certify, default_verify, describe
from .connectivity import find_unconnected, zero_or_unused
from .plan import Plan, check_finite, check_output, extra_args, first_point, plan_for
from .point import point_ops
from .request import DERIVATIVE_OPS, OpsRequest, OpsResult
from .routing import plan_routes

# ops answered at one point by plain autograd, without torch.func
_GRAD_ONLY = frozenset({"value", "grad"})


def compute(
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    request: OpsRequest,
    *,
    detect_unconnected: bool = True,
    route: bool = True,
) -> OpsResult:
    """Compute the ops of ``request`` for ``fn`` at ``inputs``.

    Inputs not in ``request.wrt`` are held constant. Computations run in the inputs'
    dtype. A function with data-dependent control flow is run point by point when
    ``vmap`` refuses it (``result.vmapped`` is then ``False``; the caller may cache
    that and pass ``allow_vmap=False`` next time).

    With ``request.verify`` (``None``: where that is cheap, see
    :func:`~gradserve_workers.ops.certify.default_verify`) the answer is checked by a
    second route before it is returned (``result.certificate``; see
    :mod:`gradserve_workers.ops.certify`), and a disagreement raises
    :class:`~gradserve_workers.ops.CertificateError`.

    ``detect_unconnected=False`` skips the connectivity probe (``unconnected`` is then
    empty), for callers that do not report it. ``route=False`` runs every transform
    directly, even where it is known to be wrong: for the conformance tests that watch
    whether a route is still needed.

    Raises :class:`OpsError` (a ``ValueError``) for a request that cannot be answered,
    e.g. ``grad`` of a non-scalar function, and :class:`NonFiniteInputError` when an
    input holds NaN or Inf. Exceptions raised by ``fn`` itself propagate unchanged.

    The gradient of ``2 * dot(x, x)`` is ``4 * x``; ``value`` comes from the same pass:

    >>> x = torch.tensor([1.0, 2.0, 3.0])
    >>> r = compute(lambda x: 2 * torch.dot(x, x), ["x"], {"x": x},
    ...             OpsRequest(ops=("value", "grad")))
    >>> r.outputs["value"][""].item(), r.outputs["grad"]["x"].tolist()
    (28.0, [4.0, 8.0, 12.0])

    The Jacobian of ``x * x`` is ``diag(2x)``; its Hessian-free cousin, the vjp with
    ones, is the gradient of ``sum(x * x)``:

    >>> r = compute(lambda x: x * x, ["x"], {"x": x},
    ...             OpsRequest(ops=("jacobian", "vjp"), cotangent=torch.ones(3)))
    >>> torch.equal(r.outputs["jacobian"]["x"], torch.diag(2 * x)), r.jacobian_mode
    (True, 'reverse')
    >>> r.outputs["vjp"]["x"].tolist()
    [2.0, 4.0, 6.0]

    Hessians come per ordered pair of inputs; ``y`` below is unconnected:

    >>> r = compute(lambda x, y: (x ** 3).sum() + 0 * y.sum(), ["x", "y"],
    ...             {"x": x, "y": torch.tensor(1.0)}, OpsRequest(ops=("hessian",)))
    >>> r.outputs["hessian"]["x,x"].tolist()
    [[6.0, 0.0, 0.0], [0.0, 12.0, 0.0], [0.0, 0.0, 18.0]]
    >>> r.outputs["hessian"]["x,y"].shape, r.unconnected
    (torch.Size([3]), ('y',))

    Batched, with data-dependent control flow (falls back to a per-point loop):

    >>> def f(a):
    ...     return a * 2 if a.sum() > 0 else a * 3
    >>> r = compute(f, ["a"], {"a": torch.tensor([[1.0], [-1.0]])},
    ...             OpsRequest(ops=("jacobian",), batched=True))
    >>> r.outputs["jacobian"]["a"].reshape(2).tolist(), r.vmapped
    ([2.0, 3.0], False)

    A vector-valued function has no gradient:

    >>> compute(lambda x: x * x, ["x"], {"x": x}, OpsRequest(ops=("grad",)))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gradserve_workers.ops.OpsError: grad(f): f returns shape (3,), not a scalar. ...
    """
    plan = plan_for(input_names, inputs, request)
    check_finite(plan.call, plan.names, inputs, plan.batched, request.first_point)
    first = [first_point(inputs[n], plan.batched) for n in plan.names]
    if not plan.batched and "grad" in plan.ops and _GRAD_ONLY.issuperset(plan.ops):
        result = _unbatched_grad(fn, plan, first, request, detect_unconnected)
    else:
        result = _mapped(fn, plan, inputs, first, request, detect_unconnected, route)
    _materialize_zeros(result)
    verify = request.verify
    if verify is None:
        verify = default_verify(request, result, inputs)
    if verify:
        result.certificate = certify(fn, input_names, inputs, request, result, name=describe(fn))
    return result


def _mapped(
    fn: Fn,
    plan: Plan,
    inputs: Mapping[str, torch.Tensor],
    first: Sequence[torch.Tensor],
    request: OpsRequest,
    detect_unconnected: bool,
    route: bool,
) -> OpsResult:
    """The ops mapped over the points: the general path."""
    ops = plan.ops
    needs_grad = any(op in DERIVATIVE_OPS for op in ops)
    # grad and jacobian say themselves whether an input's derivative vanishes at the
    # first point; other ops need the probe's extra backward pass for that
    probe = needs_grad and detect_unconnected and "grad" not in ops and "jacobian" not in ops
    if probe:
        out0, flags0, peak = zero_or_unused(fn, plan, first, torch.Generator().manual_seed(0))
    else:
        with torch.no_grad():
            out0, peak = measure(fn, first)
        flags0 = []
    out_shape = tuple(int(s) for s in out0.shape)
    check_output(plan, out0, needs_grad)

    in_numel = sum(first[i].numel() for i in plan.wrt_idx)
    if request.reply_budget is not None:
        request.reply_budget.check(plan.call, ops, out0.numel(), in_numel)
    jac_mode = (
        choose_jacobian_mode(request.jacobian_mode, out0.numel(), in_numel)
        if "jacobian" in ops
        else None
    )
    routes = plan_routes(fn, ops, jac_mode, plan.batched) if route else {}
    if "jacobian" in routes:
        jac_mode = "reverse"
    reverse_hessian = "hessian" in routes
    inner, outer = _chunks(ops, request, peak, in_numel, out0.numel(), jac_mode, plan, first)

    extras = extra_args(plan, request, first, out_shape, out0.dtype)
    has_cot, n_tan, n_vec = extras.cotangent, extras.n_tangents, extras.n_vector
    n_in = len(plan.names)
    notes: list[str] = []

    def per_point(*args: torch.Tensor, vmap_ok: bool = True) -> dict[str, Any]:
        point = args[:n_in]
        rest = list(args[n_in:])
        cot = rest.pop(0) if has_cot else None
        tan = tuple(rest[:n_tan]) if n_tan else None
        vec = tuple(rest[n_tan : n_tan + n_vec]) if n_vec else None
        g = bind_wrt(fn, point, plan.wrt_idx)
        primals = tuple(point[i] for i in plan.wrt_idx)
        return point_ops(
            g,
            primals,
            ops,
            jac_mode=jac_mode or "reverse",
            reverse_hessian=reverse_hessian,
            chunk_size=inner,
            cotangent=cot,
            tangents=tan,
            vector=vec,
            vmap_ok=vmap_ok,
            notes=notes,
        )

    def per_point_loop(*args: torch.Tensor) -> dict[str, Any]:
        return per_point(*args, vmap_ok=False)

    all_args = [inputs[n] for n in plan.names] + list(extras.tensors)
    res, vmapped = _run_points(
        per_point, per_point_loop, all_args, plan.batched, request.allow_vmap, outer
    )

    found: tuple[str, ...] = ()
    if needs_grad and detect_unconnected:
        if not probe:
            derived = res["grad"] if "grad" in ops else res["jacobian"]
            flags0 = [not bool(first_point(t, plan.batched).any()) for t in derived]
        found = find_unconnected(
            fn, plan, inputs, first, flags0, out_shape, out0.dtype, request.allow_vmap and vmapped
        )

    outputs = _outputs(res, plan, out_shape, first)
    if jac_mode == "forward" and "reverse" in notes:
        jac_mode = "reverse"
    return OpsResult(
        outputs=outputs,
        vmapped=vmapped,
        unconnected=found,
        jacobian_mode=jac_mode,
        out_shape=out_shape,
        routes=tuple(routes[op] for op in ops if op in routes),
    )


def _run_points(
    per_point: Callable[..., dict[str, Any]],
    per_point_loop: Callable[..., dict[str, Any]],
    all_args: Sequence[torch.Tensor],
    batched: bool,
    allow_vmap: bool,
    chunk_size: int | None,
) -> tuple[dict[str, Any], bool]:
    """``per_point`` over the points (``vmap``; at one unbatched point, with vmap inside
    its transforms), or ``per_point_loop`` (without) when the function has
    data-dependent control flow; and whether ``vmap`` ran."""
    if batched:
        res, vmapped = vmap_or_loop(
            per_point,
            all_args,
            [0] * len(all_args),
            allow_vmap=allow_vmap,
            chunk_size=chunk_size,
            loop_f=per_point_loop,
        )
        return dict(res), vmapped
    if allow_vmap:
        try:
            return per_point(*all_args), True
        except Exception as exc:
            if not is_data_dependent_error(exc):
                raise
    return per_point_loop(*all_args), False


def _outputs(
    res: dict[str, Any], plan: Plan, out_shape: tuple[int, ...], first: Sequence[torch.Tensor]
) -> dict[str, dict[str, torch.Tensor]]:
    """The per-point results keyed as :class:`OpsResult` says, in their full shapes."""
    lead = (plan.n_points,) if plan.batched else ()
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for op in plan.ops:
        if op == "value":
            outputs[op] = {"": res["value"].reshape(lead + out_shape)}
        elif op == "jvp":
            outputs[op] = {"": res["jvp"].reshape(lead + out_shape)}
        elif op == "hessian":
            hess = res["hessian"]
            outputs[op] = {
                f"{a},{b}": hess[i][j]
                for i, a in enumerate(plan.wrt)
                for j, b in enumerate(plan.wrt)
            }
        else:  # grad, jacobian, vjp, hvp: one tensor per wrt input
            outputs[op] = {w: res[op][i] for i, w in enumerate(plan.wrt)}
    if "jacobian" in outputs:
        for i, w in zip(plan.wrt_idx, plan.wrt, strict=True):
            shape = lead + out_shape + tuple(first[i].shape)
            outputs["jacobian"][w] = outputs["jacobian"][w].reshape(shape)
    return outputs


def _unbatched_grad(
    fn: Fn,
    plan: Plan,
    first: Sequence[torch.Tensor],
    request: OpsRequest,
    detect_unconnected: bool,
) -> OpsResult:
    """``grad`` (and ``value``) at one point: one forward and one backward pass with
    plain autograd, whose result also says which inputs have a zero derivative."""
    with torch.enable_grad():
        leaves = [first[i].detach().requires_grad_(True) for i in plan.wrt_idx]
        out = bind_wrt(fn, first, plan.wrt_idx)(*leaves)
        check_output(plan, out, True)
        found: Sequence[torch.Tensor | None] = (None,) * len(leaves)
        if out.requires_grad:
            found = torch.autograd.grad(out.reshape(()), leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(found, leaves, strict=True)]
    value = out.detach()
    out_shape = tuple(int(s) for s in value.shape)
    unconnected: tuple[str, ...] = ()
    if detect_unconnected:
        flags0 = [g is None or not bool(g.any()) for g in found]
        if any(flags0):
            inputs = dict(zip(plan.names, first, strict=True))
            unconnected = find_unconnected(
                fn, plan, inputs, first, flags0, out_shape, value.dtype, request.allow_vmap
            )
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for op in plan.ops:
        if op == "value":
            outputs[op] = {"": value}
        else:
            outputs[op] = {w: g.detach() for w, g in zip(plan.wrt, grads, strict=True)}
    return OpsResult(
        outputs=outputs,
        vmapped=request.allow_vmap,
        unconnected=unconnected,
        jacobian_mode=None,
        out_shape=out_shape,
    )


def _chunks(
    ops: tuple[str, ...],
    request: OpsRequest,
    peak: int,
    in_numel: int,
    out_numel: int,
    jac_mode: str | None,
    plan: Plan,
    first: Sequence[torch.Tensor],
) -> tuple[int | None, int | None]:
    """(Jacobian/Hessian columns, points) to map at once, from the function's largest
    intermediate ``peak``: derivatives hold a few copies of it, and a Jacobian or
    Hessian one per column mapped together."""
    columns = 0
    if "jacobian" in ops:
        # forward mode falls back to reverse without forward AD: size for the larger
        columns = max(in_numel, out_numel) if jac_mode == "forward" else out_numel
    if "hessian" in ops:
        columns = max(columns, in_numel)
    inner = request.chunk_size
    if inner is None and columns:
        inner = chunk_for(3 * peak, columns)
    factor = 1
    if any(op in ops for op in ("grad", "vjp", "jvp")):
        factor = 3
    if "hvp" in ops:
        factor = 6
    if columns:
        factor = max(factor, 3 * min(columns, inner or columns))
    if not plan.batched:
        return inner, None
    limit = transforms.BATCH_ELEMENTS
    # cache-sized pieces where many points fit one: a point too large for that gains
    # nothing from them, and many pieces of large intermediates grow glibc's heap by
    # one freed intermediate each while the small results stay alive between them
    # (sum(outer(x, x)) at 2,000 inputs, one point a piece: 1.47 GB against 0.60)
    on_cpu = all(t.device.type == "cpu" for t in first)
    if on_cpu and peak * factor * transforms.CPU_MIN_POINTS <= transforms.CPU_BATCH_ELEMENTS:
        limit = min(limit, transforms.CPU_BATCH_ELEMENTS)
    return inner, chunk_for(peak * factor, plan.n_points, limit)


def _materialize_zeros(result: OpsResult) -> None:
    """Replace torch's lazy ``ZeroTensor`` results (a batched hvp of a function whose
    second derivative vanishes, e.g. ``sum(abs(x))``) by real zeros: nothing
    downstream (numpy, the wire) can read them."""
    for by_key in result.outputs.values():
        for key, t in by_key.items():
            if t._is_zerotensor():
                by_key[key] = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
