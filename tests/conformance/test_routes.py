"""How programs find their routes, and that checks take them too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradserve_workers.check import finite_difference_check
from gradserve_workers.lang import compile_function, parse_and_validate
from gradserve_workers.lang.routes import ROUTES, functions_called, unsafe_transforms
from gradserve_workers.lang.table import FUNCTIONS
from gradserve_workers.ops.routing import plan_routes

LOGDET = "def f(x, A):\n    return logdet(A @ A.T + diag(1 + (x * x) ** 2))\n"
SOLVE = "def f(x, A):\n    return erf(solve(A @ A.T + 4 * eye(4), cat((x[1:], x[:1]))))\n"


def test_functions_called_finds_every_call_and_nothing_else() -> None:
    program = parse_and_validate(
        "def f(x, A):\n    y = A @ x\n    if sum(y) > 0:\n        return det(A) * y\n"
        "    return solve(A, y) + A.T @ x\n"
    )
    assert functions_called(program.tree) == {"sum", "det", "solve"}


def test_a_compiled_function_carries_the_functions_it_calls() -> None:
    fn = compile_function("def f(x, A):\n    return sum(det(A) * x)\n")
    assert fn.functions == {"sum", "det"}
    # a twin that differs only in layout shares them, without walking its tree again
    twin = fn.relocated("def f(x, A):\n    return sum( det(A) * x )  # spaced\n")
    assert twin.functions is fn.functions


def test_every_unsafe_transform_has_a_route_for_its_operation() -> None:
    for spec in FUNCTIONS.values():
        for transform in spec.unsafe:
            op = transform.split("@")[0].split("-")[0]
            assert ROUTES[transform].op == op


def test_routes_are_planned_per_batching_and_mode() -> None:
    fn = compile_function(LOGDET)
    assert set(plan_routes(fn, ("hessian", "grad"), None, batched=True)) == {"hessian"}
    assert plan_routes(fn, ("hessian",), None, batched=False) == {}
    assert set(plan_routes(fn, ("jacobian",), "forward", batched=True)) == {"jacobian"}
    assert plan_routes(fn, ("jacobian",), "reverse", batched=True) == {}
    # a callable that is not a program cannot be inspected: it runs directly
    assert plan_routes(torch.linalg.det, ("hessian",), None, batched=True) == {}
    assert unsafe_transforms({"sin", "logdet", "det"})["hessian@batch"] == ("det", "logdet")


@pytest.mark.parametrize(("source", "order"), [(LOGDET, 2), (SOLVE, 1)])
def test_checks_take_the_routes(source: str, order: int) -> None:
    """A check compares autograd's derivatives with differences: through an unsafe
    transform it would report a correct program as wrong."""
    rng = np.random.default_rng(15)
    inputs = {
        "x": torch.tensor(rng.normal(size=(5, 4))),
        "A": torch.tensor(rng.normal(size=(5, 4, 4)) / 2),
    }
    report = finite_difference_check(
        compile_function(source), ["x", "A"], inputs, wrt=["x"], batched=True, order=order
    )
    assert report.passed
