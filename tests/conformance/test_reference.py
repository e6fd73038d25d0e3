"""The independent references hold on closed forms (so the matrix can trust them)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from support import reference as R

rng = np.random.default_rng(7)
A = rng.normal(size=(3, 3))
X = rng.normal(size=3)
V = rng.normal(size=3)
U = rng.normal(size=3)


def _scalar(x: np.ndarray) -> float:
    return float(np.tanh(A @ x).sum() ** 2)


def _scalar_grad(x: np.ndarray) -> np.ndarray:
    t = np.tanh(A @ x)
    return np.asarray(2 * t.sum() * (A.T @ (1 - t**2)))


def _scalar_hess(x: np.ndarray) -> np.ndarray:
    t = np.tanh(A @ x)
    d = A.T @ (1 - t**2)
    return np.asarray(2 * np.outer(d, d) + 2 * t.sum() * (A.T * (-2 * t * (1 - t**2))) @ A)


def _vector(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.sin(A @ x))


def _vector_jac(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.cos(A @ x)[:, None] * A)


def test_doctests() -> None:
    result = doctest.testmod(R, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("vectorized", [False, True])
def test_first_and_second_derivatives_against_closed_forms(vectorized: bool) -> None:
    if vectorized:
        f = lambda xs: np.tanh(xs @ A.T).sum(-1) ** 2  # noqa: E731
        F = lambda xs: np.sin(xs @ A.T)  # noqa: E731
    else:
        f, F = _scalar, _vector
    J = _vector_jac(X)
    H = _scalar_hess(X)
    np.testing.assert_allclose(R.gradient(f, X, vectorized=vectorized), _scalar_grad(X), atol=1e-10)
    np.testing.assert_allclose(R.hessian(f, X, vectorized=vectorized), H, atol=1e-8)
    np.testing.assert_allclose(R.hvp(f, X, V, vectorized=vectorized), H @ V, atol=1e-8)
    np.testing.assert_allclose(R.jacobian(F, X, vectorized=vectorized), J, atol=1e-11)
    np.testing.assert_allclose(R.jvp(F, X, V, vectorized=vectorized), J @ V, atol=1e-11)
    np.testing.assert_allclose(R.vjp(F, X, U, vectorized=vectorized), U @ J, atol=1e-11)


def test_error_estimates_bound_the_actual_error_loosely() -> None:
    jac, err = R.jacobian_error(_vector, X)
    assert np.all(np.abs(jac - _vector_jac(X)) <= 10 * err + 1e-13)
    hess, herr = R.hessian_error(_scalar, X)
    assert np.all(np.abs(hess - _scalar_hess(X)) <= 10 * herr + 1e-9)


def test_complex_step_is_exact_to_rounding() -> None:
    np.testing.assert_allclose(R.complex_step_jacobian(_vector, X), _vector_jac(X), rtol=1e-15)
    f = lambda x: np.sum(np.exp(x) * np.sin(x))  # noqa: E731
    expected = np.exp(X) * (np.sin(X) + np.cos(X))
    np.testing.assert_allclose(R.complex_step_gradient(f, X), expected, rtol=1e-15)


def test_matrix_inputs_keep_their_shapes() -> None:
    M = rng.normal(size=(2, 2)) + 3 * np.eye(2)
    # d det(M) / dM = det(M) M^-T (Jacobi's formula)
    grad = R.gradient(np.linalg.det, M)
    np.testing.assert_allclose(grad, np.linalg.det(M) * np.linalg.inv(M).T, atol=1e-9)
    assert R.hessian(np.linalg.det, M).shape == (2, 2, 2, 2)


def test_packed_several_inputs() -> None:
    inputs = {"x": X, "A": A}
    p = R.Packed(lambda x, A: np.sin(A @ x), inputs, ["x", "A"])
    jac = p.split(R.jacobian(p.f, p.x))
    np.testing.assert_allclose(jac["x"], _vector_jac(X), atol=1e-11)
    # d sin(A x)_i / d A_jk = cos(A x)_i [i == j] x_k
    expected_a = np.einsum("ij,k->ijk", np.diag(np.cos(A @ X)), X)
    np.testing.assert_allclose(jac["A"], expected_a, atol=1e-11)
    np.testing.assert_allclose(p.flatten(p.split(p.x)), p.x)
    pv = R.Packed(
        lambda x, A: np.sin(np.einsum("...ij,...j->...i", A, x)), inputs, ["x"], vectorized=True
    )
    np.testing.assert_allclose(R.jacobian(pv.f, pv.x, vectorized=True), _vector_jac(X), atol=1e-11)


def test_from_torch_builds_no_graph() -> None:
    import torch

    seen = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.is_grad_enabled())
        return torch.sin(x)

    np.testing.assert_allclose(R.jacobian(R.from_torch(fn), X), np.diag(np.cos(X)), atol=1e-11)
    assert seen and not any(seen)
    batched = R.from_torch(fn, vectorized=True)
    assert batched(np.stack([X, X])).shape == (2, 3)
