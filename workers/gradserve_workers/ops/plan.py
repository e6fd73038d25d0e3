"""The request checked against its inputs before any work: op names, wrt, input
names, dtypes, the batch, non-finite values, the output's shape and the extra
per-point arguments (cotangent, tangents, vector). Every refusal is an
:class:`OpsError` whose message starts with the call form."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .request import (
    DERIVATIVE_OPS,
    JACOBIAN_MODES,
    OPS,
    NonFiniteInputError,
    OpsError,
    OpsRequest,
    call_form,
)

# ops defined for a scalar function only
_SCALAR_OPS = ("grad", "hessian", "hvp")


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
    call: str,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    batched: bool,
    first_point: int = 0,
) -> None:
    """Raise :class:`NonFiniteInputError` naming the first NaN/Inf element of any input
    (``first_point``: the index of the first point, for a chunk of a larger batch)."""
    for name in input_names:
        found = _first_non_finite(inputs[name])
        if found is None:
            continue
        idx, kind = found
        if batched and idx:
            where = f"at point {first_point + idx[0]}" + (
                f", element {_fmt_index(idx[1:])}" if idx[1:] else ""
            )
        elif idx:
            where = f"at element {_fmt_index(idx)}"
        else:
            where = "(a scalar)"
        raise NonFiniteInputError(
            f"{call}: input '{name}' contains {kind} {where}; derivatives of non-finite "
            "inputs are not computed. Remove or replace the non-finite values."
        )


@dataclass(frozen=True)
class Plan:
    """A request checked against its inputs: the ops without repeats, the input names,
    the wrt inputs and their positions, and the number of points."""

    ops: tuple[str, ...]
    names: tuple[str, ...]
    wrt: tuple[str, ...]
    wrt_idx: tuple[int, ...]
    batched: bool
    n_points: int
    call: str


def check_names(
    call: str,
    names: Sequence[str],
    inputs: Mapping[str, object],
    error: type[OpsError] = OpsError,
) -> None:
    """That ``inputs`` holds exactly the tensors ``names`` (the function's inputs);
    raise ``error`` naming the missing, the unknown or the one that is not a tensor.
    Shared by the ops and the checks, which raise their own subclass."""
    missing = [n for n in names if n not in inputs]
    if missing:
        raise error(f"{call}: missing input(s) {', '.join(missing)}")
    extra = [n for n in inputs if n not in names]
    if extra:
        raise error(f"{call}: unknown input(s) {', '.join(extra)}; f takes {', '.join(names)}")
    for n in names:
        if not isinstance(inputs[n], torch.Tensor):
            raise error(f"{call}: input '{n}' is a {type(inputs[n]).__name__}, not a tensor")


def plan_for(
    input_names: Sequence[str], inputs: Mapping[str, torch.Tensor], req: OpsRequest
) -> Plan:
    """Check ``req`` against ``inputs``; raise :class:`OpsError` saying what is wrong."""
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
    check_names(call, names, inputs)
    wrt = names if req.wrt is None else tuple(req.wrt)
    unknown = [w for w in wrt if w not in names]
    if unknown:
        raise OpsError(
            f"{call}: wrt names unknown input(s) {', '.join(unknown)}; "
            f"f takes {', '.join(names) or 'no inputs'}"
        )
    if len(set(wrt)) != len(wrt):
        raise OpsError(f"{call}: wrt repeats an input: {list(wrt)}")
    if any(op in DERIVATIVE_OPS for op in ops):
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
    return Plan(
        ops=ops,
        names=names,
        wrt=wrt,
        wrt_idx=tuple(names.index(w) for w in wrt),
        batched=req.batched,
        n_points=n_points,
        call=call,
    )


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _scalar_message(op: str, out_shape: tuple[int, ...]) -> str:
    head = f"{op}(f): f returns shape {shape_str(out_shape)}, not a scalar."
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


def _check_extra(
    plan: Plan,
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
            f"{op}(f): {what} has shape {shape_str(tensor.shape)}, expected "
            f"{shape_str(full)}{batch_note}"
        )
    return tensor.to(dtype)


def check_output(plan: Plan, out0: torch.Tensor, needs_grad: bool) -> None:
    """Refuse a non-scalar output for grad/hessian/hvp and a non-float one for derivatives."""
    for op in _SCALAR_OPS:
        if op in plan.ops and out0.numel() != 1:
            raise OpsError(_scalar_message(op, tuple(int(s) for s in out0.shape)))
    if needs_grad and not out0.is_floating_point():
        raise OpsError(
            f"{plan.call}: f returns dtype {out0.dtype}; derivatives need a floating-point output"
        )


def first_point(t: torch.Tensor, batched: bool) -> torch.Tensor:
    """The first point of a batched input; an unbatched input is its one point."""
    return t[0] if batched else t


@dataclass(frozen=True)
class Extras:
    """The extra per-point arguments, validated: ``tensors`` in the order the per-point
    function takes them after the inputs (the cotangent, then the tangents, then the
    vector, one per wrt input)."""

    tensors: tuple[torch.Tensor, ...]
    cotangent: bool
    n_tangents: int
    n_vector: int


def extra_args(
    plan: Plan,
    request: OpsRequest,
    first: Sequence[torch.Tensor],
    out_shape: tuple[int, ...],
    out_dtype: torch.dtype,
) -> Extras:
    """The cotangent (vjp), tangents (jvp) and vector (hvp) the ops need, checked
    against the output's and the inputs' shapes and cast to their dtypes."""
    tensors: list[torch.Tensor] = []
    n_tan = n_vec = 0
    has_cot = "vjp" in plan.ops
    if has_cot:
        if request.cotangent is None:
            raise OpsError(
                f"vjp(f): a cotangent of the output's shape {shape_str(out_shape)} is required"
            )
        tensors.append(
            _check_extra(plan, "cotangent", request.cotangent, out_shape, out_dtype, "vjp")
        )
    for op, given, label in (
        ("jvp", request.tangents, "tangents"),
        ("hvp", request.vector, "vector"),
    ):
        if op not in plan.ops:
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
            tensors.append(
                _check_extra(
                    plan, f"{label}['{w}']", given[w], tuple(first[i].shape), first[i].dtype, op
                )
            )
        if op == "jvp":
            n_tan = len(plan.wrt)
        else:
            n_vec = len(plan.wrt)
    return Extras(tuple(tensors), has_cot, n_tan, n_vec)
