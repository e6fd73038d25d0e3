"""Every operation end to end, against closed forms (held to Richardson-extrapolated
central differences below, never to torch's autograd): one and several inputs,
float32 and float64, batched and not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from support import reference as R

import gradserve

ONE = "sum(sin(x) * x) + dot(x, x) ** 2"  # scalar, one input


def one_np(x: np.ndarray) -> float:
    return float(np.sum(np.sin(x) * x) + np.dot(x, x) ** 2)


def one_grad(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.sin(x) + x * np.cos(x) + 4 * np.dot(x, x) * x)


def one_hess(x: np.ndarray) -> np.ndarray:
    n = len(x)
    return np.asarray(
        np.diag(2 * np.cos(x) - x * np.sin(x)) + 4 * np.dot(x, x) * np.eye(n) + 8 * np.outer(x, x)
    )


TWO = "sum(exp(x) * y) + dot(x, y) ** 2"  # scalar, two inputs


def two_np(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.exp(x) * y) + np.dot(x, y) ** 2)


def two_grad(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.dot(x, y)
    return np.exp(x) * y + 2 * s * y, np.exp(x) + 2 * s * x


def two_hess(x: np.ndarray, y: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    s, n = np.dot(x, y), len(x)
    xy = np.diag(np.exp(x)) + 2 * np.outer(y, x) + 2 * s * np.eye(n)
    return {
        "x": {"x": np.diag(np.exp(x) * y) + 2 * np.outer(y, y), "y": xy},
        "y": {"x": xy.T, "y": 2 * np.outer(x, x)},
    }


VEC = "sin(x) * y[0] + x ** 3"  # vector-valued, two inputs (y of shape (2,))


def vec_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray(np.sin(x) * y[0] + x**3)


def vec_jac(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    jy = np.zeros((len(x), 2))
    jy[:, 0] = np.sin(x)
    return np.diag(np.cos(x) * y[0] + 3 * x**2), jy


TOL = {"float64": 1e-10, "float32": 2e-4}


def _points(rng: np.random.Generator, n: int | None, *shape: int) -> np.ndarray:
    return rng.normal(size=shape if n is None else (n, *shape))


def _per_point(fn: Callable[..., Any], arrays: list[np.ndarray], n: int | None) -> Any:
    """Apply a closed form to each point of a batch (float64 of the inputs given)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    if n is None:
        return fn(*arrays)
    outs = [fn(*(a[i] for a in arrays)) for i in range(n)]
    if isinstance(outs[0], tuple):
        return tuple(np.stack([o[k] for o in outs]) for k in range(len(outs[0])))
    return np.stack(outs)


def test_closed_forms_match_difference_references() -> None:
    """The closed forms the tests below rely on, held to Richardson differences."""
    rng = np.random.default_rng(0)
    x, y, y2 = rng.normal(size=3), rng.normal(size=3), rng.normal(size=2)
    np.testing.assert_allclose(R.gradient(one_np, x), one_grad(x), atol=1e-9)
    np.testing.assert_allclose(R.hessian(one_np, x), one_hess(x), atol=1e-7)
    p = R.Packed(two_np, {"x": x, "y": y})
    g = p.split(R.gradient(p.f, p.x))
    want_g = two_grad(x, y)
    np.testing.assert_allclose(g["x"], want_g[0], atol=1e-9)
    np.testing.assert_allclose(g["y"], want_g[1], atol=1e-9)
    rows = p.split(R.hessian(p.f, p.x), axis=0)
    want_h = two_hess(x, y)
    for a in "xy":
        for b, block in p.split(rows[a]).items():
            np.testing.assert_allclose(block, want_h[a][b], atol=1e-7)
    q = R.Packed(vec_np, {"x": x, "y": y2})
    j = q.split(R.jacobian(q.f, q.x))
    want_j = vec_jac(x, y2)
    np.testing.assert_allclose(j["x"], want_j[0], atol=1e-9)
    np.testing.assert_allclose(j["y"], want_j[1], atol=1e-9)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [None, 7])
def test_grad_and_hessian_of_one_input(client: gradserve.Client, dtype: str, n: int | None) -> None:
    rng = np.random.default_rng(1)
    x = _points(rng, n, 3).astype(dtype)
    batched = n is not None
    res = client.compute(ONE, {"x": x}, ["value", "grad", "hessian"], batched=batched)
    want_v = _per_point(one_np, [x], n)
    want_g = _per_point(one_grad, [x], n)
    want_h = _per_point(one_hess, [x], n)
    tol = TOL[dtype]
    assert res["grad"].dtype == np.dtype(dtype)
    np.testing.assert_allclose(res["value"], want_v, rtol=tol)
    np.testing.assert_allclose(res["grad"], want_g, rtol=tol, atol=tol)
    np.testing.assert_allclose(res["hessian"], want_h, rtol=tol, atol=tol)
    assert res["hessian"].shape == ((n,) if batched else ()) + (3, 3)


@pytest.mark.parametrize("n", [None, 5])
def test_several_inputs_grad_hessian_blocks_and_wrt(
    client: gradserve.Client, n: int | None
) -> None:
    rng = np.random.default_rng(2)
    x, y = _points(rng, n, 3), _points(rng, n, 3)
    batched = n is not None
    g = client.grad(TWO, {"x": x, "y": y}, batched=batched)
    h = client.hessian(TWO, {"x": x, "y": y}, batched=batched)
    want_g = _per_point(two_grad, [x, y], n)
    np.testing.assert_allclose(g["x"], want_g[0], rtol=1e-10)
    np.testing.assert_allclose(g["y"], want_g[1], rtol=1e-10)
    points = [two_hess(x, y)] if n is None else [two_hess(x[i], y[i]) for i in range(n)]
    for a in "xy":
        for b in "xy":
            want = points[0][a][b] if n is None else np.stack([p[a][b] for p in points])
            np.testing.assert_allclose(h[a][b], want, rtol=1e-10, atol=1e-12)
    only_y = client.grad(TWO, {"x": x, "y": y}, wrt="y", batched=batched)
    np.testing.assert_allclose(only_y, want_g[1], rtol=1e-10)


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
@pytest.mark.parametrize("n", [None, 4])
def test_jacobian_of_vector_function(client: gradserve.Client, mode: str, n: int | None) -> None:
    rng = np.random.default_rng(3)
    x, y = _points(rng, n, 3), _points(rng, n, 2)
    res = client.compute(VEC, {"x": x, "y": y}, ["jacobian"], batched=n is not None, mode=mode)
    want = _per_point(vec_jac, [x, y], n)
    np.testing.assert_allclose(res["jacobian"]["x"], want[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res["jacobian"]["y"], want[1], rtol=1e-10, atol=1e-12)
    assert res["jacobian"]["x"].shape == ((n,) if n else ()) + (3, 3)
    assert res.metadata.jacobian_mode in ("forward", "reverse")
    if mode != "auto":
        assert res.metadata.jacobian_mode == mode


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [None, 6])
def test_vjp_jvp_hvp(client: gradserve.Client, dtype: str, n: int | None) -> None:
    rng = np.random.default_rng(4)
    batched = n is not None
    x, y = _points(rng, n, 3).astype(dtype), _points(rng, n, 2).astype(dtype)
    v = _points(rng, n, 3).astype(dtype)
    tx, ty = _points(rng, n, 3).astype(dtype), _points(rng, n, 2).astype(dtype)
    tol = TOL[dtype]
    inputs = {"x": x, "y": y}
    vjp = client.vjp(VEC, inputs, cotangent=v, batched=batched)
    jvp = client.jvp(VEC, inputs, {"x": tx, "y": ty}, batched=batched)

    def vjp_np(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        jx, jy = vec_jac(a, b)
        return c @ jx, c @ jy

    def jvp_np(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
        jx, jy = vec_jac(a, b)
        return np.asarray(jx @ c + jy @ d)

    want_vjp = _per_point(vjp_np, [x, y, v], n)
    want_jvp = _per_point(jvp_np, [x, y, tx, ty], n)
    np.testing.assert_allclose(vjp["x"], want_vjp[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(vjp["y"], want_vjp[1], rtol=tol, atol=tol)
    np.testing.assert_allclose(jvp, want_jvp, rtol=tol, atol=tol)

    xx = _points(rng, n, 3).astype(dtype)
    hvp = client.hvp(ONE, {"x": xx}, v, batched=batched)
    want_hvp = _per_point(lambda a, c: one_hess(a) @ c, [xx, v], n)
    np.testing.assert_allclose(hvp, want_hvp, rtol=tol * 10, atol=tol * 10)


def test_grad_of_vector_output_explains_vjp(client: gradserve.Client) -> None:
    with pytest.raises(gradserve.InvalidArgumentError) as info:
        client.grad("x * x", {"x": [1.0, 2.0]})
    message = str(info.value)
    assert "sum" in message and ("vjp" in message or "jacobian" in message)


def test_vjp_without_cotangent_and_bad_tangent_shape(client: gradserve.Client) -> None:
    with pytest.raises(gradserve.InvalidArgumentError, match="tangent"):
        client.jvp("x * 2", {"x": [1.0, 2.0]}, {"x": [1.0]})
    with pytest.raises(gradserve.InvalidArgumentError, match="wrt"):
        client.grad("sum(x)", {"x": [1.0]}, wrt="z")


def test_unknown_input_name_suggests_the_right_one(client: gradserve.Client) -> None:
    with pytest.raises(gradserve.InvalidArgumentError, match="did you mean 'x'"):
        client.value("sum(x)", {"xx": [1.0]})


def test_batched_inputs_must_agree(client: gradserve.Client) -> None:
    with pytest.raises(gradserve.InvalidArgumentError, match="disagree"):
        client.value("x + y", {"x": np.ones((3, 2)), "y": np.ones((4, 2))}, batched=True)


def test_large_batch_is_split_over_all_actors(client: gradserve.Client) -> None:
    x = np.random.default_rng(9).normal(size=(60_000, 10))
    res = client.compute("sum(x ** 3) / 3", {"x": x}, ["grad"], batched=True)
    np.testing.assert_allclose(res["grad"], x**2, rtol=1e-12)
    assert res.metadata.chunks >= 2
    assert res.metadata.workers == 2


def test_chunks_at_and_over_the_packed_size_agree(client: gradserve.Client) -> None:
    """A chunk with arrays up to PACKED_CALL_MAX_BYTES reaches its actor as one packed
    message, a larger one as Ray arguments: both compute the same closed forms, as
    computations and as checks."""
    from gradserve_workers.tasks import PACKED_CALL_MAX_BYTES

    rng = np.random.default_rng(21)
    for n in (PACKED_CALL_MAX_BYTES // 8, PACKED_CALL_MAX_BYTES // 8 + 1):
        x = rng.uniform(-2, 2, n)
        res = client.compute("sum(x ** 3) / 3", {"x": x}, ["value", "grad"])
        np.testing.assert_allclose(res["grad"], x**2, rtol=1e-13)
        np.testing.assert_allclose(res["value"], np.sum(x**3) / 3, rtol=1e-12)
        assert client.check("sum(x ** 3) / 3", {"x": x}, grad="x ** 2").passed
        wrong = client.check("sum(x ** 3) / 3", {"x": x}, grad="x ** 2 + 1e-2 * (x > 1)")
        assert not wrong.passed and wrong.worst is not None
        assert x[wrong.worst.input_index[0]] > 1
