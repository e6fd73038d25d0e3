"""In sum(x * 0 + y) the output does not depend on x: x gets a zero gradient and
is named as unconnected (where other tools hand back None)."""

from __future__ import annotations

import numpy as np

import gradserve


def run(client: gradserve.Client) -> None:
    result = client.compute("sum(x * 0 + y)", {"x": [1.0, 2.0], "y": [3.0, 4.0]}, ["grad"])
    print("grad x =", result["grad"]["x"], " grad y =", result["grad"]["y"])
    print("unconnected:", result.metadata.unconnected)
    np.testing.assert_array_equal(result["grad"]["x"], [0.0, 0.0])
    np.testing.assert_array_equal(result["grad"]["y"], [1.0, 1.0])
    assert result.metadata.unconnected == ("x",)


def test_example(client: gradserve.Client) -> None:
    run(client)


if __name__ == "__main__":
    with gradserve.Client() as c:
        run(c)
