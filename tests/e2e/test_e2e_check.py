"""Gradient checks end to end: finite differences, claimed derivatives, kinks, sampling."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

import gradserve
from gradserve_workers.check import finite_difference_check
from gradserve_workers.lang import compile_function


def test_correct_function_passes_with_a_readable_report(client: gradserve.Client) -> None:
    report = client.check("sum(sin(x) * x)", {"x": [0.3, -1.2, 2.0]})
    assert report.passed, report.message
    assert report.kind == "finite_difference"
    assert report.max_abs_error < 1e-6
    assert report.worst is not None and report.worst.input == "x"
    assert (report.atol, report.rtol, report.eps) == (1e-5, 1e-3, 1e-6)
    assert "pass" in report.message.lower()


def test_vector_output_checks_the_whole_jacobian(client: gradserve.Client) -> None:
    report = client.check("x * y[0] + sin(x)", {"x": [0.1, 0.2], "y": [3.0, 4.0]})
    assert report.passed, report.message


@pytest.mark.parametrize(
    ("claim", "bad_index"),
    [
        ("4 * x", None),  # right
        ("3 * x", (3,)),  # wrong everywhere: worst where |x| is largest
        ("4 * x + where(x > 2.5, 1, 0)", (3,)),  # wrong at one element
    ],
)
def test_claimed_gradient(client: gradserve.Client, claim: str, bad_index: tuple | None) -> None:
    x = [0.5, -1.0, 2.0, 3.0]
    report = client.check("2 * dot(x, x)", {"x": x}, grad=claim)
    assert report.kind == "claimed_grad"
    if bad_index is None:
        assert report.passed, report.message
        return
    assert not report.passed
    assert report.worst is not None
    assert report.worst.input_index == bad_index
    assert report.worst.analytic == pytest.approx(4 * x[bad_index[0]])
    assert str(report.worst.numeric)[:3] in report.message or "claimed" in report.message


def test_claims_for_several_inputs(client: gradserve.Client) -> None:
    inputs = {"x": [1.0, 2.0], "y": [3.0, -1.0]}
    ok = client.check("dot(x, y)", inputs, grad={"x": "y", "y": "x"})
    assert ok.passed, ok.message
    bad = client.check("dot(x, y)", inputs, grad={"x": "y", "y": "2 * x"})
    assert not bad.passed and bad.worst is not None and bad.worst.input == "y"


def test_claim_with_wrt(client: gradserve.Client) -> None:
    report = client.check("dot(x, y)", {"x": [1.0, 2.0], "y": [3.0, 4.0]}, grad="x", wrt="y")
    assert report.passed, report.message


@pytest.mark.parametrize("fn", ["sum(relu(x))", "sum(abs(x))"])
def test_kink_is_reported_as_not_differentiable(client: gradserve.Client, fn: str) -> None:
    report = client.check(fn, {"x": [0.0, 1.0]})
    assert report.non_differentiable
    assert not report.passed
    assert "differentiable" in report.message
    assert report.kink is not None and report.kink.input_index == (0,)
    assert report.kink.at == 0.0 and report.kink.right != report.kink.left


def test_float32_inputs_do_not_fail_falsely(client: gradserve.Client) -> None:
    x = np.random.default_rng(0).normal(size=50).astype(np.float32)
    report = client.check("sum(exp(x) * sin(x)) + dot(x, x)", {"x": x})
    assert report.passed, report.message


def test_second_order_check(client: gradserve.Client) -> None:
    report = client.check("sum(x ** 4) + x[0] * x[1]", {"x": [0.5, -0.3, 1.1]}, order=2)
    assert report.passed, report.message
    assert report.order == 2 and report.symmetric is True


def test_claimed_hessian(client: gradserve.Client) -> None:
    good = client.check("2 * dot(x, x)", {"x": [1.0, 2.0]}, hessian="4 * eye(2)")
    bad = client.check("2 * dot(x, x)", {"x": [1.0, 2.0]}, hessian="3 * eye(2)")
    assert good.passed, good.message
    assert not bad.passed


def test_sampled_points_give_per_point_verdicts(client: gradserve.Client) -> None:
    sample = gradserve.uniform(-2.0, 2.0, shape=(3,), count=40, seed=11)
    right = client.check("sum(x ** 3)", sample=sample, grad="3 * x ** 2")
    assert right.passed and right.num_points == 40 and len(right.point_passed) == 40
    # wrong only where x[0] > 1: a subset of the points fails, and the worst is one of them
    wrong = client.check("sum(x ** 3)", sample=sample, grad="3 * x ** 2 + where(x > 1, 1, 0)")
    assert not wrong.passed
    assert 0 < sum(wrong.point_passed) < 40
    assert wrong.worst is not None and not wrong.point_passed[wrong.worst.point]


def test_batched_check_names_the_failing_point(client: gradserve.Client) -> None:
    x = np.zeros((5, 2)) + 1.0
    x[3] = [0.0, 1.0]  # relu's kink at point 3 only
    report = client.check("sum(relu(x))", {"x": x}, batched=True)
    assert report.point_passed == (True, True, True, False, True)
    assert report.worst is not None and report.worst.point == 3


def test_fast_mode_on_a_large_input(client: gradserve.Client) -> None:
    x = np.random.default_rng(2).normal(size=3000)
    report = client.check("sum(sin(x) * x)", {"x": x}, fast=True)
    assert report.mode == "fast" and report.passed, report.message
    wrong = client.check("sum(sin(x) * x)", {"x": x}, grad="cos(x) * x", fast=True)
    assert not wrong.passed


def test_bad_claim_is_a_spec_error_with_position(client: gradserve.Client) -> None:
    with pytest.raises(gradserve.InvalidSpecError):
        client.check("sum(x)", {"x": [1.0]}, grad="ones(")
    with pytest.raises(gradserve.InvalidArgumentError, match="order"):
        client.check("sum(x)", {"x": [1.0]}, order=3)
    with pytest.raises(gradserve.InvalidArgumentError, match=r"nothing to check: x has shape"):
        client.check("x * 2", {"x": np.zeros(0)})
    assert client.check("sum(x)", {"x": [1.0]}).passed  # and the server goes on serving


def test_async_client_checks_too(address: str) -> None:
    import asyncio

    async def run() -> tuple[gradserve.CheckReport, gradserve.CheckReport]:
        async with gradserve.AsyncClient(address, timeout=120) as client:
            return await asyncio.gather(
                client.check("2 * dot(x, x)", {"x": [1.0, 2.0]}, grad="4 * x"),
                client.check("2 * dot(x, x)", {"x": [1.0, 2.0]}, grad="3 * x"),
            )

    right, wrong = asyncio.run(run())
    assert right.passed and not wrong.passed
    assert wrong.worst is not None and wrong.worst.input_index == (1,)


def test_large_full_check_in_a_worker(client: gradserve.Client) -> None:
    """From 256 inputs the worker evaluates the perturbations one-hot (in the Ray
    actor, not only in-process): a correct function passes, a kink is found at its
    element, and data-dependent control flow still works (the dense fallback)."""
    x = np.linspace(-1.0, 1.0, 301)  # x[150] == 0
    ok = client.check("sum(sin(x) * x) + 2 * dot(x, x)", {"x": x}, fast=False)
    assert ok.passed and ok.mode == "full", ok.message
    assert ok.max_abs_error < 1e-6
    kinked = client.check("sum(relu(x)) + sum(x ** 2)", {"x": x}, fast=False)
    assert not kinked.passed and kinked.non_differentiable
    assert kinked.kink is not None and kinked.kink.input_index == (150,)
    branchy = "def f(x):\n    if sum(x) > 100:\n        return sum(x)\n    return sum(x * x)"
    report = client.check(branchy, {"x": x}, fast=False)
    assert report.passed, report.message


def test_function_with_a_large_intermediate_is_served_in_bounded_chunks(
    client: gradserve.Client,
) -> None:
    """A small request whose function builds a 4M-element tensor per point: served
    (chunked by the measured intermediate), not an out-of-memory worker."""
    x = np.linspace(-1.0, 1.0, 24 * 2000).reshape(24, 2000)
    g = client.grad("sum(outer(x, x))", {"x": x}, batched=True)
    np.testing.assert_allclose(g, 2 * x.sum(axis=1, keepdims=True).repeat(2000, axis=1))
    report = client.check("sum(outer(x, x))", {"x": x[0, :400]}, fast=False)
    assert report.passed, report.message


def _split_in_two(client: gradserve.Client, source: str, inputs: dict, **claims: str) -> Any:
    """A check the server splits over its two workers: asked again while one of them is
    busy or still starting (a worker replaced by an earlier test), it runs whole."""
    for _ in range(20):
        report = client.check(source, inputs, **claims)
        if report.metadata.chunks == 2:
            assert report.metadata.workers == 2, report.metadata
            assert report.metadata.lane == "ray"  # a split check never takes the fast lane
            return report
        time.sleep(0.5)
    raise AssertionError(f"{source}: never split across the two workers: {report.metadata}")


def test_a_large_check_is_shared_by_the_idle_workers(client: gradserve.Client) -> None:
    """A large check at one point is split by input elements across the idle workers
    (two here) and says so in its metadata; the merged report is the one the worker's
    whole check gives in-process (the oracle), kink included."""
    x = np.random.default_rng(5).uniform(-2.0, 2.0, 1200)
    x[700] = 0.0
    for source in ("cumsum(sin(x))", "cumsum(abs(x))"):
        shared = _split_in_two(client, source, {"x": x})
        whole = finite_difference_check(compile_function(source), ["x"], {"x": torch.tensor(x)})
        assert shared.mode == whole.mode == "full"
        assert shared.passed == whole.passed and shared.point_passed == whole.point_passed
        assert shared.worst is not None and whole.worst is not None
        assert (shared.worst.output_index, shared.worst.input_index) == (
            whole.worst.output_index, whole.worst.input_index,
        )  # fmt: skip
        assert (shared.worst.analytic, shared.worst.numeric) == (
            whole.worst.analytic, whole.worst.numeric,
        )  # fmt: skip
        assert shared.max_abs_error == whole.max_abs_error
        assert shared.max_rel_error == whole.max_rel_error
        assert shared.message == whole.message
    assert not shared.passed and shared.kink is not None and shared.kink.input_index == (700,)
    assert shared.metadata.compute_seconds > 0 and shared.metadata.wall_seconds > 0


def test_a_cheap_check_is_split_once_then_kept_whole(client: gradserve.Client) -> None:
    """The server does not know a function's cost before its first check: that one is
    split; once it has taken less than 10 ms of worker time (a scalar function's
    check usually does), the next one runs on one worker, and once that one is
    measured under the fast lane's budget, the next in the server's fast lane."""
    x = np.random.default_rng(6).uniform(-2.0, 2.0, 1000)
    first, second, third = (client.check("sum(sin(x) * x) + 1", {"x": x}) for _ in range(3))
    assert first.metadata.chunks in (1, 2)  # 1 if a worker was busy (being replaced)
    if first.metadata.compute_seconds < 0.010:  # a scalar check's usually is
        assert second.metadata.chunks == 1
        if second.metadata.compute_seconds < 0.05:  # the fast lane's default budget
            assert third.metadata.lane == "fast" and third.metadata.chunks == 1
    assert first.passed and second.passed and first.worst == second.worst == third.worst
    assert first.max_abs_error == second.max_abs_error == third.max_abs_error


def test_a_large_claimed_jacobian_is_shared_by_the_idle_workers(client: gradserve.Client) -> None:
    """The autograder's large case: a wrong claimed Jacobian at one point, split by
    input elements; the worst element is where the claim misses the most (closed
    form: the largest |cos(x_i)| below the diagonal), as the whole check names it."""
    x = np.random.default_rng(7).uniform(-2.0, 2.0, 1000)
    wrong = _split_in_two(client, "cumsum(sin(x))", {"x": x}, jacobian="diag(cos(x))")
    right = client.check("cumsum(sin(x))", {"x": x}, jacobian="tril(outer(ones(1000), cos(x)))")
    assert right.passed and not wrong.passed and wrong.kind == "claimed_jacobian"
    i = int(np.argmax(np.abs(np.cos(x[:-1]))))
    assert wrong.worst is not None
    assert (wrong.worst.output_index, wrong.worst.input_index) == ((i + 1,), (i,))
    assert wrong.worst.numeric == 0.0
    assert wrong.worst.analytic == pytest.approx(np.cos(x[i]), rel=1e-12)
