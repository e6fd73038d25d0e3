"""The Hessian of 2 * dot(x, x) is 4 * I; the Hessian of Rosenbrock matches its
closed form (tridiagonal: 1200 x_i² - 400 x_{i+1} + 2 (+ 200) on the diagonal,
-400 x_i beside it)."""

from __future__ import annotations

import numpy as np

import gradserve

ROSENBROCK = "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)"


def rosenbrock_hessian(x: np.ndarray) -> np.ndarray:
    """Closed form of the Hessian of sum(100 (x[i+1] - x[i]²)² + (1 - x[i])²)."""
    n = len(x)
    h = np.zeros((n, n))
    for i in range(n - 1):
        h[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        h[i + 1, i + 1] += 200
        h[i, i + 1] = h[i + 1, i] = -400 * x[i]
    return h


def run(client: gradserve.Client) -> None:
    x = np.array([0.5, -1.0, 2.0])
    h = client.hessian("2 * dot(x, x)", {"x": x})
    print("hessian of 2 x.x =\n", h)
    np.testing.assert_allclose(h, 4 * np.eye(3))

    p = np.array([1.2, 0.8, -0.5, 1.0])
    hr = client.hessian(ROSENBROCK, {"x": p})
    print("hessian of rosenbrock at", p, "=\n", hr)
    np.testing.assert_allclose(hr, rosenbrock_hessian(p), rtol=1e-10)


def test_example(client: gradserve.Client) -> None:
    run(client)


if __name__ == "__main__":
    with gradserve.Client() as c:
        run(c)
