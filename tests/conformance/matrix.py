"""The conformance matrix's machinery: references per case, the worker's answers, and
their comparison.

For a case (see cases.py) and a dtype, :func:`reference` draws ``POINTS`` points and,
in float64 at the dtype-rounded inputs, differentiates the case's programs by
Richardson-extrapolated central differences (``support.reference``; torch evaluates
the programs under ``no_grad``, nothing is differentiated by autograd). jvp, vjp and
hvp come from the reference Jacobian and Hessian (with their error estimates).

:func:`worker_answers` asks ``gradserve_workers`` the way the actor does (the
compiled program, ``ops.compute``) in four requests per batching mode:

- ``value + jacobian(forward) + jvp + vjp`` of the vector program,
- ``jacobian(reverse)`` of it,
- ``grad`` of the scalar program alone (the unbatched fast path),
- ``hessian + hvp`` of the scalar program.

:func:`compare` measures every answer against the reference with the tolerance

    tol = 10 * e_ref + GROWTH * kappa * eps(dtype) * scale

where ``e_ref`` is the reference's own error estimate per element, ``eps`` the
dtype's machine epsilon, ``kappa`` the case's condition (the condition number of
its matrix argument; 1 for elementwise and shape functions), ``scale`` the largest
reference magnitude of that operation, and ``GROWTH`` the rounding steps a small
program's first or second derivative accumulates per element.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from support import reference as R

from gradserve_workers.lang import CompiledFunction, compile_function
from gradserve_workers.ops import OpsRequest, OpsResult, compute

from .cases import Case

POINTS = 2  # the batch; the unbatched calls use its first point
# a small program's derivative rounds each element a few dozen times (forward and
# backward passes, the reductions of a 3x3 matrix product): errors grow about
# linearly with the count, so this many epsilons of the scale. Measured: the worst
# float32 answer of the matrix used 0.3 of its tolerance (det's hvp), the median 0.006.
GROWTH = 32.0
EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps)}
DTYPES = ("float64", "float32")

# operation label -> (program, ops of the request, jacobian mode): the requests the
# matrix sends (see the module docstring)
REQUESTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "forward": ("vector", ("value", "jacobian", "jvp", "vjp"), "forward"),
    "reverse": ("vector", ("jacobian",), "reverse"),
    "grad": ("scalar", ("grad",), "auto"),
    "second": ("scalar", ("hessian", "hvp"), "auto"),
}
# the matrix's operation names (every op, the Jacobian in both modes): request label
# and op
OPERATIONS: dict[str, tuple[str, str]] = {
    "value": ("forward", "value"),
    "grad": ("grad", "grad"),
    "jacobian-forward": ("forward", "jacobian"),
    "jacobian-reverse": ("reverse", "jacobian"),
    "hessian": ("second", "hessian"),
    "vjp": ("forward", "vjp"),
    "jvp": ("forward", "jvp"),
    "hvp": ("second", "hvp"),
}


@dataclass
class Reference:
    """One case's references at ``POINTS`` points, for one dtype: ``want[op][key]``
    and ``err[op][key]`` stacked over points (keys as in ``OpsResult.outputs``)."""

    case: Case
    dtype: str
    inputs: dict[str, np.ndarray]  # stacked over points, rounded to dtype
    weights: np.ndarray  # w of the scalar program, per point
    cotangent: np.ndarray
    tangents: dict[str, np.ndarray]
    want: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    err: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    kappa: float = 1.0


_COMPILED: dict[str, CompiledFunction] = {}


def compiled(source: str) -> CompiledFunction:
    if source not in _COMPILED:
        _COMPILED[source] = compile_function(source)
    return _COMPILED[source]


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(a, dtype=dtype).astype(np.float64)


def _paired(
    packed: R.Packed, values: np.ndarray, errors: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(value, error) per wrt input, cut along the last axis."""
    errs = packed.split(errors)
    return {k: (v, errs[k]) for k, v in packed.split(values).items()}


def _one_point(ref: Reference, i: int) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    case = ref.case
    point = {k: v[i] for k, v in ref.inputs.items()}
    vec = R.from_torch(compiled(case.vector_source()), vectorized=True)
    sca = R.from_torch(compiled(case.scalar_source()), vectorized=True)
    w = ref.weights[i]
    pv = R.Packed(vec, point, case.wrt, vectorized=True)
    ps = R.Packed(
        lambda *a: sca(*a, np.broadcast_to(w, (a[0].shape[0], *w.shape))),
        point,
        case.wrt,
        vectorized=True,
    )
    value = R.from_torch(compiled(case.vector_source()))(*point.values())
    jac, jerr = R.jacobian_error(pv.f, pv.x, vectorized=True)
    out_n = int(np.prod(value.shape, dtype=int))
    j2, e2 = jac.reshape(out_n, -1), jerr.reshape(out_n, -1)
    t = pv.flatten({k: v[i] for k, v in ref.tangents.items()})
    c = ref.cotangent[i].reshape(-1)
    grad, gerr = R.jacobian_error(ps.f, ps.x, vectorized=True)
    hess, herr = R.hessian_error(ps.f, ps.x, vectorized=True)
    n = ps.x.size
    grad, gerr = grad.reshape(n), gerr.reshape(n)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {
        "value": {"": (value, np.zeros_like(value))},
        "jvp": {"": ((j2 @ t).reshape(value.shape), (e2 @ np.abs(t)).reshape(value.shape))},
        "jacobian": _paired(pv, jac, jerr),
        "vjp": _paired(pv, c @ j2, np.abs(c) @ e2),
        "grad": _paired(ps, grad, gerr),
        "hvp": _paired(ps, hess @ t, herr @ np.abs(t)),
        "hessian": {},
    }
    rows, rows_err = ps.split(hess, axis=0), ps.split(herr, axis=0)
    for a in case.wrt:
        cols, cols_err = ps.split(rows[a]), ps.split(rows_err[a])
        for b in case.wrt:
            out["hessian"][f"{a},{b}"] = (cols[b], cols_err[b])
    return out


def reference(case: Case, dtype: str, seed: int = 0) -> Reference:
    """The references for ``case`` at ``POINTS`` points drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    points = [case.sample(rng) for _ in range(POINTS)]
    inputs = {k: _round(np.stack([p[k] for p in points]), dtype) for k in case.inputs}
    vec = compiled(case.vector_source())
    out_shape = R.from_torch(vec)(*(v[0] for v in inputs.values())).shape
    ref = Reference(
        case=case,
        dtype=dtype,
        inputs=inputs,
        weights=_round(rng.normal(size=(POINTS, *out_shape)), dtype),
        cotangent=_round(rng.normal(size=(POINTS, *out_shape)), dtype),
        tangents={k: _round(rng.normal(size=inputs[k].shape), dtype) for k in case.wrt},
    )
    per_point = [_one_point(ref, i) for i in range(POINTS)]
    for op, by_key in per_point[0].items():
        ref.want[op] = {k: np.stack([p[op][k][0] for p in per_point]) for k in by_key}
        ref.err[op] = {k: np.stack([p[op][k][1] for p in per_point]) for k in by_key}
    ref.kappa = max(
        (case.condition({k: v[i] for k, v in inputs.items()}) for i in range(POINTS)),
        default=1.0,
    )
    return ref


def worker_answers(ref: Reference, batched: bool, *, route: bool = True) -> dict[str, OpsResult]:
    """The worker's answers to the matrix's four requests, by request label."""
    case = ref.case
    dt = getattr(torch, ref.dtype)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a if batched else a[0], dtype=dt)

    inputs = {k: t(v) for k, v in ref.inputs.items()}
    tangents = {k: t(v) for k, v in ref.tangents.items()}
    answers = {}
    for label, (program, ops, mode) in REQUESTS.items():
        if program == "vector":
            fn, args = compiled(case.vector_source()), inputs
        else:
            fn, args = compiled(case.scalar_source()), dict(inputs, w=t(ref.weights))
        request = OpsRequest(
            ops=ops,
            wrt=case.wrt,
            batched=batched,
            jacobian_mode=mode,
            cotangent=t(ref.cotangent) if "vjp" in ops else None,
            tangents=tangents if "jvp" in ops else None,
            vector=tangents if "hvp" in ops else None,
        )
        answers[label] = compute(fn, list(args), args, request, route=route)
    return answers


@dataclass(frozen=True)
class Verdict:
    """How far one operation's answer is from the reference, in tolerances (at most 1
    passes), and its shape check."""

    case: str
    dtype: str
    batched: bool
    operation: str
    ratio: float
    shape_ok: bool
    detail: str

    @property
    def ok(self) -> bool:
        return self.shape_ok and self.ratio <= 1.0


class Answer(Protocol):
    """What :func:`compare` reads of an answer: ``OpsResult``, or :func:`from_sdk`'s."""

    outputs: Mapping[str, Mapping[str, Any]]
    routes: tuple[str, ...]


@dataclass
class SdkAnswer:
    outputs: dict[str, dict[str, Any]]
    routes: tuple[str, ...]


def _numpy(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return np.asarray(t.detach().numpy(force=True), dtype=np.float64)
    return np.asarray(t, dtype=np.float64)


def sdk_answers(client: Any, ref: Reference, batched: bool) -> dict[str, SdkAnswer]:
    """The matrix's four requests through a real server (``gradserve.Client``), the
    SDK's results keyed like ``OpsResult.outputs``."""
    case = ref.case

    def pick(a: np.ndarray) -> np.ndarray:
        return a if batched else a[0]

    inputs = {k: pick(v) for k, v in ref.inputs.items()}
    tangents = {k: pick(v) for k, v in ref.tangents.items()}
    answers = {}
    for label, (program, ops, mode) in REQUESTS.items():
        if program == "vector":
            source, args = case.vector_source(), inputs
        else:
            source, args = case.scalar_source(), dict(inputs, w=pick(ref.weights))
        res = client.compute(
            source,
            args,
            list(ops),
            wrt=list(case.wrt),
            batched=batched,
            dtype=ref.dtype,
            mode=mode,
            cotangent=pick(ref.cotangent) if "vjp" in ops else None,
            tangents=tangents if "jvp" in ops else None,
            vector=tangents if "hvp" in ops else None,
        )
        outputs: dict[str, dict[str, Any]] = {}
        for op in ops:
            got = res[op]
            if op in ("value", "jvp"):
                outputs[op] = {"": got}
            elif op == "hessian":
                outputs[op] = {
                    f"{a},{b}": got if len(case.wrt) == 1 else got[a][b]
                    for a in case.wrt
                    for b in case.wrt
                }
            else:
                outputs[op] = {w: got if len(case.wrt) == 1 else got[w] for w in case.wrt}
        answers[label] = SdkAnswer(outputs, tuple(res.metadata.routes))
    return answers


def compare(ref: Reference, batched: bool, answers: Mapping[str, Answer]) -> list[Verdict]:
    """One verdict per operation of :data:`OPERATIONS`."""
    verdicts = []
    eps = EPS[ref.dtype]
    for operation, (label, op) in OPERATIONS.items():
        got_all = answers[label].outputs[op]
        want_all, err_all = ref.want[op], ref.err[op]
        scale = max(float(np.max(np.abs(w))) if w.size else 0.0 for w in want_all.values())
        worst, shape_ok, detail = 0.0, True, ""
        for key, want in want_all.items():
            if not batched:
                want, err = want[0], err_all[key][0]
            else:
                err = err_all[key]
            got = _numpy(got_all[key])
            if got.shape != want.shape:
                shape_ok = False
                detail += f" {key or op}: shape {got.shape} != {want.shape};"
                continue
            tol = 10 * err + GROWTH * ref.kappa * eps * max(scale, 1e-300)
            ratio = float(np.max(np.abs(got - want) / tol)) if want.size else 0.0
            if ratio > worst:
                worst = ratio
                idx = np.unravel_index(int(np.argmax(np.abs(got - want) / tol)), want.shape)
                detail = (
                    f" {key or op}{list(idx)}: got {got[idx]:.6g}, want {want[idx]:.6g} "
                    f"(tol {tol[idx]:.2g})"
                )
        verdicts.append(
            Verdict(ref.case.name, ref.dtype, batched, operation, worst, shape_ok, detail)
        )
    return verdicts


def routes_of(answers: Mapping[str, Answer]) -> dict[str, tuple[str, ...]]:
    """The routes each request reported, by operation."""
    return {
        operation: tuple(r for r in answers[label].routes if r.startswith(op + ":"))
        for operation, (label, op) in OPERATIONS.items()
    }


def transform(operation: str, batched: bool) -> str:
    """The table's name of the transform an operation runs (``lang.routes.TRANSFORMS``)."""
    return f"{operation}@{'batch' if batched else 'point'}"
