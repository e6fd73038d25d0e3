"""One program, every operation, through the worker's real code path, against the
independent reference (Richardson central differences in float64, no autograd).

The worker path is :class:`gradserve_workers.actor.GradActor` (without Ray): the
compiled-function cache, the arrays as the server sends them, the ops with their
routes, and the certificate (``verify=True``, so a certificate that cried wolf on a
right answer fails here too). Each program runs unbatched at one point and batched
at two (the first point again, and another).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from support import reference

from gradserve_workers import lang
from gradserve_workers.actor import COTANGENT, TANGENT, VECTOR, GradActor
from gradserve_workers.tasks import ComputeSpec

NAMES = ("x", "A")
SHAPES = {"x": (3,), "A": (3, 3)}
# ops run per program: (label, op, jacobian mode, wrt); second-order ops are taken with
# respect to x alone (the four-point reference over x and A would cost 20 times more)
FIRST = ("x", "A")
SECOND = ("x",)
OPS_SCALAR = (
    ("value", "value", "auto", FIRST),
    ("grad", "grad", "auto", FIRST),
    ("jacobian-forward", "jacobian", "forward", FIRST),
    ("jacobian-reverse", "jacobian", "reverse", FIRST),
    ("vjp", "vjp", "auto", FIRST),
    ("jvp", "jvp", "auto", FIRST),
    ("hessian", "hessian", "auto", SECOND),
    ("hvp", "hvp", "auto", SECOND),
)
OPS_VECTOR = tuple(o for o in OPS_SCALAR if o[1] not in ("grad", "hessian", "hvp"))
# |ours - reference| <= RTOL * (1 + max |reference|) + ERR_FACTOR * (the reference's
# own error estimate): Richardson in float64 is good to ~1e-9 on smooth functions, and
# its error estimate grows where a kink lies within the steps
RTOL = 1e-6
ERR_FACTOR = 100.0
# points where the value is larger than this, or not finite, make a program unusable
MAX_VALUE = 1e6


class Unusable(Exception):
    """The program cannot be compared at these points (outside its domain, overflow)."""


class Mismatch(AssertionError):
    """The service and the reference disagree."""


@dataclass
class Stats:
    programs: int = 0
    unusable: int = 0
    results: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        total = sum(self.results.values())
        per = ", ".join(f"{k} {v}" for k, v in sorted(self.results.items()))
        return (
            f"{self.programs} programs compared ({self.unusable} unusable drawn and "
            f"skipped), {total} results: {per}"
        )


_ACTOR: GradActor | None = None


def actor() -> GradActor:
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = GradActor("cpu", threads=1)
    return _ACTOR


def points(seed: int) -> dict[str, np.ndarray]:
    """Two points (a leading axis of 2) for the inputs, from ``seed``."""
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(2, 3)), "A": rng.normal(size=(2, 3, 3)) / 2}


def _run(
    source: str, arrays: Mapping[str, np.ndarray], op: str, mode: str, wrt: tuple[str, ...],
    batched: bool, verify: bool, dtype: str = "float64",
) -> dict[str, np.ndarray]:  # fmt: skip
    spec = ComputeSpec(
        source=source,
        source_hash=hashlib.sha256(source.encode()).hexdigest(),
        ops=(op,),
        wrt=wrt,
        batched=batched,
        dtype=dtype,
        jacobian_mode=mode,
        verify=verify,
    )
    stop = next(iter(arrays.values())).shape[0] if batched else 1
    result = actor().compute(spec, arrays, 0, stop)
    if result.error is not None:
        raise Mismatch(f"{op} ({mode}, batched={batched}) failed: {result.error}")
    return result.outputs[op]


@dataclass
class _Reference:
    value: np.ndarray
    jac: dict[str, np.ndarray]  # out_shape + in_shape per input
    jac_err: dict[str, np.ndarray]
    hess: np.ndarray | None  # x.shape + x.shape, scalar programs
    hess_err: np.ndarray | None


def _reference(fn: Callable[..., Any], point: Mapping[str, np.ndarray], scalar: bool) -> _Reference:
    f = reference.from_torch(fn)
    value = np.asarray(f(*(point[n] for n in NAMES)))
    if not np.all(np.isfinite(value)) or np.max(np.abs(value), initial=0) > MAX_VALUE:
        raise Unusable("value not finite or too large")
    packed = reference.Packed(f, point, FIRST)
    jac, err = reference.jacobian_error(packed.f, packed.x)
    axis = jac.ndim - 1
    jacs = packed.split(jac, axis=axis)
    errs = packed.split(err, axis=axis)
    hess = hess_err = None
    if scalar:
        px = reference.Packed(f, point, SECOND)
        hess, hess_err = reference.hessian_error(px.f, px.x)
    for arr in (*jacs.values(), *errs.values(), hess, hess_err):
        if arr is not None and not np.all(np.isfinite(arr)):
            raise Unusable("a reference derivative is not finite")
    return _Reference(value, jacs, errs, hess, hess_err)


def _close(label: str, ours: np.ndarray, ref: np.ndarray, err: np.ndarray | float) -> None:
    ours = np.asarray(ours)
    if ours.shape != ref.shape:
        raise Mismatch(f"{label}: shape {ours.shape}, expected {ref.shape}")
    if not np.all(np.isfinite(ours)):
        raise Mismatch(f"{label}: not finite: {ours}")
    allowed = RTOL * (1 + np.max(np.abs(ref), initial=0)) + ERR_FACTOR * np.asarray(err)
    gap = np.abs(ours - ref)
    if np.any(gap > allowed):
        allowed = np.broadcast_to(allowed, gap.shape)
        i = np.unravel_index(int(np.argmax(gap - allowed)), gap.shape) if gap.ndim else ()
        raise Mismatch(
            f"{label}: off by {float(gap[i]):.3e} at {i} (allowed {float(allowed[i]):.1e}): "
            f"service {float(ours[i])!r}, reference {float(ref[i])!r}"
        )


def _dot_out(u: np.ndarray, jac: np.ndarray, n_out: int) -> np.ndarray:
    """uᵀJ for J of shape out + in, u of shape out."""
    return np.tensordot(u, jac, axes=n_out) if n_out else u * jac


def check_program(source: str, seed: int, stats: Stats, *, verify: bool = True) -> None:
    """:func:`compare_program`, with any unexpected failure (a well-typed program that
    does not run) reported as a :class:`Mismatch` that shows the program."""
    try:
        compare_program(source, seed, stats, verify=verify)
    except (Mismatch, Unusable):
        raise
    except Exception as exc:
        raise Mismatch(f"{type(exc).__name__}: {exc}\n{_where(source, seed)}") from exc


def compare_program(source: str, seed: int, stats: Stats, *, verify: bool = True) -> None:
    """Compare every op of ``source`` at the points of ``seed``; raise :class:`Mismatch`
    (with the program) when the service is wrong, :class:`Unusable` when the program
    cannot be compared there. ``verify=False`` turns the certificate off, so that
    the reference alone judges."""
    fn = lang.compile_function(source)
    if fn.inputs != NAMES:
        raise Unusable(f"inputs {fn.inputs}")
    pts = points(seed)
    at = [{n: pts[n][i] for n in NAMES} for i in range(2)]
    probe = np.asarray(reference.from_torch(fn)(*(at[0][n] for n in NAMES)))
    scalar = probe.ndim == 0
    refs = [_reference(fn, p, scalar) for p in at]
    out_shape = probe.shape
    n_out = len(out_shape)
    extras = _extras(seed, out_shape)
    for label, op, mode, wrt in OPS_SCALAR if scalar else OPS_VECTOR:
        for batched in (False, True):
            arrays = _arrays(pts, extras, op, wrt, batched)
            try:
                ours = _run(source, arrays, op, mode, wrt, batched, verify)
            except Mismatch as exc:
                raise Mismatch(f"{exc}\n{_where(source, seed)}") from None
            for i in range(2 if batched else 1):
                got = {k: (v[i] if batched else v) for k, v in ours.items()}
                try:
                    _compare(op, got, refs[i], i, *extras, n_out)
                except Mismatch as exc:
                    where = f"{label}, {'batched point ' + str(i) if batched else 'one point'}"
                    raise Mismatch(f"{where}: {exc}\n{_where(source, seed)}") from None
            stats.results[f"{label} {'batched' if batched else 'one point'}"] += 1
    stats.programs += 1


Extras = tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]


def _extras(seed: int, out_shape: tuple[int, ...]) -> Extras:
    """Cotangents, tangents and vectors for two points."""
    rng = np.random.default_rng(seed + 1)
    cot = rng.normal(size=(2, *out_shape))
    tan = {n: rng.normal(size=(2, *SHAPES[n])) for n in FIRST}
    vec = {n: rng.normal(size=(2, *SHAPES[n])) for n in SECOND}
    return cot, tan, vec


def _arrays(
    pts: Mapping[str, np.ndarray], extras: Extras, op: str, wrt: tuple[str, ...], batched: bool
) -> dict[str, np.ndarray]:
    """What the server would send the worker for ``op``: both points, or the first."""

    def pick(a: np.ndarray) -> np.ndarray:
        return a if batched else np.asarray(a[0])

    cot, tan, vec = extras
    arrays = {n: pick(pts[n]) for n in NAMES}
    if op == "vjp":
        arrays[COTANGENT] = pick(cot)
    if op == "jvp":
        arrays.update({TANGENT + n: pick(tan[n]) for n in wrt})
    if op == "hvp":
        arrays.update({VECTOR + n: pick(vec[n]) for n in wrt})
    return arrays


def certify_in_float32(source: str, seed: int, stats: Stats) -> None:
    """Every op of ``source`` in float32 with the certificate on: no false alarm on a
    right answer (float32's rounding is far larger), and float32 results."""
    fn = lang.compile_function(source)
    if fn.inputs != NAMES:
        raise Unusable(f"inputs {fn.inputs}")
    pts = {n: a.astype(np.float32) for n, a in points(seed).items()}
    out_shape = np.asarray(reference.from_torch(fn)(*(pts[n][0] for n in NAMES))).shape
    extras = _extras(seed, out_shape)
    for label, op, mode, wrt in OPS_SCALAR if not out_shape else OPS_VECTOR:
        for batched in (False, True):
            arrays = _arrays(pts, extras, op, wrt, batched)
            arrays = {k: a.astype(np.float32) for k, a in arrays.items()}
            try:
                ours = _run(source, arrays, op, mode, wrt, batched, True, "float32")
            except Mismatch as exc:
                raise Mismatch(f"float32 {exc}\n{_where(source, seed)}") from None
            wrong = {k: str(a.dtype) for k, a in ours.items() if a.dtype != np.float32}
            if wrong:
                raise Mismatch(f"float32 {label}: results in {wrong}\n{_where(source, seed)}")
            stats.results[f"{label} {'batched' if batched else 'one point'}"] += 1
    stats.programs += 1


def _compare(
    op: str, got: Mapping[str, np.ndarray], ref: _Reference, i: int, cot: np.ndarray,
    tan: Mapping[str, np.ndarray], vec: Mapping[str, np.ndarray], n_out: int,
) -> None:  # fmt: skip
    if op == "value":
        _close("value", got[""], ref.value, 1e-12 * (1 + np.abs(ref.value)))
    elif op in ("grad", "jacobian"):
        for n in FIRST:
            _close(f"{op}[{n}]", got[n], ref.jac[n], ref.jac_err[n])
    elif op == "vjp":
        for n in FIRST:
            err = _dot_out(np.abs(cot[i]), ref.jac_err[n], n_out)
            _close(f"vjp[{n}]", got[n], _dot_out(cot[i], ref.jac[n], n_out), err)
    elif op == "jvp":
        total = sum(_apply(ref.jac[n], tan[n][i]) for n in FIRST)
        err = sum(_apply(ref.jac_err[n], np.abs(tan[n][i])) for n in FIRST)
        _close("jvp", got[""], np.asarray(total), np.asarray(err))
    elif op == "hessian":
        assert ref.hess is not None and ref.hess_err is not None
        _close("hessian[x,x]", got["x,x"], ref.hess, ref.hess_err)
    elif op == "hvp":
        assert ref.hess is not None and ref.hess_err is not None
        _close("hvp[x]", got["x"], ref.hess @ vec["x"][i], ref.hess_err @ np.abs(vec["x"][i]))


def _apply(jac: np.ndarray, v: np.ndarray) -> np.ndarray:
    """J v for J of shape out + in, v of shape in."""
    return np.tensordot(jac, v, axes=v.ndim) if v.ndim else jac * v


def _where(source: str, seed: int) -> str:
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    header = "" if source.startswith(SEED_PREFIX) else f"{SEED_PREFIX}{seed}\n"
    return (
        f"to keep it, save these lines as tests/fuzz/corpus/found-{digest}.txt:\n{header}{source}"
    )


SEED_PREFIX = "# seed: "


def seed_of(source: str) -> int:
    """A corpus program's points: its first line ``# seed: N``, else seed 0."""
    first = source.split("\n", 1)[0]
    return int(first[len(SEED_PREFIX) :]) if first.startswith(SEED_PREFIX) else 0


def finite_seconds(value: str | None, default: float) -> float:
    try:
        seconds = float(value) if value else default
    except ValueError:
        return default
    return seconds if math.isfinite(seconds) and seconds > 0 else default
