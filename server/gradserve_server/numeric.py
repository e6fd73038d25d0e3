"""Numeric claims on the server: which of three sources disagree (their shapes are
checked by rules.claim_values).

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

from gradserve_workers.report import CheckReport
from gradserve_workers.tasks import CheckSpec

__all__ = ["reference_spec", "three_way"]


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
