"""Private implementation of :mod:`gradserve_workers.ops`.

Everything here is pure torch: no Ray, no gRPC. The public names are re-exported by
``ops``; import them from there.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from ._vmap import is_data_dependent_error, loop_map, vmap_or_loop
from .lang.compile import CompiledFunction
from .lang.routes import ROUTES, unsafe_transforms
from .replies import ReplyBudget
from .transforms import (
    Fn,
    as_scalar,
    bind_wrt,
    choose_jacobian_mode,
    chunk_for,
    forward_ad_unsupported,
    jacfwd_chunked,
    jvp_of,
    measure,
    vjp_fn_of,
)

OPS = ("value", "grad", "jacobian", "hessian", "vjp", "jvp", "hvp")
JACOBIAN_MODES = ("auto", "forward", "reverse")
_DERIVATIVE_OPS = frozenset(OPS) - {"value"}
_SCALAR_OPS = ("grad", "hessian", "hvp")


class OpsError(ValueError):
    """A request that cannot be computed as asked; the message starts with the call form."""


class NonFiniteInputError(OpsError):
    """An input holds NaN or Inf; the message names the input and the first bad element."""


@dataclass(frozen=True)
class OpsRequest:
    """Which derivatives to compute, with respect to which inputs, and how.

    ``cotangent`` (vjp) has the output's shape; ``tangents`` (jvp) and ``vector`` (hvp)
    map each ``wrt`` input to a tensor of that input's shape. With ``batched=True``
    every one of them has the leading batch dimension too.
    """

    ops: tuple[str, ...]
    wrt: tuple[str, ...] | None = None
    batched: bool = False
    jacobian_mode: str = "auto"
    chunk_size: int | None = None
    cotangent: torch.Tensor | None = None
    tangents: dict[str, torch.Tensor] | None = None
    vector: dict[str, torch.Tensor] | None = None
    allow_vmap: bool = True
    # checked once the output's shape is known, before any derivative is computed
    reply_budget: ReplyBudget | None = None
    # check the answer by a second route (gradserve_workers.certify) before returning
    # it; None: where that is cheap (certify.default_verify)
    verify: bool | None = False


@dataclass
class OpsResult:
    """What :func:`compute` returns.

    ``outputs[op][key]``: ``value`` and ``jvp`` use the key ``""``; ``grad``,
    ``jacobian``, ``vjp`` and ``hvp`` use the input name; ``hessian`` uses ``"a,b"``
    for every ordered pair of ``wrt`` inputs. Batched results have a leading point
    dimension. ``vmapped`` is ``False`` when the per-point loop ran (the function has
    data-dependent control flow, or ``allow_vmap=False``). ``unconnected`` lists the
    ``wrt`` inputs the output does not depend on (their derivatives are zeros).
    ``routes`` says which operations ran by a safe strategy instead of the direct
    transform, because the function calls a function for which that transform is
    wrong under this torch (see ``lang.routes.ROUTES``): one ``"op: strategy (direct
    transform is unsafe for f, g)"`` per rerouted operation; empty when everything ran
    directly.
    """

    outputs: dict[str, dict[str, torch.Tensor]]
    vmapped: bool
    unconnected: tuple[str, ...]
    jacobian_mode: str | None
    out_shape: tuple[int, ...]
    routes: tuple[str, ...] = ()
    # a gradserve_workers.certify.Certificate when the request asked to verify
    certificate: Any = None

    @property
    def strategy(self) -> str:
        """``"direct"``, or ``"rerouted"`` when some operation took a safe route."""
        return "rerouted" if self.routes else "direct"


# ---------------------------------------------------------------------------
# validation


def call_form(ops: Sequence[str]) -> str:
    """``grad(f)`` for one op, ``value+grad(f)`` for several."""
    return f"{'+'.join(ops) if ops else 'compute'}(f)"


def _fmt_index(idx: Sequence[int]) -> str:
    return "[" + ", ".join(str(i) for i in idx) + "]"


def _first_non_finite(t: torch.Tensor) -> tuple[tuple[int, ...], str] | None:
    if t.is_floating_point():
        # one reduction: a finite sum has no NaN/Inf term (a sum that overflows is
        # looked at element by element below)
        if math.isfinite(float(t.sum())):
            return None
    elif not t.is_complex():
        return None
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), t.shape)) if t.ndim else ()
    value = t.reshape(-1)[flat]
    kind = "NaN" if bool(torch.isnan(value)) else "Inf"
    return idx, kind


def check_finite(
    call: str, input_names: Sequence[str], inputs: Mapping[str, torch.Tensor], batched: bool
) -> None:
    """Raise :class:`NonFiniteInputError` naming the first NaN/Inf element of any input."""
    for name in input_names:
        found = _first_non_finite(inputs[name])
        if found is None:
            continue
        idx, kind = found
        if batched and idx:
            where = f"at point {idx[0]}" + (f", element {_fmt_index(idx[1:])}" if idx[1:] else "")
        elif idx:
            where = f"at element {_fmt_index(idx)}"
        else:
            where = "(a scalar)"
        raise NonFiniteInputError(
            f"{call}: input '{name}' contains {kind} {where}; derivatives of non-finite "
            "inputs are not computed. Remove or replace the non-finite values."
        )


@dataclass(frozen=True)
class _Plan:
    ops: tuple[str, ...]
    names: tuple[str, ...]
    wrt: tuple[str, ...]
    wrt_idx: tuple[int, ...]
    batched: bool
    n_points: int
    call: str


def _plan(input_names: Sequence[str], inputs: Mapping[str, torch.Tensor], req: OpsRequest) -> _Plan:
    ops_list: list[str] = []
    for op in req.ops:
        if op not in OPS:
            raise OpsError(f"{call_form(req.ops)}: unknown op '{op}'; known ops: {', '.join(OPS)}")
        if op not in ops_list:
            ops_list.append(op)
    ops = tuple(ops_list)
    call = call_form(ops)
    if not ops:
        raise OpsError(f"{call}: no ops requested; choose from {', '.join(OPS)}")
    if req.jacobian_mode not in JACOBIAN_MODES:
        raise OpsError(
            f"{call}: jacobian_mode must be one of {', '.join(JACOBIAN_MODES)}, "
            f"not {req.jacobian_mode!r}"
        )
    if req.chunk_size is not None and (not isinstance(req.chunk_size, int) or req.chunk_size < 1):
        raise OpsError(f"{call}: chunk_size must be a positive integer, not {req.chunk_size!r}")
    names = tuple(input_names)
    if len(set(names)) != len(names):
        raise OpsError(f"{call}: input names repeat: {list(names)}")
    missing = [n for n in names if n not in inputs]
    if missing:
        raise OpsError(f"{call}: missing input(s) {', '.join(missing)}")
    extra = [n for n in inputs if n not in names]
    if extra:
        raise OpsError(f"{call}: unknown input(s) {', '.join(extra)}; f takes {', '.join(names)}")
    for n in names:
        if not isinstance(inputs[n], torch.Tensor):
            raise OpsError(f"{call}: input '{n}' is a {type(inputs[n]).__name__}, not a tensor")
    wrt = names if req.wrt is None else tuple(req.wrt)
    unknown = [w for w in wrt if w not in names]
    if unknown:
        raise OpsError(
            f"{call}: wrt names unknown input(s) {', '.join(unknown)}; "
            f"f takes {', '.join(names) or 'no inputs'}"
        )
    if len(set(wrt)) != len(wrt):
        raise OpsError(f"{call}: wrt repeats an input: {list(wrt)}")
    if any(op in _DERIVATIVE_OPS for op in ops):
        if not wrt:
            raise OpsError(f"{call}: no inputs to differentiate with respect to")
        for w in wrt:
            if not inputs[w].is_floating_point():
                raise OpsError(
                    f"{call}: input '{w}' has dtype {inputs[w].dtype}; derivatives need "
                    "float32 or float64 inputs"
                )
    n_points = 1
    if req.batched:
        sizes = set()
        for n in names:
            if inputs[n].ndim == 0:
                raise OpsError(
                    f"{call}: batched=True but input '{n}' is a scalar; its leading "
                    "dimension must index the points"
                )
            sizes.add(int(inputs[n].shape[0]))
        if len(sizes) > 1:
            raise OpsError(
                f"{call}: batched inputs disagree on the number of points: "
                + ", ".join(f"{n}: {inputs[n].shape[0]}" for n in names)
            )
        n_points = sizes.pop() if sizes else 0
        if n_points == 0:
            raise OpsError(f"{call}: batched=True with no points (leading dimension 0)")
    return _Plan(
        ops=ops,
        names=names,
        wrt=wrt,
        wrt_idx=tuple(names.index(w) for w in wrt),
        batched=req.batched,
        n_points=n_points,
        call=call,
    )


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _scalar_message(op: str, out_shape: tuple[int, ...]) -> str:
    head = f"{op}(f): f returns shape {_shape_str(out_shape)}, not a scalar."
    if op == "grad":
        return (
            f"{head} The gradient of a vector-valued y is the gradient of sum(y), i.e. the "
            "vjp with a cotangent of ones: use jacobian(...) for the full matrix, or "
            "vjp(..., cotangent=ones) / write sum(...) in the function."
        )
    if op == "hessian":
        return (
            f"{head} The Hessian is defined for scalar functions: write sum(...) (or pick "
            "one output) in the function, or use jacobian(...) for first derivatives."
        )
    return (
        f"{head} The Hessian-vector product needs a scalar function: write sum(...) in "
        "the function, or use jvp/vjp for first-order products."
    )


# ---------------------------------------------------------------------------
# per-point computations


def _point_ops(
    g: Fn,
    primals: tuple[torch.Tensor, ...],
    ops: tuple[str, ...],
    *,
    jac_mode: str,
    reverse_hessian: bool,
    chunk_size: int | None,
    cotangent: torch.Tensor | None,
    tangents: tuple[torch.Tensor, ...] | None,
    vector: tuple[torch.Tensor, ...] | None,
    vmap_ok: bool,
    notes: list[str],
) -> dict[str, Any]:
    """Every requested op at one point, sharing work; ``value`` is always included.

    Functions without forward-mode AD (a custom ``autograd.Function`` with no ``jvp``)
    get reverse mode instead; a forward Jacobian that fell back appends ``"reverse"``
    to ``notes``. ``reverse_hessian`` computes the Hessian reverse-over-reverse from
    the start (the route around functions whose nested forward mode is wrong).
    """
    res: dict[str, Any] = {}
    argnums = tuple(range(len(primals)))
    value: torch.Tensor | None = None
    grads: Any = None
    gs = as_scalar(g)

    if "hessian" in ops:

        def grad_aux(*w: torch.Tensor) -> Any:
            gr, v = torch.func.grad_and_value(gs, argnums)(*w)
            return gr, (gr, v)

        hess = None
        if not reverse_hessian:
            try:
                hess, _, (grads, value) = jacfwd_chunked(
                    grad_aux, primals, has_aux=True, vmap_ok=vmap_ok, chunk_size=chunk_size
                )
            except Exception as exc:
                if not forward_ad_unsupported(exc):
                    raise
        if hess is None:
            # reverse-over-reverse: for functions without forward-mode AD, and the route
            # around functions whose nested forward mode is wrong
            hess, (grads, value) = torch.func.jacrev(
                grad_aux, argnums, has_aux=True, chunk_size=chunk_size if vmap_ok else 1
            )(*primals)
        res["hessian"] = hess
    if "hvp" in ops:
        assert vector is not None

        def grad_v(*w: torch.Tensor) -> Any:
            return torch.func.grad_and_value(gs, argnums)(*w)

        try:
            (grads, value), (hv, _) = jvp_of(grad_v, primals, vector)
        except Exception as exc:
            if not forward_ad_unsupported(exc):
                raise
            # reverse-over-reverse: Hᵀv, equal to Hv for a symmetric Hessian
            grads, hvp_fn, value = cast(
                tuple[Any, Callable[..., Any], Any],
                torch.func.vjp(grad_v, *primals, has_aux=True),
            )
            hv = hvp_fn(vector)
        res["hvp"] = hv
    if "jacobian" in ops:

        def g_aux(*w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            o = g(*w)
            return o, o

        jac = None
        if jac_mode == "forward":
            try:
                jac, value, _ = jacfwd_chunked(g, primals, vmap_ok=vmap_ok, chunk_size=chunk_size)
            except Exception as exc:
                if not forward_ad_unsupported(exc):
                    raise
                notes.append("reverse")
        if jac is None:
            jac, value = torch.func.jacrev(
                g_aux, argnums, has_aux=True, chunk_size=chunk_size if vmap_ok else 1
            )(*primals)
        res["jacobian"] = jac
    if "vjp" in ops:
        assert cotangent is not None
        value, vjp_fn = vjp_fn_of(g, *primals)
        res["vjp"] = vjp_fn(cotangent)
    if "jvp" in ops:
        assert tangents is not None
        value, res["jvp"] = jvp_of(g, primals, tangents)
    if "grad" in ops:
        if grads is None:
            grads, value = torch.func.grad_and_value(gs, argnums)(*primals)
        res["grad"] = grads
    if value is None:
        value = g(*primals)
    res["value"] = value
    return res


# ---------------------------------------------------------------------------
# the probe: output shape, scalar checks and structural connectivity at one point


def _point(t: torch.Tensor, batched: bool, i: int = 0) -> torch.Tensor:
    return t[i] if batched else t


def _zero_or_unused(
    fn: Fn,
    plan: _Plan,
    point: Sequence[torch.Tensor],
    gen: torch.Generator,
) -> tuple[torch.Tensor, list[bool], int]:
    """Evaluate ``fn`` at ``point`` with autograd: the output; per wrt input, is its
    derivative (along a random cotangent) absent or exactly zero; and the call's
    largest intermediate (see :func:`measure`)."""
    with torch.enable_grad():
        args = list(point)
        for i in plan.wrt_idx:
            args[i] = point[i].detach().clone().requires_grad_(True)
        leaves = [args[i] for i in plan.wrt_idx]
        out, peak = measure(fn, args)
        if not (out.requires_grad and out.is_floating_point()):
            return out.detach(), [True] * len(leaves), peak
        v = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
        grads = torch.autograd.grad(out, leaves, grad_outputs=v, allow_unused=True)
    flags = [gr is None or not bool((gr != 0).any()) for gr in grads]
    return out.detach(), flags, peak


def _perturbed(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
    return t + 0.5 * (1 + t.abs()) * noise


def _unconnected(
    fn: Fn,
    plan: _Plan,
    inputs: Mapping[str, torch.Tensor],
    first: Sequence[torch.Tensor],
    flags0: list[bool],
    out_shape: tuple[int, ...],
    out_dtype: torch.dtype,
    allow_vmap: bool,
) -> tuple[str, ...]:
    """Which wrt inputs the output does not depend on.

    An input is unconnected when autograd finds no path from it to the output, or its
    derivative (along a random cotangent) is exactly zero at every point and at a
    random probe point near the first one: no dependence detected. An input seen
    with a nonzero derivative by an earlier call (same function, wrt, input shapes
    and dtypes) is connected without probing again.
    """
    cand = [w for w, flag in zip(plan.wrt, flags0, strict=True) if flag]
    if not cand:
        return ()
    key = _witness_key(fn, plan, first)
    seen = _witnessed(key)
    if seen is not None:
        cand = [w for w in cand if w not in seen]
        if not cand:
            return ()
    found = _probe_unconnected(fn, plan, inputs, first, cand, out_shape, out_dtype, allow_vmap)
    if key is not None:
        _witness(key, [w for w in plan.wrt if w not in found])
    return found


# Inputs seen to influence the output (a nonzero derivative at some point), per
# function, wrt, input shapes and dtypes: such an input is connected wherever the
# next call evaluates it, so the probe is not run for it again. Compiled functions
# are keyed by their source hash (bounded), other callables weakly by identity.
_WITNESS_SIZE = 1024
_witness_by_hash: OrderedDict[tuple[Any, ...], frozenset[str]] = OrderedDict()
_witness_by_fn: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)


def _witness_key(fn: Fn, plan: _Plan, first: Sequence[torch.Tensor]) -> tuple[Any, ...] | None:
    sig = (plan.names, plan.wrt, tuple((tuple(t.shape), t.dtype, t.device) for t in first))
    source_hash = getattr(getattr(fn, "program", None), "source_hash", None)
    if isinstance(source_hash, str):
        return ("hash", source_hash, sig)
    try:
        weakref.ref(fn)
    except TypeError:
        return None
    return ("fn", fn, sig)


def _witnessed(key: tuple[Any, ...] | None) -> frozenset[str] | None:
    if key is None:
        return None
    if key[0] == "hash":
        return _witness_by_hash.get(key[1:])
    per_fn = _witness_by_fn.get(key[1])
    return None if per_fn is None else per_fn.get(key[2])


def _witness(key: tuple[Any, ...], connected: Sequence[str]) -> None:
    if not connected:
        return
    if key[0] == "hash":
        k = key[1:]
        _witness_by_hash[k] = _witness_by_hash.get(k, frozenset()) | frozenset(connected)
        _witness_by_hash.move_to_end(k)
        if len(_witness_by_hash) > _WITNESS_SIZE:
            _witness_by_hash.popitem(last=False)
        return
    per_fn = _witness_by_fn.setdefault(key[1], {})
    per_fn[key[2]] = per_fn.get(key[2], frozenset()) | frozenset(connected)


def _probe_unconnected(
    fn: Fn,
    plan: _Plan,
    inputs: Mapping[str, torch.Tensor],
    first: Sequence[torch.Tensor],
    cand: list[str],
    out_shape: tuple[int, ...],
    out_dtype: torch.dtype,
    allow_vmap: bool,
) -> tuple[str, ...]:
    """Which of the candidates ``cand`` (zero derivative at the first point) are
    unconnected: zero at a random probe point near the first one and at every point."""
    gen = torch.Generator().manual_seed(1)
    probe = list(first)
    for i in plan.wrt_idx:
        probe[i] = _perturbed(probe[i], gen)
    _, flags1, _ = _zero_or_unused(fn, plan, probe, gen)
    cand = [w for w, flag in zip(plan.wrt, flags1, strict=True) if flag and w in cand]
    if not cand or not plan.batched or plan.n_points == 1:
        return tuple(cand)
    cand_idx = tuple(plan.names.index(w) for w in cand)
    v = torch.randn(out_shape, generator=gen, dtype=out_dtype).to(first[0].device)

    def vjp_point(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        g = bind_wrt(fn, args, cand_idx)
        _, vjp_fn = vjp_fn_of(g, *(args[i] for i in cand_idx))
        return tuple(vjp_fn(v))

    args = [inputs[n] for n in plan.names]
    cots, _ = vmap_or_loop(vjp_point, args, [0] * len(args), allow_vmap=allow_vmap)
    return tuple(w for w, c in zip(cand, cots, strict=True) if not bool((c != 0).any()))


# ---------------------------------------------------------------------------
# entry point


def _check_extra(
    plan: _Plan,
    what: str,
    tensor: torch.Tensor,
    expected: tuple[int, ...],
    dtype: torch.dtype,
    op: str,
) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise OpsError(f"{op}(f): {what} is a {type(tensor).__name__}, not a tensor")
    full = ((plan.n_points,) if plan.batched else ()) + expected
    if tuple(tensor.shape) != full:
        batch_note = " (the batch dimension first)" if plan.batched else ""
        raise OpsError(
            f"{op}(f): {what} has shape {_shape_str(tensor.shape)}, expected "
            f"{_shape_str(full)}{batch_note}"
        )
    return tensor.to(dtype)


def _check_output(plan: _Plan, out0: torch.Tensor, needs_grad: bool) -> None:
    """Refuse a non-scalar output for grad/hessian/hvp and a non-float one for derivatives."""
    for op in _SCALAR_OPS:
        if op in plan.ops and out0.numel() != 1:
            raise OpsError(_scalar_message(op, tuple(int(s) for s in out0.shape)))
    if needs_grad and not out0.is_floating_point():
        raise OpsError(
            f"{plan.call}: f returns dtype {out0.dtype}; derivatives need a floating-point output"
        )


_GRAD_ONLY = frozenset({"value", "grad"})


def _unbatched_grad(
    fn: Fn,
    plan: _Plan,
    first: Sequence[torch.Tensor],
    request: OpsRequest,
    detect_unconnected: bool,
) -> OpsResult:
    """``grad`` (and ``value``) at one point: one forward and one backward pass with
    plain autograd, whose result also says which inputs have a zero derivative."""
    with torch.enable_grad():
        leaves = [first[i].detach().requires_grad_(True) for i in plan.wrt_idx]
        out = bind_wrt(fn, first, plan.wrt_idx)(*leaves)
        _check_output(plan, out, True)
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
            unconnected = _unconnected(
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
    plan: _Plan,
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
    outer = chunk_for(peak * factor, plan.n_points) if plan.batched else None
    return inner, outer


def functions_of(fn: Fn) -> frozenset[str] | None:
    """The language's table functions ``fn`` calls; ``None`` for a callable that is not
    a compiled program (its transforms cannot be known, and run directly)."""
    if not isinstance(fn, CompiledFunction):
        return None
    return fn.functions


def plan_routes(fn: Fn, ops: Sequence[str], jac_mode: str | None, batched: bool) -> dict[str, str]:
    """op -> a route's description, for each op whose direct transform is unsafe for
    a function ``fn`` calls (see ``lang.routes``)."""
    functions = functions_of(fn)
    if not functions:
        return {}
    unsafe = unsafe_transforms(functions)
    where = "batch" if batched else "point"
    direct = {
        "value": "value",
        "grad": "grad",
        "jacobian": f"jacobian-{jac_mode or 'reverse'}",
        "hessian": "hessian",
        "vjp": "vjp",
        "jvp": "jvp",
        "hvp": "hvp",
    }
    routes: dict[str, str] = {}
    for op in ops:
        transform = f"{direct[op]}@{where}"
        if transform in unsafe:
            route = ROUTES[transform]
            assert route.op == op
            because = ", ".join(unsafe[transform])
            routes[op] = f"{op}: {route.strategy} (direct {transform} is unsafe for {because})"
    return routes


def compute_impl(
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    request: OpsRequest,
    *,
    detect_unconnected: bool = True,
    route: bool = True,
) -> OpsResult:
    """:func:`gradserve_workers.ops.compute`; ``detect_unconnected=False`` skips the
    connectivity probe (``unconnected`` is then empty), for callers that do not report
    it. ``route=False`` runs every transform directly, even where it is known to be
    wrong: for the conformance tests that watch whether a route is still needed."""
    plan = _plan(input_names, inputs, request)
    check_finite(plan.call, plan.names, inputs, plan.batched)
    ops = plan.ops
    first = [_point(inputs[n], plan.batched) for n in plan.names]
    if not plan.batched and "grad" in ops and _GRAD_ONLY.issuperset(ops):
        return _unbatched_grad(fn, plan, first, request, detect_unconnected)
    needs_grad = any(op in _DERIVATIVE_OPS for op in ops)
    # grad and jacobian say themselves whether an input's derivative vanishes at the
    # first point; other ops need the probe's extra backward pass for that
    probe = needs_grad and detect_unconnected and "grad" not in ops and "jacobian" not in ops
    if probe:
        out0, flags0, peak = _zero_or_unused(fn, plan, first, torch.Generator().manual_seed(0))
    else:
        with torch.no_grad():
            out0, peak = measure(fn, first)
        flags0 = []
    out_shape = tuple(int(s) for s in out0.shape)
    _check_output(plan, out0, needs_grad)

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
    inner, outer = _chunks(ops, request, peak, in_numel, out0.numel(), jac_mode, plan)

    # extra per-point arguments (cotangent, tangents, vector)
    extras: list[torch.Tensor] = []
    n_tan = n_vec = 0
    has_cot = "vjp" in ops
    if has_cot:
        if request.cotangent is None:
            raise OpsError(
                f"vjp(f): a cotangent of the output's shape {_shape_str(out_shape)} is required"
            )
        extras.append(
            _check_extra(plan, "cotangent", request.cotangent, out_shape, out0.dtype, "vjp")
        )
    for op, given, label in (
        ("jvp", request.tangents, "tangents"),
        ("hvp", request.vector, "vector"),
    ):
        if op not in ops:
            continue
        if given is None:
            raise OpsError(f"{op}(f): {label} are required, one per wrt input")
        missing = [w for w in plan.wrt if w not in given]
        unknown = [k for k in given if k not in plan.wrt]
        if missing or unknown:
            raise OpsError(
                f"{op}(f): {label} must name exactly the wrt inputs "
                f"({', '.join(plan.wrt)}); missing {missing or 'none'}, unexpected "
                f"{unknown or 'none'}"
            )
        for w, i in zip(plan.wrt, plan.wrt_idx, strict=True):
            extras.append(
                _check_extra(
                    plan, f"{label}['{w}']", given[w], tuple(first[i].shape), first[i].dtype, op
                )
            )
        if op == "jvp":
            n_tan = len(plan.wrt)
        else:
            n_vec = len(plan.wrt)

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
        return _point_ops(
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

    all_args = [inputs[n] for n in plan.names] + extras
    vmapped = request.allow_vmap
    res: dict[str, Any] | None = None
    if plan.batched:
        in_dims = [0] * len(all_args)
        if request.allow_vmap:
            try:
                res = torch.func.vmap(per_point, in_dims=tuple(in_dims), chunk_size=outer)(
                    *all_args
                )
            except Exception as exc:
                if not is_data_dependent_error(exc):
                    raise
                vmapped = False
        if res is None:
            res = loop_map(per_point_loop, all_args, in_dims)
    else:
        if request.allow_vmap:
            try:
                res = per_point(*all_args)
            except Exception as exc:
                if not is_data_dependent_error(exc):
                    raise
                vmapped = False
        if res is None:
            res = per_point_loop(*all_args)
    assert res is not None

    unconnected: tuple[str, ...] = ()
    if needs_grad and detect_unconnected:
        if not probe:
            derived = res["grad"] if "grad" in ops else res["jacobian"]
            flags0 = [not bool(_point(t, plan.batched).any()) for t in derived]
        unconnected = _unconnected(
            fn, plan, inputs, first, flags0, out_shape, out0.dtype, request.allow_vmap and vmapped
        )

    lead = (plan.n_points,) if plan.batched else ()
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for op in ops:
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
    if jac_mode == "forward" and "reverse" in notes:
        jac_mode = "reverse"
    return OpsResult(
        outputs=outputs,
        vmapped=vmapped,
        unconnected=unconnected,
        jacobian_mode=jac_mode,
        out_shape=out_shape,
        routes=tuple(routes[op] for op in ops if op in routes),
    )
