"""For y = x * x the Jacobian is diag(2x); the "gradient" of a vector-valued y is
the gradient of sum(y): the vjp with a vector of ones, 2x, the sum of the
Jacobian's rows."""

from __future__ import annotations

import numpy as np
import pytest

import gradserve


def run(client: gradserve.Client) -> None:
    x = np.array([1.0, -2.0, 3.0])
    jac = client.jacobian("x * x", {"x": x})
    print("jacobian of x*x =\n", jac)
    np.testing.assert_allclose(jac, np.diag(2 * x))

    vjp = client.vjp("x * x", {"x": x}, cotangent=np.ones(3))
    grad_of_sum = client.grad("sum(x * x)", {"x": x})
    print("vjp with ones   =", vjp)
    print("grad of sum(y)  =", grad_of_sum)
    np.testing.assert_allclose(vjp, 2 * x)
    np.testing.assert_allclose(grad_of_sum, 2 * x)
    np.testing.assert_allclose(jac.sum(axis=0), 2 * x)

    # grad itself refuses a vector output, and says what to use instead
    with pytest.raises(gradserve.InvalidArgumentError, match="sum"):
        client.grad("x * x", {"x": x})


def test_example(client: gradserve.Client) -> None:
    run(client)


if __name__ == "__main__":
    with gradserve.Client() as c:
        run(c)
