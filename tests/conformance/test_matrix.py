"""The conformance matrix: every function of the language's table (cases.py), every
operation, unbatched and batched, float64 and float32, through the worker's code path
(compiled program, ``ops.compute``), against references that do not use autograd.

It also holds the route table to account both ways: a transform the table calls
unsafe must still be wrong when run directly (else the detour is needless and the
table must be updated), and every other transform runs directly and must be right.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from support import reference as R

from gradserve_workers.lang.routes import ROUTES
from gradserve_workers.lang.table import FUNCTIONS

from .cases import CASES, COMPLEX_FORMS, Case
from .matrix import (
    DTYPES,
    EPS,
    GROWTH,
    Reference,
    compare,
    reference,
    routes_of,
    transform,
    worker_answers,
)

BY_NAME = {c.name: c for c in CASES}


@functools.cache
def _reference(name: str, dtype: str) -> Reference:
    return reference(BY_NAME[name], dtype)


def _unsafe_for(case: Case, transform_name: str) -> list[str]:
    return [f for f in case.functions if transform_name in FUNCTIONS[f].unsafe]


def test_every_function_has_a_case() -> None:
    covered = {f for c in CASES for f in c.functions}
    assert set(FUNCTIONS) <= covered, sorted(set(FUNCTIONS) - covered)
    assert covered <= set(FUNCTIONS), sorted(covered - set(FUNCTIONS))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(BY_NAME))
def test_conformance(name: str, dtype: str) -> None:
    ref = _reference(name, dtype)
    failures = []
    for batched in (False, True):
        answers = worker_answers(ref, batched)
        routes = routes_of(answers)
        for v in compare(ref, batched, answers):
            t = transform(v.operation, batched)
            unsafe = _unsafe_for(ref.case, t)
            if not v.ok:
                failures.append(f"{t}: {v.ratio:.3g} tolerances off;{v.detail}")
            if bool(routes[v.operation]) != bool(unsafe):
                failures.append(f"{t}: routes {routes[v.operation]}, expected for {unsafe}")
    assert not failures, f"{name} {dtype}:\n" + "\n".join(failures)


UNSAFE_PAIRS = sorted((f, t) for f, spec in FUNCTIONS.items() for t in spec.unsafe)


def test_routes_are_known() -> None:
    assert {t for _, t in UNSAFE_PAIRS} <= set(ROUTES)


@pytest.mark.parametrize(("function", "transform_name"), UNSAFE_PAIRS)
def test_route_is_still_needed(function: str, transform_name: str) -> None:
    """The direct transform is still wrong for the function's own case: when a torch
    upgrade fixes it, this fails, and the entry comes out of the table."""
    ref = _reference(function, "float64")
    batched = transform_name.endswith("@batch")
    verdicts = compare(ref, batched, worker_answers(ref, batched, route=False))
    wrong = {transform(v.operation, batched): v for v in verdicts if not v.ok}
    assert transform_name in wrong, (
        f"{function}: {transform_name} is right when run directly; remove it from the "
        "unsafe table (lang/table.py)"
    )
    # and nothing else is: the table names exactly the wrong transforms
    assert set(wrong) <= set(FUNCTIONS[function].unsafe), sorted(wrong)


@pytest.mark.parametrize("batched", [False, True])
def test_analytic_functions_against_the_complex_step(batched: bool) -> None:
    """A second, independent reference for the analytic elementwise functions: the
    complex step of numpy's implementation, exact to rounding."""
    failures = []
    for name, form in COMPLEX_FORMS.items():
        ref = _reference(name, "float64")
        jac = worker_answers(ref, batched)["forward"].outputs["jacobian"]["x"].numpy()
        for i in range(jac.shape[0] if batched else 1):
            want = R.complex_step_jacobian(form, ref.inputs["x"][i])
            got = jac[i] if batched else jac
            tol = GROWTH * EPS["float64"] * np.max(np.abs(want))
            if np.max(np.abs(got - want)) > tol:
                failures.append(f"{name} point {i}: {np.max(np.abs(got - want)):.3g} > {tol:.3g}")
    assert not failures, failures
