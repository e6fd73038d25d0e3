"""Registered functions (``fn="@NAME"``) through the real server and its workers.

One extra real server (joined to the session's Ray cluster) serves this module with
the example package's functions (examples/custom_gradients_package: a right
and a wrong hand-written backward) and the tests' misbehaving ones
(tests/support/registered), and a short chunk timeout for the slow one.

The references are finite differences (the service's own check, which does not
share autograd) and closed forms: d/dx xᵀAx = (A + Aᵀ)x, d/dA = x xᵀ.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from support.cluster import RayNode, ServerProcess, start_server

import gradserve

ENABLED = ("quad_form", "quad_form_buggy", "raises", "slow", "no_vmap_rule", "old_style",
           "internal_bug")  # fmt: skip
CHUNK_TIMEOUT_S = 5
POINTS = 1000


@pytest.fixture(scope="module")
def registered(ray_head: RayNode) -> Iterator[ServerProcess]:
    proc = start_server(
        ray_head,
        extra=["--functions", ",".join(ENABLED), "--chunk-timeout", str(CHUNK_TIMEOUT_S)],
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def rc(registered: ServerProcess) -> Iterator[gradserve.Client]:
    with gradserve.Client(registered.address, timeout=120) as c:
        yield c


def _points(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 3)), "A": rng.normal(size=(n, 3, 3))}


def test_every_operation_calls_a_registered_function(rc: gradserve.Client) -> None:
    p = _points(5)
    x, A = p["x"], p["A"]
    value = rc.value("@quad_form", p, batched=True)
    np.testing.assert_allclose(value, np.einsum("ni,nij,nj->n", x, A, x), rtol=1e-12)
    grads = rc.grad("@quad_form", p, batched=True)
    np.testing.assert_allclose(grads["x"], np.einsum("nij,nj->ni", A + A.transpose(0, 2, 1), x))
    np.testing.assert_allclose(grads["A"], np.einsum("ni,nj->nij", x, x))
    # the buggy backward is what autograd reports: 2 A x, not (A + Aᵀ) x
    wrong = rc.grad("@quad_form_buggy", p, batched=True, wrt="x")
    np.testing.assert_allclose(wrong, 2 * np.einsum("nij,nj->ni", A, x))
    hess = rc.hessian("@quad_form", {"x": x[0], "A": A[0]}, wrt="x")
    np.testing.assert_allclose(hess, A[0] + A[0].T, rtol=1e-10)
    result = rc.compute("@quad_form", p, ops=["value", "jacobian"], batched=True)
    assert result.metadata.execution_path == "vmap"


def test_the_check_passes_the_right_backward_over_1000_points(rc: gradserve.Client) -> None:
    for order in (1, 2):
        report = rc.check("@quad_form", _points(POINTS, seed=order), batched=True, order=order)
        assert report.passed, report.message
        assert len(report.point_passed) == POINTS
        assert report.metadata.workers == 2  # spread over both workers


def test_the_check_catches_the_missed_transpose_with_its_worst_element(
    rc: gradserve.Client,
) -> None:
    p = _points(POINTS, seed=3)
    report = rc.check("@quad_form_buggy", p, batched=True)
    assert not report.passed
    assert report.metadata.workers == 2
    # every point has a non-symmetric A, so every point fails
    assert not any(report.point_passed)
    w = report.worst
    assert w.input == "x"  # d/dA = x xᵀ is right; the bug is in d/dx
    x, A = p["x"][w.point], p["A"][w.point]
    i = w.input_index[0]
    # numeric: the true derivative; analytic: what the buggy backward returns
    assert w.numeric == pytest.approx(((A + A.T) @ x)[i], abs=1e-5)
    assert w.analytic == pytest.approx((2 * A @ x)[i], rel=1e-9)
    assert f"point {w.point}" in report.message


def test_second_order_catches_the_bug_too(rc: gradserve.Client) -> None:
    # the buggy backward's derivative is 2A, not A + Aᵀ: not even symmetric
    report = rc.check("@quad_form_buggy", _points(POINTS, seed=4), batched=True, order=2)
    assert not report.passed
    assert report.symmetric is False
    assert not any(report.point_passed)


def test_a_numeric_claim_names_a_wrong_backward_as_the_odd_one_out(
    rc: gradserve.Client,
) -> None:
    p = _points(POINTS, seed=7)
    true_grad = np.einsum("nij,nj->ni", p["A"] + p["A"].transpose(0, 2, 1), p["x"])
    report = rc.check("@quad_form_buggy", p, grad={"x": true_grad}, batched=True)
    assert not report.passed  # the claim disagrees with the buggy autograd
    assert report.autograd_matches_finite_differences is False
    assert "autograd (the function's own derivative) is the odd one out" in report.three_way
    report = rc.check("@quad_form", p, grad={"x": true_grad}, batched=True)
    assert report.passed and report.autograd_matches_finite_differences is True


def test_a_job_s_numeric_claim_gets_the_unary_call_s_three_way_verdict(
    rc: gradserve.Client,
) -> None:
    # the job's last step reads the claim back from the task's stored spec
    p = _points(300, seed=8)
    true_grad = np.einsum("nij,nj->ni", p["A"] + p["A"].transpose(0, 2, 1), p["x"])
    unary = rc.check("@quad_form_buggy", p, grad={"x": true_grad}, batched=True)
    inputs = {k: v.tolist() for k, v in p.items()}
    job = rc.submit(
        {
            "tasks": [
                {"id": "claim", "function": "@quad_form_buggy", "inputs": inputs,
                 "batched": True, "check": {"grad_values": {"x": true_grad.tolist()}}},
            ]
        }
    )  # fmt: skip
    assert job.wait(timeout=120).state == "succeeded"
    (task,) = job.results()
    assert task.check is not None and not task.check.passed
    assert task.check.autograd_matches_finite_differences is False
    assert "autograd (the function's own derivative) is the odd one out" in task.check.three_way
    assert task.check.three_way == unary.three_way


def test_a_function_without_a_vmap_rule_runs_per_point(rc: gradserve.Client) -> None:
    x = np.random.default_rng(5).normal(size=(20, 3))
    result = rc.compute("@no_vmap_rule", {"x": x}, ops=["grad"], batched=True)
    np.testing.assert_allclose(result["grad"], 3 * x**2)
    assert result.metadata.execution_path == "per_point"
    report = rc.check("@no_vmap_rule", {"x": x}, batched=True, order=2)
    assert report.passed, report.message


def test_jobs_run_registered_functions(rc: gradserve.Client) -> None:
    p = {k: v.tolist() for k, v in _points(200, seed=6).items()}
    job = rc.submit(
        {
            "tasks": [
                {"id": "right", "function": "@quad_form", "inputs": p, "batched": True,
                 "check": {"order": 2}},
                {"id": "wrong", "function": "@quad_form_buggy", "inputs": p, "batched": True,
                 "check": True},
                {"id": "gone", "function": "@not_enabled", "inputs": {"x": [1.0]},
                 "ops": ["value"]},
            ]
        }
    )  # fmt: skip
    status = job.wait(timeout=120)
    assert status.state == "succeeded", status
    right, wrong, gone = job.results()
    assert right.check is not None and right.check.passed and right.check.num_points == 200
    assert wrong.check is not None and not wrong.check.passed
    assert gone.error_code == "NOT_FOUND" and "@not_enabled" in (gone.error or "")


def test_server_info_lists_registered_functions(
    rc: gradserve.Client, registered: ServerProcess
) -> None:
    info = {f.name: f for f in rc.server_info().registered_functions}
    assert sorted(info) == sorted(ENABLED)
    assert info["quad_form"].inputs == ("x", "A")
    assert "xᵀ A x" in info["quad_form"].doc
    cli = subprocess.run(
        [sys.executable, "-m", "gradserve.cli", "--address", registered.address, "info"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "@quad_form(x, A): xᵀ A x" in cli.stdout, cli.stderr


def test_the_cli_check_of_a_registered_function_gates_ci(registered: ServerProcess) -> None:
    base = [sys.executable, "-m", "gradserve.cli", "--address", registered.address, "check"]
    point = ["-i", "x=[1, 2]", "-i", "A=[[1, 2], [0, 1]]"]
    right = subprocess.run([*base, "@quad_form", *point], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert right.returncode == 0, right.stdout + right.stderr
    wrong = subprocess.run([*base, "@quad_form_buggy", *point], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert wrong.returncode == 1 and "FAILED" in wrong.stdout


@pytest.mark.parametrize("name", ["nope", "not_enabled"])
def test_unknown_and_disabled_names_are_not_found(rc: gradserve.Client, name: str) -> None:
    # "not_enabled" is installed (tests/support/registered) but the server did not enable it
    with pytest.raises(gradserve.NotFoundError, match=f"@{name} is not a registered") as caught:
        rc.check(f"@{name}", {"x": [1.0, 2.0]})
    assert "@quad_form" in str(caught.value)  # the enabled names are listed
    with pytest.raises(gradserve.NotFoundError):
        rc.value(f"@{name}", {"x": [1.0]})


def test_a_function_that_raises_reports_type_and_message(rc: gradserve.Client) -> None:
    for call in (
        lambda: rc.value("@raises", {"x": [1.0, 2.0]}),
        lambda: rc.check("@raises", {"x": np.ones((50, 2))}, batched=True),
    ):
        with pytest.raises(gradserve.InvalidArgumentError) as caught:
            call()
        text = str(caught.value)
        assert "@raises raised ValueError: x must be positive definite" in text
        assert "Traceback" not in text and ".py" not in text
    # an autograd.Function torch.func cannot transform, explained in torch's words
    with pytest.raises(gradserve.InvalidArgumentError, match=r"@old_style raised RuntimeError.*"
                       r"setup_context"):  # fmt: skip
        rc.check("@old_style", {"x": [1.0, 2.0]})


def test_a_bug_in_the_workers_is_internal_with_a_correlation_id_in_the_log(
    rc: gradserve.Client, registered: ServerProcess
) -> None:
    # @internal_bug's backward raises RuntimeError outside the user's function: ours
    # (the server side's), so INTERNAL, never the user's INVALID_ARGUMENT
    assert rc.value("@internal_bug", {"x": [1.0, 2.0]}) == pytest.approx(5.0)
    with pytest.raises(gradserve.errors.InternalError) as caught:
        rc.grad("@internal_bug", {"x": [1.0, 2.0]})
    error = caught.value
    assert error.request_id, "an internal error carries the call's id"
    assert f"internal error {error.request_id}; see the server log" in str(error)
    assert "deliberate bug" not in str(error) and "Traceback" not in str(error)
    # the server's log line with that id carries the worker's traceback
    deadline = time.monotonic() + 10
    while f"internal error {error.request_id}: the worker failed" not in registered.output:
        assert time.monotonic() < deadline, registered.output[-3000:]
        time.sleep(0.1)
    logged = registered.output.split(f"internal error {error.request_id}: the worker failed")[1]
    assert "Traceback" in logged[:4000] and "deliberate bug in a backward" in logged[:4000]
    # a user's mistake beside it stays INVALID_ARGUMENT
    with pytest.raises(gradserve.InvalidArgumentError):
        rc.grad("@internal_bug", {"y": [1.0, 2.0]})


def test_wrong_inputs_name_the_registered_inputs(rc: gradserve.Client) -> None:
    with pytest.raises(gradserve.InvalidArgumentError, match=r"takes \(x, A\)"):
        rc.value("@quad_form", {"x": [1.0, 2.0]})


def test_a_slow_function_hits_the_chunk_timeout(
    rc: gradserve.Client, registered: ServerProcess
) -> None:
    started = time.monotonic()
    with pytest.raises(gradserve.ResourceExhaustedError, match="chunk-timeout"):
        rc.value("@slow", {"x": [1.0, 2.0]})
    assert time.monotonic() - started < CHUNK_TIMEOUT_S + 30
    # the worker is stopped: cooperatively, or killed after the grace period
    deadline = time.monotonic() + 30
    while not any(s in registered.output for s in ("replacing worker", "stopped cooperatively")):
        assert time.monotonic() < deadline, registered.output[-2000:]
        time.sleep(0.2)
    np.testing.assert_allclose(rc.value("@quad_form", {"x": [1.0, 0.0], "A": np.eye(2)}), 1.0)
