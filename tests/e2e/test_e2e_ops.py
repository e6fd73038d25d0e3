"""Every operation end to end, against torch.autograd.functional run in-process as
an independent oracle: one and several inputs, float32 and float64, batched and not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import functional as AF

import gradserve

ONE = "sum(sin(x) * x) + dot(x, x) ** 2"  # scalar, one input


def one_torch(x: torch.Tensor) -> torch.Tensor:
    return torch.sum(torch.sin(x) * x) + torch.dot(x, x) ** 2


TWO = "sum(exp(x) * y) + dot(x, y) ** 2"  # scalar, two inputs


def two_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sum(torch.exp(x) * y) + torch.dot(x, y) ** 2


VEC = "sin(x) * y[0] + x ** 3"  # vector-valued, two inputs (y of shape (2,))


def vec_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * y[0] + x**3


TOL = {"float64": 1e-10, "float32": 2e-4}


def _points(rng: np.random.Generator, n: int | None, *shape: int) -> np.ndarray:
    return rng.normal(size=shape if n is None else (n, *shape))


def _per_point(fn, arrays, n):  # type: ignore[no-untyped-def]
    """Apply an in-process oracle to each point of a batch."""
    if n is None:
        return fn(*arrays)
    outs = [fn(*(a[i] for a in arrays)) for i in range(n)]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack([o[k] for o in outs]) for k in range(len(outs[0])))
    return torch.stack(outs)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [None, 7])
def test_grad_and_hessian_of_one_input(client: gradserve.Client, dtype: str, n: int | None) -> None:
    rng = np.random.default_rng(1)
    x = _points(rng, n, 3).astype(dtype)
    batched = n is not None
    res = client.compute(ONE, {"x": x}, ["value", "grad", "hessian"], batched=batched)
    xt = _t(x)
    want_v = _per_point(one_torch, [xt], n)
    want_g = _per_point(lambda a: AF.jacobian(one_torch, a), [xt], n)
    want_h = _per_point(lambda a: AF.hessian(one_torch, a), [xt], n)
    tol = TOL[dtype]
    assert res["grad"].dtype == np.dtype(dtype)
    np.testing.assert_allclose(res["value"], want_v.numpy(), rtol=tol)
    np.testing.assert_allclose(res["grad"], want_g.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(res["hessian"], want_h.numpy(), rtol=tol, atol=tol)
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
    want_g = _per_point(lambda a, b: AF.jacobian(two_torch, (a, b)), [_t(x), _t(y)], n)
    np.testing.assert_allclose(g["x"], want_g[0].numpy(), rtol=1e-10)
    np.testing.assert_allclose(g["y"], want_g[1].numpy(), rtol=1e-10)
    if n is None:
        want_h = AF.hessian(two_torch, (_t(x), _t(y)))
        for i, a in enumerate("xy"):
            for j, b in enumerate("xy"):
                np.testing.assert_allclose(h[a][b], want_h[i][j].numpy(), rtol=1e-10, atol=1e-12)
    else:
        np.testing.assert_allclose(
            h["x"]["y"],
            np.stack([AF.hessian(two_torch, (_t(x[i]), _t(y[i])))[0][1].numpy() for i in range(n)]),
            rtol=1e-10,
        )
    only_y = client.grad(TWO, {"x": x, "y": y}, wrt="y", batched=batched)
    np.testing.assert_allclose(only_y, want_g[1].numpy(), rtol=1e-10)


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
@pytest.mark.parametrize("n", [None, 4])
def test_jacobian_of_vector_function(client: gradserve.Client, mode: str, n: int | None) -> None:
    rng = np.random.default_rng(3)
    x, y = _points(rng, n, 3), _points(rng, n, 2)
    res = client.compute(VEC, {"x": x, "y": y}, ["jacobian"], batched=n is not None, mode=mode)
    want = _per_point(lambda a, b: AF.jacobian(vec_torch, (a, b)), [_t(x), _t(y)], n)
    np.testing.assert_allclose(res["jacobian"]["x"], want[0].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res["jacobian"]["y"], want[1].numpy(), rtol=1e-10, atol=1e-12)
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
    want_vjp = _per_point(lambda a, b, c: AF.vjp(vec_torch, (a, b), c)[1], [_t(x), _t(y), _t(v)], n)
    want_jvp = _per_point(
        lambda a, b, c, d: AF.jvp(vec_torch, (a, b), (c, d))[1],
        [_t(x), _t(y), _t(tx), _t(ty)],
        n,
    )
    np.testing.assert_allclose(vjp["x"], want_vjp[0].numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(vjp["y"], want_vjp[1].numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(jvp, want_jvp.numpy(), rtol=tol, atol=tol)

    xx = _points(rng, n, 3).astype(dtype)
    hvp = client.hvp(ONE, {"x": xx}, v, batched=batched)
    want_hvp = _per_point(lambda a, c: AF.hvp(one_torch, a, c)[1], [_t(xx), _t(v)], n)
    np.testing.assert_allclose(hvp, want_hvp.numpy(), rtol=tol * 10, atol=tol * 10)


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
