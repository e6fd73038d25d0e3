"""Claims that are numbers (derivatives computed elsewhere) through the real server.

Each is checked against the service's autograd and, beside it, autograd against
finite differences; the report says which of the three disagree. The claims here
are closed forms computed with NumPy; the function of the three-way case is a
registered one whose autograd is wrong (see test_e2e_registered.py's server).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import gradserve

CUBE = "sum(x ** 3)"


def test_a_right_claim_at_one_point(client: gradserve.Client) -> None:
    x = np.array([1.0, -2.0, 0.5])
    report = client.check(CUBE, {"x": x}, grad=3 * x**2)
    assert report.passed, report.message
    assert report.autograd_matches_finite_differences is True
    assert report.three_way == "The claim, autograd and finite differences agree."


def test_a_wrong_claim_is_the_odd_one_out(client: gradserve.Client) -> None:
    x = np.array([1.0, -2.0, 3.0])
    report = client.check(CUBE, {"x": x}, grad=2 * x**2)  # the exponent's factor wrong
    assert not report.passed
    assert report.worst is not None
    assert (report.worst.input_index, report.worst.numeric, report.worst.analytic) == (
        (2,),
        18.0,
        27.0,
    )
    assert report.autograd_matches_finite_differences is True
    assert "the claim is wrong" in report.three_way
    assert report.three_way in report.message


def test_batched_claims_per_point_over_several_inputs(client: gradserve.Client) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    fn = "sum(x * y ** 2)"
    right = {"x": y**2, "y": 2 * x * y}
    report = client.check(fn, {"x": x, "y": y}, grad=right, batched=True)
    assert report.passed and len(report.point_passed) == 300
    wrong = {"x": y**2, "y": 2 * x * y}
    wrong["y"][17, 1] += 0.5  # one element of one point
    report = client.check(fn, {"x": x, "y": y}, grad=wrong, batched=True)
    assert not report.passed
    assert [i for i, ok in enumerate(report.point_passed) if not ok] == [17]
    assert report.worst is not None
    assert (report.worst.point, report.worst.input, report.worst.input_index) == (17, "y", (1,))


def test_jacobian_and_hessian_claims(client: gradserve.Client) -> None:
    x = np.array([0.5, 1.5, -1.0])
    assert client.check("x * x", {"x": x}, jacobian=np.diag(2 * x)).passed
    assert client.check(CUBE, {"x": x}, hessian=np.diag(6 * x)).passed
    report = client.check(CUBE, {"x": x}, hessian=np.diag(3 * x))
    assert not report.passed and "the claim is wrong" in report.three_way


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"grad": np.ones(4)}, r"has shape \(4,\), expected \(3,\)"),
        ({"hessian": np.ones((3,))}, r"expected \(3, 3\)"),
        ({"jacobian": np.ones((3, 2))}, r"expected out_shape \+ \(3,\)"),
        ({"grad": np.array([1.0, np.nan, 0.0])}, "NaN or Inf"),
    ],
)
def test_claims_of_the_wrong_shape_are_refused(
    client: gradserve.Client, kwargs: dict[str, np.ndarray], expected: str
) -> None:
    with pytest.raises(gradserve.InvalidArgumentError, match=expected):
        client.check(CUBE, {"x": [1.0, 2.0, 3.0]}, **kwargs)  # type: ignore[arg-type]


def test_batched_claims_need_one_per_point(client: gradserve.Client) -> None:
    x = np.ones((10, 3))
    with pytest.raises(gradserve.InvalidArgumentError, match="leading dimension of 10"):
        client.check(CUBE, {"x": x}, grad=np.ones((9, 3)), batched=True)


def test_a_job_with_a_npy_claim_and_an_inline_one(client: gradserve.Client, tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(300, 2))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "grad.npy", 3 * x**2)
    np.save(tmp_path / "wrong.npy", 2 * x**2)
    job_file = tmp_path / "job.yaml"
    tasks = [
        {"id": "file", "function": CUBE, "inputs": {"x": {"npy": "x.npy"}}, "batched": True,
         "check": {"grad_values": "grad.npy"}},
        {"id": "wrong", "function": CUBE, "inputs": {"x": {"npy": "x.npy"}}, "batched": True,
         "check": {"grad_values": {"x": "wrong.npy"}}},
        {"id": "inline", "function": CUBE, "inputs": {"x": [1.0, 2.0]},
         "check": {"grad_values": [3.0, 12.0]}},
    ]  # fmt: skip
    job_file.write_text(yaml.safe_dump({"tasks": tasks}))
    job = client.submit(str(job_file))
    assert job.wait(timeout=120).state == "succeeded"
    right, wrong, inline = job.results()
    assert right.check is not None and right.check.passed and right.check.num_points == 300
    assert right.check.autograd_matches_finite_differences is True
    assert wrong.check is not None and not wrong.check.passed
    assert "the claim is wrong" in wrong.check.three_way
    assert inline.check is not None and inline.check.passed


def test_the_cli_takes_a_grad_file(address: str, tmp_path: Path) -> None:
    x = np.array([1.0, 2.0])
    np.save(tmp_path / "right.npy", 3 * x**2)
    np.save(tmp_path / "wrong.npy", 3 * x)
    base = [sys.executable, "-m", "gradserve.cli", "--address", address, "check", CUBE,
            "-i", "x=[1, 2]"]  # fmt: skip
    ok = subprocess.run([*base, "--grad-file", str(tmp_path / "right.npy")],
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "finite differences agree" in ok.stdout
    bad = subprocess.run([*base, "--grad-file", f"x={tmp_path / 'wrong.npy'}"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1
    assert "the claim is wrong" in bad.stdout
