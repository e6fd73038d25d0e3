"""The Hessian of 2 * dot(x, x) is 4 * I; the Hessian of Rosenbrock matches
torch.autograd.functional.hessian (an independent oracle, run in-process)."""

from __future__ import annotations

import numpy as np

import gradserve

ROSENBROCK = "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)"


def oracle_rosenbrock_hessian(x: np.ndarray) -> np.ndarray:
    import torch

    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.sum(100 * (t[1:] - t[:-1] ** 2) ** 2 + (1 - t[:-1]) ** 2)

    return torch.autograd.functional.hessian(f, torch.tensor(x)).numpy()


def run(client: gradserve.Client) -> None:
    x = np.array([0.5, -1.0, 2.0])
    h = client.hessian("2 * dot(x, x)", {"x": x})
    print("hessian of 2 x.x =\n", h)
    np.testing.assert_allclose(h, 4 * np.eye(3))

    p = np.array([1.2, 0.8, -0.5, 1.0])
    hr = client.hessian(ROSENBROCK, {"x": p})
    print("hessian of rosenbrock at", p, "=\n", hr)
    np.testing.assert_allclose(hr, oracle_rosenbrock_hessian(p), rtol=1e-10)


def test_example(client: gradserve.Client) -> None:
    run(client)


if __name__ == "__main__":
    with gradserve.Client() as c:
        run(c)
