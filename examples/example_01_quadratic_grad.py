"""The gradient of 2 * dot(x, x) is 4 * x."""

from __future__ import annotations

import numpy as np

import gradserve


def run(client: gradserve.Client) -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0])
    g = client.grad("2 * dot(x, x)", {"x": x})
    print("x        =", x)
    print("grad     =", g)
    np.testing.assert_allclose(g, 4 * x)
    print("grad == 4 * x: yes")


def test_example(client: gradserve.Client) -> None:
    run(client)


if __name__ == "__main__":
    with gradserve.Client() as c:
        run(c)
