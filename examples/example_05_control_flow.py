"""A function with while and if: f(a) = k * a for a k that depends on a, so the
gradient of sum(f(a)) (the vjp with ones) is f(a) / a. Under vmap the data-
dependent branches cannot be vectorised; the service runs such points one at a
time and says so."""

from __future__ import annotations

import numpy as np

import gradserve

F = """
def f(a):
    b = a * 2
    while norm(b) < 1000:
        b = b * 2
    if sum(b) > 0:
        c = b
    else:
        c = 100 * b
    return c
"""


def run(client: gradserve.Client) -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=3)
    fa = client.value(F, {"a": a})
    g = client.vjp(F, {"a": a}, cotangent=np.ones(3))
    print("a          =", a)
    print("f(a) / a   =", fa / a)
    print("grad sum f =", g)
    np.testing.assert_allclose(g, fa / a, rtol=1e-12)

    points = rng.normal(size=(8, 3))
    batch = client.compute(F, {"a": points}, ["value", "vjp"], batched=True,
                           cotangent=np.ones((8, 3)))  # fmt: skip
    np.testing.assert_allclose(batch["vjp"], batch["value"] / points, rtol=1e-12)
    print("batched: ran", batch.metadata.execution_path, "-", *batch.metadata.warnings)
    assert batch.metadata.execution_path == "per_point"


def test_example(client: gradserve.Client) -> None:
    run(client)


if __name__ == "__main__":
    with gradserve.Client() as c:
        run(c)
