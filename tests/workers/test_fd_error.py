"""The finite difference's own error (Richardson, h and h/2) beside the worst element.

Measured on the gradcheck parity corpus (test_check_parity.py) at first order and on
the custom-function corpus's second-order part (support/custom_functions.py): every
wrong backward is a real disagreement, beyond the difference's error; every right one
checked at a tolerance tighter than finite differences can resolve (the borderline
failures of a strict check) is named noise; no verdict changes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from support.custom_functions import SECOND_ORDER, draw
from test_check_parity import CORPUS, as_function

from gradserve_workers.check import CheckOptions, finite_difference_check
from gradserve_workers.check.fd_error import F64, _projection, with_error_estimate
from gradserve_workers.lang.errors import FunctionRuntimeError
from gradserve_workers.report import beyond_fd_error

# finite_difference_check attaches the estimate; the verdicts are gradcheck's
# (test_check_parity.py asserts them), the estimate only explains a failure.
# far tighter than a central difference at eps=1e-6 resolves (~1e-10 relative at best)
STRICT = {"atol": 1e-13, "rtol": 1e-11}


def _checked(f, claim, low, high, **tolerances):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(11)
    x = low + (high - low) * torch.rand(4, generator=g, dtype=torch.float64)
    fn = as_function(f, claim)
    return finite_difference_check(fn, ["x"], {"x": x}, **tolerances)


def test_wrong_backwards_are_beyond_the_difference_s_error() -> None:
    for name, f, _, bad, low, high in CORPUS:
        estimated = _checked(f, bad, low, high)
        assert not estimated.passed, name
        assert estimated.worst is not None and estimated.worst.fd_error is not None
        assert beyond_fd_error(estimated.worst), (name, estimated.message)
        assert "a real disagreement" in estimated.message


def test_strict_tolerances_fail_right_backwards_within_the_noise() -> None:
    noise = 0
    for name, f, good, _, low, high in CORPUS:
        assert _checked(f, good, low, high).passed, name
        estimated = _checked(f, good, low, high, **STRICT)
        if not estimated.passed:
            assert estimated.worst is not None
            if name != "square_tiny_off":  # a real 1e-6 error, beyond the noise
                assert not beyond_fd_error(estimated.worst), (name, estimated.message)
                assert "within the noise of finite differences" in estimated.message
                noise += 1
    assert noise >= len(CORPUS) - 5  # most strict failures are noise, and said to be


def test_the_estimate_reaches_the_client(client) -> None:  # type: ignore[no-untyped-def]
    report = client.check("sum(exp(3 * x))", {"x": [0.5, 1.0]}, atol=1e-12, rtol=1e-12)
    assert not report.passed
    assert report.worst.fd_error is not None and report.worst.beyond_fd_error is False
    assert "within the noise of finite differences" in report.message
    report = client.check("sum(x ** 3)", {"x": [1.0, 2.0]})
    assert report.passed and report.worst.fd_error is not None


# ----------------------------------------------------------------- second order

# Hessians by differences of the gradient resolve ~1e-9 relative at best at eps=1e-6
STRICT2 = {"atol": 1e-13, "rtol": 1e-13}


def _second(case, **tolerances):  # type: ignore[no-untyped-def]
    names = [f"in{i}" for i in range(len(case.shapes))]
    points = dict(zip(names, draw(case, 12, seed=2), strict=True))
    kwargs = {"batched": True, "order": 2, "atol": 1e-5, "rtol": 1e-3, **tolerances}
    bare = finite_difference_check(
        case.fn, names, points, fast=False, options=CheckOptions(fd_error_estimate=False), **kwargs
    )
    return finite_difference_check(case.fn, names, points, **kwargs), bare


def test_second_order_estimates_name_wrong_backwards_and_noise() -> None:
    """On the order-2 corpus (custom_functions.SECOND_ORDER): every wrong double
    backward is beyond the estimate, every right one failed by a strict tolerance is
    within it, and the estimate changes no verdict (the check without it agrees)."""
    for case in SECOND_ORDER:
        for tolerances in ({}, STRICT2):
            estimated, bare = _second(case, **tolerances)
            assert (estimated.passed, estimated.point_passed) == (bare.passed, bare.point_passed)
            assert bare.worst is not None and bare.worst.fd_error is None
            w = estimated.worst
            assert w is not None and w.fd_error is not None, case.name
            if not case.right:
                assert not estimated.passed and beyond_fd_error(w), (case.name, estimated.message)
                assert "a real disagreement" in estimated.message
            elif tolerances:
                assert not estimated.passed, case.name  # strict enough to fail them all
                assert not beyond_fd_error(w), (case.name, estimated.message)
                assert "within the noise of finite differences" in estimated.message
            else:
                assert estimated.passed, case.name


def test_a_mixed_second_derivative_differences_the_right_gradient() -> None:
    """d²f / dx dA of xᵀAx is x (an element of the gradient in x, differenced along A):
    the estimate is that of a smooth, linear-in-A gradient, tiny beside the values."""
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    a = torch.eye(3, dtype=torch.float64) + 0.1
    f = lambda x, a: x @ (a @ x)  # noqa: E731
    r = finite_difference_check(f, ["x", "a"], {"x": x, "a": a}, order=2, atol=0, rtol=1e-14)
    assert r.worst is not None and r.worst.fd_error is not None
    assert r.worst.fd_error < 1e-7 * max(1.0, abs(r.worst.numeric))


def test_the_second_order_estimate_reaches_the_client(client) -> None:  # type: ignore[no-untyped-def]
    report = client.check("sum(exp(3 * x))", {"x": [0.5, 1.0]}, order=2, atol=1e-13, rtol=1e-13)
    assert not report.passed
    assert report.worst.fd_error is not None and report.worst.beyond_fd_error is False
    assert "within the noise of finite differences" in report.message


def test_fast_mode_failures_carry_the_estimate_at_both_orders() -> None:
    """A failing fast check re-checks its failing points element by element; that
    worst element carries the estimate; a passing one names a projection, whose
    difference along the check's own random u, projected on v, carries it."""
    for case in (SECOND_ORDER[-1], SECOND_ORDER[0]):
        names = [f"in{i}" for i in range(len(case.shapes))]
        points = dict(zip(names, draw(case, 12, seed=2), strict=True))
        r = finite_difference_check(case.fn, names, points, batched=True, order=2, fast=True)
        assert r.mode == "fast" and r.passed == case.right and r.worst is not None
        assert r.worst.fd_error is not None
        assert (r.worst.projection is None) != case.right
        assert beyond_fd_error(r.worst) != case.right, r.message
    name, f, _, bad, low, high = CORPUS[0]
    x = low + (high - low) * torch.rand(4, generator=torch.Generator().manual_seed(11),
                                        dtype=torch.float64)  # fmt: skip
    r = finite_difference_check(as_function(f, bad), ["x"], {"x": x}, fast=True)
    assert r.mode == "fast" and not r.passed and r.worst is not None
    assert beyond_fd_error(r.worst), (name, r.message)


@pytest.mark.parametrize("order", [1, 2])
def test_a_projection_s_estimate_differences_along_the_check_s_own_directions(order: int) -> None:
    """The estimate's D(h) is the check's numeric vᵀJu: same u and v, same step."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    if order == 1:
        f = lambda x, y: torch.sin(torch.outer(x, y)) * y.sum()  # noqa: E731
    else:
        f = lambda x, y: (torch.sin(torch.outer(x, y)) * y.sum()).sum()  # noqa: E731
    for seed in (0, 7):
        r = finite_difference_check(f, ["x", "y"], {"x": x, "y": y}, batched=True, order=order,
                                    fast=True, seed=seed, num_projections=3)  # fmt: skip
        w = r.worst
        assert r.passed and w is not None and w.projection is not None and w.fd_error is not None
        point = [x[w.point], y[w.point]]
        along = _projection(f, ["x", "y"], point, w, order, seed, 3)
        assert along is not None
        (plus, _), (minus, _) = along(1e-6), along(-1e-6)
        assert abs((plus - minus) / 2e-6 - w.numeric) <= 1e-9 * max(1.0, abs(w.numeric))
        assert w.fd_error < 1e-6 * max(1.0, abs(w.numeric)) and not beyond_fd_error(w)


@pytest.mark.parametrize("ours", [False, True])
def test_a_function_failing_off_the_point_drops_the_estimate_and_a_bug_of_ours_is_raised(
    ours: bool,
) -> None:
    """The estimate evaluates the function beside the worst element: where the user's
    function fails there (the language's runtime error) the report goes without an
    estimate; any other exception is not the function's doing and propagates."""
    name, f, _, bad, low, high = CORPUS[0]
    estimated = _checked(f, bad, low, high)
    assert estimated.worst is not None and estimated.worst.fd_error is not None, name
    bare = replace(estimated, worst=replace(estimated.worst, fd_error=None))
    error = RuntimeError("a bug of ours") if ours else FunctionRuntimeError("log(x): x < 0")

    def failing(x: torch.Tensor) -> torch.Tensor:
        raise error

    x = torch.linspace(low, high, 4, dtype=torch.float64)
    if ours:
        with pytest.raises(RuntimeError, match="a bug of ours"):
            with_error_estimate(bare, failing, ["x"], {"x": x}, batched=False, eps=1e-6)
    else:
        same = with_error_estimate(bare, failing, ["x"], {"x": x}, batched=False, eps=1e-6)
        assert same == bare
