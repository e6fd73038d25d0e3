"""Derivative checks: autograd against finite differences, or a claimed derivative.

Both sides of every comparison are computed in float64, whatever the inputs' dtype,
so float32 inputs do not produce false failures. An element passes when
``|analytic - reference| <= atol + rtol * |reference|`` (gradcheck's rule), where the
reference is the finite-difference value, or autograd's value for claimed
derivatives. The report names the worst element (point, input, indices, both values)
in one paragraph, says when the function is not differentiable at a point (one-sided
differences disagree), and gives a verdict per point for batched checks.

By concern: ``points`` (inputs laid out as one flat vector per point), ``analytic``
(autograd's side), ``evaluation`` (the function at perturbed points),
``comparison``, ``kinks``, ``finite_differences`` and ``claims`` (the two checks),
``fd_error`` (the difference's own error), ``report``; ``options`` holds the tuning
values. The report types are torch-free and live in :mod:`gradserve_workers.report`.
"""

from __future__ import annotations

from ..report import CheckReport, Kink, WorstElement, merge_reports, merge_shards
from .claims import claimed_check
from .finite_differences import finite_difference_check
from .options import CheckOptions
from .points import CheckError

CheckError.__module__ = __name__

__all__ = [
    "CheckError",
    "CheckOptions",
    "CheckReport",
    "Kink",
    "WorstElement",
    "claimed_check",
    "finite_difference_check",
    "merge_reports",
    "merge_shards",
]
