"""Numeric claims on the server: their shapes, and which of three sources disagree.

A numeric claim (a derivative computed elsewhere, one per point) is checked twice:
against the service's autograd (a claimed check, on the workers) and, beside it,
autograd against finite differences (a finite-difference check of the same
function). :func:`three_way` reads the two verdicts together: the claim is the
odd one out, or autograd is (the function's own derivative, e.g. a hand-written
backward), or finite differences are, and says so in the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import binding
from gradserve_server.errors import invalid
from gradserve_workers.report import CheckReport
from gradserve_workers.tasks import CLAIM, CheckSpec

__all__ = ["CLAIM", "claim_values", "claims_of", "reference_spec", "three_way"]


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def claim_values(
    msg: pb.Tensor,
    kind: str,
    key: str,
    arrays: Mapping[str, np.ndarray],
    points: int | None,
    call: str,
) -> np.ndarray:
    """A numeric claim's array (float64), refused (INVALID_ARGUMENT) when its shape
    is not the derivative's or it holds NaN or Inf.

    ``arrays``: the bound inputs; ``points``: the point count of a batched check
    (``None`` when not batched). A claimed Jacobian's output dimensions are known
    only once the function ran; its input dimensions are checked here, the rest on
    the workers.
    """
    values = binding.decode_map({key: msg}, "claim")[key].astype(np.float64, copy=False)
    lead = 1 if points is not None else 0
    in_shapes = {n: tuple(a.shape[lead:]) for n, a in arrays.items()}
    first, _, second = key.partition(",")
    per = tuple(values.shape)
    prefix = ""
    if points is not None:
        if values.ndim == 0 or values.shape[0] != points:
            raise invalid(
                f"{call}: the claimed {kind} for {key!r} has shape {_shape(per)}; a batched "
                f"check needs one claim per point: a leading dimension of {points}",
                "claims",
            )
        per, prefix = per[1:], f"{points} points x "
    if kind == "grad":
        expected = in_shapes[first]
        ok = per == expected
        text = _shape(expected)
    elif kind == "hessian":
        expected = in_shapes[first] + in_shapes[second or first]
        ok = per == expected
        text = _shape(expected)
    else:
        tail = in_shapes[first]
        ok = len(per) >= len(tail) and per[len(per) - len(tail) :] == tail
        text = f"out_shape + {_shape(tail)}"
    if not ok:
        raise invalid(
            f"{call}: the claimed {kind} for {key!r} has shape {_shape(tuple(values.shape))}, "
            f"expected {prefix}{text}",
            "claims",
        )
    if not np.isfinite(values).all():
        raise invalid(f"{call}: the claimed {kind} for {key!r} holds NaN or Inf", "claims")
    return values


def claims_of(bound: binding.Bound) -> dict[str, np.ndarray]:
    """The numeric claims a check was bound with, by key (what :func:`three_way` reads)."""
    return {k[len(CLAIM) :]: v for k, v in bound.extra.items() if k.startswith(CLAIM)}


def reference_spec(spec: CheckSpec) -> CheckSpec:
    """The finite-difference check of autograd that runs beside a numeric claim."""
    claimed = {part for key in spec.numeric for part in key.split(",")}
    wrt = tuple(n for n in (spec.wrt or ()) if n in claimed) or spec.wrt
    return replace(
        spec,
        kind="finite_difference",
        claims={},
        numeric=(),
        order=2 if spec.kind == "hessian" else 1,
        wrt=wrt,
        columns=None,
    )


def three_way(
    claimed: CheckReport,
    reference: CheckReport,
    values: Mapping[str, np.ndarray] | None = None,
    batched: bool = False,
) -> CheckReport:
    """The claimed report, told which of claim, autograd and finite differences
    disagree (``reference``: autograd against finite differences; ``values``: the
    claims by key, to read the claim where autograd and finite differences part)."""
    fd = reference.passed
    if claimed.passed and fd:
        sentence = "The claim, autograd and finite differences agree."
    elif fd:
        sentence = (
            "The claim disagrees with autograd and with finite differences, which agree "
            "with each other: the claim is wrong."
        )
    elif claimed.passed:
        sentence = (
            "The claim agrees with autograd, but both disagree with finite differences"
            f"{_where(reference)}: the function's own derivative (a hand-written backward?) "
            "and the claim share an error, or the function is not smooth there."
        )
    else:
        sentence = (
            "The claim disagrees with autograd, and autograd disagrees with finite "
            f"differences{_where(reference)}" + _side(reference, values or {}, batched)
        )
    return replace(
        claimed,
        three_way=sentence,
        autograd_matches_fd=fd,
        message=f"{claimed.message} {sentence}",
    )


def _where(reference: CheckReport) -> str:
    w = reference.worst
    if w is None or reference.passed or math.isnan(w.numeric):
        return ""
    values = f"autograd {w.analytic:.6g} vs finite difference {w.numeric:.6g}"
    return f" (worst at point {w.point}, input {w.input}: {values})"


def _side(reference: CheckReport, values: Mapping[str, np.ndarray], batched: bool) -> str:
    """Whom the claim sides with where autograd and finite differences differ most."""
    w = reference.worst
    claim = values.get(w.input) if w is not None else None
    if w is None or claim is None or reference.order != 1:
        return ": compare the claim with the finite difference there."
    index = ((w.point,) if batched else ()) + tuple(w.output_index) + tuple(w.input_index)
    try:
        there = float(claim[index])
    except (IndexError, TypeError):
        return ": compare the claim with the finite difference there."
    allowed = reference.atol + reference.rtol * abs(w.numeric)
    if abs(there - w.numeric) <= allowed:
        return (
            f"; there the claim is {there:.6g}, as finite differences say: autograd (the "
            "function's own derivative) is the odd one out."
        )
    return f"; there the claim is {there:.6g}: all three differ."
