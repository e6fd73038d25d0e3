"""The certificate end to end: ``verify=`` from the SDK, the CLI and a job spec reaches
the workers, and the agreement comes back in the result's metadata.

The numbers are checked against closed forms (never against torch's autograd).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gradserve
from gradserve import Certificate
from gradserve.errors import InvalidArgumentError

SCALAR = "sum(sin(x) * x)"  # gradient sin(x) + x cos(x); Hessian diag(2 cos(x) - x sin(x))
X = np.linspace(-1.0, 1.5, 4)


def _grad(x: np.ndarray) -> np.ndarray:
    return np.sin(x) + x * np.cos(x)


def _assert_certified(cert: Certificate | None, points: int) -> None:
    assert cert is not None
    assert cert.checks and cert.points == points
    assert 0 <= cert.disagreement <= cert.tolerance
    assert cert.disagreement < 1e-12  # float64 rounding


@pytest.mark.parametrize("batched", [False, True])
def test_verify_true_certifies_every_op(client: gradserve.Client, batched: bool) -> None:
    x = np.stack([X, 0.5 * X]) if batched else X
    points = 2 if batched else 1
    ones = np.ones_like(x)
    result = client.compute(
        SCALAR,
        {"x": x},
        ["value", "grad", "hessian", "hvp"],
        batched=batched,
        vector={"x": ones},
        verify=True,
    )
    _assert_certified(result.metadata.certificate, points)
    np.testing.assert_allclose(result["grad"], _grad(x), rtol=1e-12)
    diag = 2 * np.cos(x) - x * np.sin(x)
    np.testing.assert_allclose(result["hvp"], diag, rtol=1e-12, atol=1e-14)
    vec = client.compute(
        "sin(x) * x",
        {"x": x},
        ["jacobian", "vjp", "jvp"],
        batched=batched,
        cotangent=ones,
        tangents={"x": ones},
        verify=True,
    )
    _assert_certified(vec.metadata.certificate, points)
    np.testing.assert_allclose(vec["jvp"], _grad(x), rtol=1e-12)


def test_verify_false_and_the_default(client: gradserve.Client) -> None:
    off = client.compute(SCALAR, {"x": X}, ["grad", "hessian"], verify=False)
    assert off.metadata.certificate is None
    # default: small ops are not certified (the certificate would cost more than 15 %)
    small = client.compute(SCALAR, {"x": X}, ["grad", "hessian"])
    assert small.metadata.certificate is None
    # ... a Hessian with 256 columns is
    big_x = np.linspace(-1, 1, 256)
    big = client.compute(SCALAR, {"x": big_x}, ["hessian"])
    _assert_certified(big.metadata.certificate, 1)
    np.testing.assert_allclose(
        big["hessian"], np.diag(2 * np.cos(big_x) - big_x * np.sin(big_x)), atol=1e-12
    )


def test_single_op_methods_take_verify(client: gradserve.Client) -> None:
    np.testing.assert_allclose(client.grad(SCALAR, {"x": X}, verify=True), _grad(X), rtol=1e-12)
    np.testing.assert_allclose(
        client.jacobian("sin(x) * x", {"x": X}, verify=True, mode="forward"),
        np.diag(_grad(X)),
        atol=1e-14,
    )
    with pytest.raises(InvalidArgumentError, match="verify must be True, False or None"):
        client.grad(SCALAR, {"x": X}, verify="yes")  # type: ignore[arg-type]


def test_cli_verify_flag(address: str) -> None:
    def gs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gradserve.cli", "--address", address, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    on = gs("grad", SCALAR, "--input", "x=[0.5, 1.0]", "--verify")
    assert on.returncode == 0, on.stderr
    assert "certified: forward and reverse mode agree" in on.stderr
    off = gs("grad", SCALAR, "--input", "x=[0.5, 1.0]", "--no-verify")
    assert off.returncode == 0, off.stderr
    assert "certified" not in off.stderr


def test_job_spec_verify(client: gradserve.Client) -> None:
    job = client.submit(
        {
            "name": "certified",
            "tasks": [
                {
                    "id": "on",
                    "function": SCALAR,
                    "inputs": {"x": X.tolist()},
                    "ops": ["grad"],
                    "verify": True,
                },
                {
                    "id": "off",
                    "function": SCALAR,
                    "inputs": {"x": X.tolist()},
                    "ops": ["grad"],
                    "verify": False,
                },
            ],
        }
    )
    assert job.wait(timeout=120).state == "succeeded"
    on, off = list(job.results())
    _assert_certified(on.metadata.certificate, 1)
    np.testing.assert_allclose(on.outputs["grad"], _grad(X), rtol=1e-12)
    assert off.metadata.certificate is None
    with pytest.raises(InvalidArgumentError, match="verify"):
        client.submit({"tasks": [{"function": "x", "inputs": {"x": 1}, "verify": "on"}]})
