"""Tests of gradserve_workers.ops against closed forms and difference references
(support.oracle: torch.autograd.functional's signatures, answered without autograd)."""

from __future__ import annotations

import doctest
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import oracle as AF

from gradserve_workers import _vmap, transforms
from gradserve_workers.ops import (
    NonFiniteInputError,
    OpsError,
    OpsRequest,
    computation,
    compute,
    vmap_or_loop,
)

DTYPES = [torch.float32, torch.float64]


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-9}


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == dtype
    torch.testing.assert_close(a, b.to(dtype), **tol(dtype))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# A function of two inputs with a vector output, and a scalar one.
def two_in_vec(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(w @ x) * x[:2].sum()


def two_in_scalar(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (torch.sin(w @ x) ** 2).sum() + (x**3).sum() * w[0, 0]


def make_inputs(dtype: torch.dtype, batch: int | None) -> dict[str, torch.Tensor]:
    g = gen(1)
    lead = () if batch is None else (batch,)
    return {
        "x": torch.randn((*lead, 3), generator=g, dtype=torch.float64).to(dtype),
        "w": torch.randn((*lead, 2, 3), generator=g, dtype=torch.float64).to(dtype),
    }


def per_point(inputs: dict[str, torch.Tensor], batch: int | None) -> list[dict[str, torch.Tensor]]:
    if batch is None:
        return [inputs]
    return [{k: v[i] for k, v in inputs.items()} for i in range(batch)]


def stack(results: list[torch.Tensor], batch: int | None) -> torch.Tensor:
    return results[0] if batch is None else torch.stack(results)


# ---------------------------------------------------------------------------
# doctests


@pytest.mark.parametrize("module", [computation, transforms, _vmap])
def test_doctests(module: object) -> None:
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert res.failed == 0 and res.attempted > 0


# ---------------------------------------------------------------------------
# closed forms


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [None, 5])
def test_grad_of_two_dot_is_four_x(dtype: torch.dtype, batch: int | None) -> None:
    lead = () if batch is None else (batch,)
    x = torch.randn((*lead, 4), generator=gen(), dtype=torch.float64).to(dtype)
    r = compute(
        lambda x: 2 * torch.dot(x, x),
        ["x"],
        {"x": x},
        OpsRequest(ops=("value", "grad", "hessian"), batched=batch is not None),
    )
    close(r.outputs["grad"]["x"], 4 * x, dtype)
    close(r.outputs["value"][""], 2 * (x * x).sum(-1), dtype)
    eye = 4 * torch.eye(4, dtype=dtype).expand((*lead, 4, 4))
    close(r.outputs["hessian"]["x,x"], eye, dtype)
    assert r.out_shape == ()
    assert r.vmapped and r.unconnected == ()


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_jacobian_of_square_is_diag_and_vjp_with_ones_is_grad_of_sum(mode: str) -> None:
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    r = compute(
        lambda x: x * x,
        ["x"],
        {"x": x},
        OpsRequest(ops=("jacobian", "vjp"), jacobian_mode=mode, cotangent=torch.ones(3)),
    )
    assert torch.equal(r.outputs["jacobian"]["x"], torch.diag(2 * x))
    assert torch.equal(r.outputs["vjp"]["x"], 2 * x)
    assert torch.equal(r.outputs["jacobian"]["x"].sum(0), r.outputs["vjp"]["x"])
    assert r.jacobian_mode == ("reverse" if mode == "auto" else mode)
    g = compute(lambda x: (x * x).sum(), ["x"], {"x": x}, OpsRequest(ops=("grad",)))
    assert torch.equal(g.outputs["grad"]["x"], r.outputs["vjp"]["x"])


def test_sin_derivative_over_a_range_batched() -> None:
    x = torch.arange(-10, 10, 0.1, dtype=torch.float64)
    r = compute(torch.sin, ["x"], {"x": x}, OpsRequest(ops=("grad",), batched=True))
    torch.testing.assert_close(r.outputs["grad"]["x"], torch.cos(x))
    assert r.vmapped


def test_rosenbrock_hessian_matches_the_difference_reference() -> None:
    def rosen(x: torch.Tensor) -> torch.Tensor:
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    x = torch.randn(5, generator=gen(), dtype=torch.float64)
    r = compute(rosen, ["x"], {"x": x}, OpsRequest(ops=("hessian",)))
    torch.testing.assert_close(r.outputs["hessian"]["x,x"], AF.hessian(rosen, x))


# ---------------------------------------------------------------------------
# every op against difference references, one and several inputs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_jacobian_two_inputs(dtype: torch.dtype, batch: int | None, mode: str) -> None:
    inputs = make_inputs(dtype, batch)
    r = compute(
        two_in_vec,
        ["x", "w"],
        inputs,
        OpsRequest(ops=("value", "jacobian"), batched=batch is not None, jacobian_mode=mode),
    )
    oracle = [AF.jacobian(two_in_vec, (p["x"], p["w"])) for p in per_point(inputs, batch)]
    close(r.outputs["jacobian"]["x"], stack([o[0] for o in oracle], batch), dtype)
    close(r.outputs["jacobian"]["w"], stack([o[1] for o in oracle], batch), dtype)
    values = [two_in_vec(p["x"], p["w"]) for p in per_point(inputs, batch)]
    close(r.outputs["value"][""], stack(values, batch), dtype)
    assert r.out_shape == (2,)
    assert r.jacobian_mode == mode


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [None, 3])
def test_grad_hessian_hvp_two_inputs(dtype: torch.dtype, batch: int | None) -> None:
    inputs = make_inputs(dtype, batch)
    g = gen(7)
    vec = {
        k: torch.randn(v.shape, generator=g, dtype=torch.float64).to(dtype)
        for k, v in inputs.items()
    }
    r = compute(
        two_in_scalar,
        ["x", "w"],
        inputs,
        OpsRequest(ops=("grad", "hessian", "hvp", "value"), batched=batch is not None, vector=vec),
    )
    pts = per_point(inputs, batch)
    vpts = per_point(vec, batch)
    grads = [AF.jacobian(two_in_scalar, (p["x"], p["w"])) for p in pts]
    hess = [AF.hessian(two_in_scalar, (p["x"], p["w"])) for p in pts]
    hvps = [
        AF.hvp(two_in_scalar, (p["x"], p["w"]), (v["x"], v["w"]))[1]
        for p, v in zip(pts, vpts, strict=True)
    ]
    for i, a in enumerate(["x", "w"]):
        close(r.outputs["grad"][a], stack([gr[i] for gr in grads], batch), dtype)
        close(r.outputs["hvp"][a], stack([h[i] for h in hvps], batch), dtype)
        for j, b in enumerate(["x", "w"]):
            close(r.outputs["hessian"][f"{a},{b}"], stack([h[i][j] for h in hess], batch), dtype)
    assert set(r.outputs["hessian"]) == {"x,x", "x,w", "w,x", "w,w"}
    assert r.outputs["hessian"]["x,w"].shape == ((batch,) if batch else ()) + (3, 2, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [None, 4])
def test_vjp_jvp_two_inputs(dtype: torch.dtype, batch: int | None) -> None:
    inputs = make_inputs(dtype, batch)
    lead = () if batch is None else (batch,)
    g = gen(3)
    cot = torch.randn((*lead, 2), generator=g, dtype=torch.float64).to(dtype)
    tan = {
        k: torch.randn(v.shape, generator=g, dtype=torch.float64).to(dtype)
        for k, v in inputs.items()
    }
    r = compute(
        two_in_vec,
        ["x", "w"],
        inputs,
        OpsRequest(ops=("vjp", "jvp"), batched=batch is not None, cotangent=cot, tangents=tan),
    )
    pts = per_point(inputs, batch)
    cots = [cot] if batch is None else list(cot)
    tans = per_point(tan, batch)
    vjps = [AF.vjp(two_in_vec, (p["x"], p["w"]), c)[1] for p, c in zip(pts, cots, strict=True)]
    jvps = [
        AF.jvp(two_in_vec, (p["x"], p["w"]), (t["x"], t["w"]))[1]
        for p, t in zip(pts, tans, strict=True)
    ]
    close(r.outputs["vjp"]["x"], stack([v[0] for v in vjps], batch), dtype)
    close(r.outputs["vjp"]["w"], stack([v[1] for v in vjps], batch), dtype)
    close(r.outputs["jvp"][""], stack(jvps, batch), dtype)


@pytest.mark.parametrize("batch", [None, 3])
def test_wrt_subset_holds_others_constant(batch: int | None) -> None:
    inputs = make_inputs(torch.float64, batch)
    r = compute(
        two_in_scalar,
        ["x", "w"],
        inputs,
        OpsRequest(ops=("grad", "jacobian", "hessian"), wrt=("w",), batched=batch is not None),
    )
    assert set(r.outputs["grad"]) == {"w"}
    assert set(r.outputs["hessian"]) == {"w,w"}
    pts = per_point(inputs, batch)
    oracle = [AF.hessian(lambda w, x=p["x"]: two_in_scalar(x, w), p["w"]) for p in pts]
    close(r.outputs["hessian"]["w,w"], stack(oracle, batch), torch.float64)
    grads = [AF.jacobian(lambda w, x=p["x"]: two_in_scalar(x, w), p["w"]) for p in pts]
    close(r.outputs["grad"]["w"], stack(grads, batch), torch.float64)
    close(r.outputs["jacobian"]["w"], stack(grads, batch), torch.float64)


def test_jacobian_chunk_size_gives_same_result() -> None:
    x = torch.randn(7, generator=gen(), dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(torch.sin(x), 0)[:5] * x[0]

    ref = AF.jacobian(f, x)
    for mode in ("forward", "reverse"):
        for chunk in (1, 2, 3, None):
            r = compute(
                f,
                ["x"],
                {"x": x},
                OpsRequest(ops=("jacobian",), jacobian_mode=mode, chunk_size=chunk),
            )
            torch.testing.assert_close(r.outputs["jacobian"]["x"], ref)


def test_auto_mode_picks_forward_for_tall_jacobians() -> None:
    x = torch.tensor([0.5], dtype=torch.float64)
    r = compute(
        lambda x: torch.cat([x, x**2, x**3]), ["x"], {"x": x}, OpsRequest(ops=("jacobian",))
    )
    assert r.jacobian_mode == "forward"
    torch.testing.assert_close(
        r.outputs["jacobian"]["x"], torch.tensor([[1.0], [1.0], [0.75]], dtype=torch.float64)
    )


def test_matrix_input_and_scalar_output_of_shape_one() -> None:
    a = torch.randn(3, 3, generator=gen(), dtype=torch.float64)
    r = compute(
        lambda a: torch.trace(a @ a).reshape(1), ["a"], {"a": a}, OpsRequest(ops=("grad", "value"))
    )
    torch.testing.assert_close(r.outputs["grad"]["a"], 2 * a.T)
    assert r.out_shape == (1,)
    assert r.outputs["value"][""].shape == (1,)


# ---------------------------------------------------------------------------
# data-dependent control flow


def control_flow(a: torch.Tensor) -> torch.Tensor:
    # f(a) = c * 2**k * a with c and k constant near a (the loop doubles until the sum
    # passes 100), so grad == f(a) / a
    b = a
    i = 0
    while b.abs().sum() < 100 and i < 50:
        b = b * 2
        i += 1
    return b.sum() if b.sum() > 0 else 100 * b.sum()


def sign_switch(a: torch.Tensor) -> torch.Tensor:
    return a * 2 if a.sum() > 0 else a * 3


def test_control_flow_batched_falls_back_and_is_correct() -> None:
    a = torch.tensor([0.3, -0.7, 2.5, -40.0, 1e-3], dtype=torch.float64)
    r = compute(control_flow, ["a"], {"a": a}, OpsRequest(ops=("value", "grad"), batched=True))
    assert not r.vmapped
    torch.testing.assert_close(r.outputs["grad"]["a"], r.outputs["value"][""] / a)
    r2 = compute(
        control_flow, ["a"], {"a": a}, OpsRequest(ops=("grad",), batched=True, allow_vmap=False)
    )
    assert not r2.vmapped
    torch.testing.assert_close(r2.outputs["grad"]["a"], r.outputs["grad"]["a"])


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_control_flow_jacobian_hessian_batched(mode: str) -> None:
    a = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [0.5, -0.25]], dtype=torch.float64)
    r = compute(
        sign_switch,
        ["a"],
        {"a": a},
        OpsRequest(ops=("jacobian",), batched=True, jacobian_mode=mode),
    )
    assert not r.vmapped
    expected = torch.stack([torch.eye(2) * 2, torch.eye(2) * 3, torch.eye(2) * 2]).double()
    torch.testing.assert_close(r.outputs["jacobian"]["a"], expected)
    h = compute(
        lambda a: (sign_switch(a) ** 2).sum(),
        ["a"],
        {"a": a},
        OpsRequest(ops=("hessian", "hvp"), batched=True, vector={"a": torch.ones_like(a)}),
    )
    assert not h.vmapped
    torch.testing.assert_close(h.outputs["hessian"]["a,a"], 2 * expected * expected)
    torch.testing.assert_close(h.outputs["hvp"]["a"], 2 * (expected * expected).sum(-1))


def test_control_flow_unbatched_needs_no_fallback() -> None:
    # Unbatched, vmap only maps over tangents/cotangents, never over the primal point,
    # so Python control flow on the point's values is fine in every mode.
    a = torch.tensor([1.0, -3.0], dtype=torch.float64)
    for mode in ("forward", "reverse"):
        r = compute(sign_switch, ["a"], {"a": a}, OpsRequest(ops=("jacobian",), jacobian_mode=mode))
        assert r.vmapped
        torch.testing.assert_close(
            r.outputs["jacobian"]["a"], 3 * torch.eye(2, dtype=torch.float64)
        )
    r = compute(sign_switch, ["a"], {"a": a}, OpsRequest(ops=("jacobian",), allow_vmap=False))
    assert not r.vmapped
    torch.testing.assert_close(r.outputs["jacobian"]["a"], 3 * torch.eye(2, dtype=torch.float64))


def test_vmap_or_loop_reports_the_way_it_ran() -> None:
    x = torch.tensor([1.0, -1.0])
    out, vmapped = vmap_or_loop(sign_switch, (x,), (0,))
    assert out.tolist() == [2.0, -3.0] and not vmapped
    out, vmapped = vmap_or_loop(torch.exp, (x,), (0,))
    assert vmapped
    out, vmapped = vmap_or_loop(torch.exp, (x,), (0,), allow_vmap=False)
    assert not vmapped and torch.equal(out, torch.exp(x))


class DataDependentControlFlow(Exception):
    """Stands in for the language's exception of the same name."""


def test_language_exception_triggers_the_fallback() -> None:
    def f(a: torch.Tensor) -> torch.Tensor:
        try:
            positive = bool(a.sum() > 0)
        except RuntimeError as exc:  # what the language does: re-raise as its own error
            raise DataDependentControlFlow("line 2: `if` on a tensor under vmap") from exc
        return a * 5 if positive else a * 4

    r = compute(f, ["a"], {"a": torch.ones(3, 2)}, OpsRequest(ops=("jacobian",), batched=True))
    assert not r.vmapped
    torch.testing.assert_close(r.outputs["jacobian"]["a"], 5 * torch.eye(2).expand(3, 2, 2))


def test_other_exceptions_propagate_unchanged() -> None:
    class Boom(Exception):
        pass

    def f(a: torch.Tensor) -> torch.Tensor:
        raise Boom("no")

    with pytest.raises(Boom):
        compute(f, ["a"], {"a": torch.ones(2)}, OpsRequest(ops=("grad",)))
    with pytest.raises(RuntimeError, match="size"):
        compute(
            lambda a: a @ torch.ones(3),
            ["a"],
            {"a": torch.ones(4, 2)},
            OpsRequest(ops=("value",), batched=True),
        )


# ---------------------------------------------------------------------------
# unconnected inputs, non-finite inputs, refusals


@pytest.mark.parametrize("batch", [None, 3])
def test_times_zero_is_unconnected_with_zero_gradient(batch: int | None) -> None:
    lead = () if batch is None else (batch,)
    x = torch.randn((*lead, 2), generator=gen(), dtype=torch.float64)
    y = torch.randn((*lead, 2), generator=gen(2), dtype=torch.float64)
    r = compute(
        lambda x, y: (x * 0 + y).sum(),
        ["x", "y"],
        {"x": x, "y": y},
        OpsRequest(ops=("grad",), batched=batch is not None),
    )
    assert r.unconnected == ("x",)
    assert torch.equal(r.outputs["grad"]["x"], torch.zeros_like(x))
    assert torch.equal(r.outputs["grad"]["y"], torch.ones_like(y))


def test_structurally_unused_input_is_unconnected() -> None:
    r = compute(
        lambda x, y: torch.sin(x),
        ["x", "y"],
        {"x": torch.ones(2), "y": torch.ones(3)},
        OpsRequest(ops=("jacobian",)),
    )
    assert r.unconnected == ("y",)
    assert torch.equal(r.outputs["jacobian"]["y"], torch.zeros(2, 3))


def test_input_used_only_at_some_points_is_connected() -> None:
    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.sum() if a.sum() > 0 else b.sum()

    a = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    b = torch.tensor([[2.0], [3.0]], dtype=torch.float64)
    r = compute(f, ["a", "b"], {"a": a, "b": b}, OpsRequest(ops=("grad",), batched=True))
    assert r.unconnected == ()
    assert r.outputs["grad"]["a"].tolist() == [[1.0], [0.0]]
    assert r.outputs["grad"]["b"].tolist() == [[0.0], [1.0]]


def test_constant_output_everything_unconnected() -> None:
    r = compute(lambda x: torch.ones(2), ["x"], {"x": torch.ones(3)}, OpsRequest(ops=("jacobian",)))
    assert r.unconnected == ("x",)
    assert torch.equal(r.outputs["jacobian"]["x"], torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("value", "batched", "fragment"),
    [
        (torch.tensor([1.0, float("nan")]), False, "input 'x' contains NaN at element [1]"),
        (
            torch.tensor([[1.0, 2.0], [1.0, float("inf")]]),
            True,
            "contains Inf at point 1, element [1]",
        ),
        (torch.tensor([1.0, 2.0, float("-inf")]), True, "contains Inf at point 2;"),
        (torch.tensor(float("nan")), False, "contains NaN (a scalar)"),
    ],
)
def test_non_finite_inputs_are_refused(value: torch.Tensor, batched: bool, fragment: str) -> None:
    with pytest.raises(NonFiniteInputError) as info:
        compute(lambda x: x.sum(), ["x"], {"x": value}, OpsRequest(ops=("grad",), batched=batched))
    assert str(info.value).startswith("grad(f): ")
    assert fragment in str(info.value)
    assert isinstance(info.value, OpsError) and isinstance(info.value, ValueError)


def test_grad_of_vector_output_explains_vjp_with_ones() -> None:
    with pytest.raises(OpsError) as info:
        compute(lambda x: x * x, ["x"], {"x": torch.ones(4)}, OpsRequest(ops=("grad",)))
    msg = str(info.value)
    assert msg.startswith("grad(f): f returns shape (4,), not a scalar.")
    assert "sum(y)" in msg and "jacobian(" in msg and "cotangent=ones" in msg
    for op in ("hessian", "hvp"):
        with pytest.raises(OpsError, match=rf"^{op}\(f\): f returns shape \(2, 2\), not a scalar"):
            compute(
                lambda x: x,
                ["x"],
                {"x": torch.ones(2, 2)},
                OpsRequest(ops=(op,), vector={"x": torch.ones(2, 2)}),
            )


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (OpsRequest(ops=("curl",)), r"^curl\(f\): unknown op 'curl'"),
        (OpsRequest(ops=("vjp",)), r"^vjp\(f\): a cotangent .* \(2,\) is required"),
        (
            OpsRequest(ops=("vjp",), cotangent=torch.ones(3)),
            r"cotangent has shape \(3,\), expected \(2,\)",
        ),
        (OpsRequest(ops=("jvp",)), r"^jvp\(f\): tangents are required"),
        (OpsRequest(ops=("jvp",), tangents={"z": torch.ones(2)}), r"missing \['x'\]"),
        (OpsRequest(ops=("hvp",), vector={"x": torch.ones(2)}), r"^hvp\(f\): f returns shape"),
        (OpsRequest(ops=("grad",), wrt=("q",)), r"^grad\(f\): wrt names unknown input\(s\) q"),
        (OpsRequest(ops=("jacobian",), jacobian_mode="sideways"), r"jacobian_mode must be"),
        (OpsRequest(ops=("jacobian",), chunk_size=0), r"chunk_size must be a positive"),
        (OpsRequest(ops=()), r"no ops requested"),
    ],
)
def test_bad_requests_are_refused(request_: OpsRequest, match: str) -> None:
    with pytest.raises(OpsError, match=match):
        compute(lambda x: x * 2, ["x"], {"x": torch.ones(2)}, request_)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(OpsError, match=r"missing input\(s\) y"):
        compute(lambda x, y: x, ["x", "y"], {"x": torch.ones(2)}, OpsRequest(ops=("value",)))
    with pytest.raises(OpsError, match=r"disagree on the number of points: x: 2, y: 3"):
        compute(
            lambda x, y: x.sum() + y.sum(),
            ["x", "y"],
            {"x": torch.ones(2), "y": torch.ones(3)},
            OpsRequest(ops=("value",), batched=True),
        )
    with pytest.raises(OpsError, match=r"needs? float32 or float64"):
        compute(
            lambda x: x.sum(),
            ["x"],
            {"x": torch.ones(2, dtype=torch.int64)},
            OpsRequest(ops=("grad",)),
        )
    with pytest.raises(OpsError, match="no points"):
        compute(
            lambda x: x.sum(),
            ["x"],
            {"x": torch.ones(0, 2)},
            OpsRequest(ops=("grad",), batched=True),
        )


def test_value_only_and_integer_constants() -> None:
    r = compute(
        lambda x, n: x * n,
        ["x", "n"],
        {"x": torch.ones(2), "n": torch.tensor(3)},
        OpsRequest(ops=("value",)),
    )
    assert list(r.outputs) == ["value"]
    assert torch.equal(r.outputs["value"][""], torch.full((2,), 3.0))
    assert r.jacobian_mode is None and r.unconnected == ()
    g = compute(
        lambda x, n: (x * n).sum(),
        ["x", "n"],
        {"x": torch.ones(2), "n": torch.tensor(3)},
        OpsRequest(ops=("grad",), wrt=("x",)),
    )
    assert g.outputs["grad"]["x"].tolist() == [3.0, 3.0]


# ---------------------------------------------------------------------------
# a property: for elementwise f, jacobian is diagonal with the gradient of sum(f)

ELEMENTWISE: list[Callable[[torch.Tensor], torch.Tensor]] = [
    torch.sin,
    torch.tanh,
    torch.exp,
    torch.sigmoid,
    lambda x: x**3 - 2 * x,
]


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(0, len(ELEMENTWISE) - 1),
    xs=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=6),
    batched=st.booleans(),
)
def test_elementwise_jacobian_is_diag_of_grad_of_sum(
    k: int, xs: list[float], batched: bool
) -> None:
    f = ELEMENTWISE[k]
    x = torch.tensor(xs, dtype=torch.float64)
    if batched:
        x = x.reshape(-1, 1)
    jac = compute(f, ["x"], {"x": x}, OpsRequest(ops=("jacobian",), batched=batched))
    grad = compute(
        lambda x: f(x).sum(), ["x"], {"x": x}, OpsRequest(ops=("grad",), batched=batched)
    )
    j = jac.outputs["jacobian"]["x"]
    diag = j.reshape(-1) if batched else torch.diagonal(j)
    torch.testing.assert_close(diag, grad.outputs["grad"]["x"].reshape(-1))
