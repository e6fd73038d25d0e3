"""Conformance end to end, through a real server and Ray: the SDK's shape table
(docs/sdk.md) at one point and batched, the two programs of issue 15 against closed
forms and difference references, and a handful of matrix cases."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from support import reference as R

import gradserve
from gradserve_workers.lang.table import FUNCTIONS

from .cases import CASES
from .matrix import compare, reference, routes_of, sdk_answers, transform

DOCS = Path(__file__).resolve().parents[2] / "docs"

# -- the shape table -----------------------------------------------------------------

X = np.array([0.3, -0.7, 1.1])
A = np.array([[0.5, -0.2, 0.1], [0.3, 0.8, -0.4]])
SCALAR = "sum(A @ x) * x[0]"  # out_shape ()
VECTOR = "A @ sin(x)"  # out_shape (2,)
P = 4  # points when batched


def _documented_methods() -> list[str]:
    """The methods of the table under "returns, per point" in docs/sdk.md."""
    text = (DOCS / "sdk.md").read_text()
    table = text.split("| method | returns, per point |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `(\w+)\(", table, flags=re.M)


# method -> (program, extra keyword arguments, the per-point shape per key); keys
# are the wrt inputs, "" for one array, "a,b" for Hessian blocks
SHAPES = {
    "value": (VECTOR, {}, {"": (2,)}),
    "grad": (SCALAR, {}, {"x": (3,), "A": (2, 3)}),
    "jacobian": (VECTOR, {}, {"x": (2, 3), "A": (2, 2, 3)}),
    "hessian": (
        SCALAR,
        {},
        {"x,x": (3, 3), "x,A": (3, 2, 3), "A,x": (2, 3, 3), "A,A": (2, 3, 2, 3)},
    ),
    "vjp": (VECTOR, {"cotangent": np.ones(2)}, {"x": (3,), "A": (2, 3)}),
    "jvp": (VECTOR, {"tangents": {"x": np.ones(3), "A": np.ones((2, 3))}}, {"": (2,)}),
    "hvp": (SCALAR, {"vector": {"x": np.ones(3), "A": np.ones((2, 3))}}, {"x": (3,), "A": (2, 3)}),
}


def test_the_shape_table_covers_the_documented_methods() -> None:
    documented = _documented_methods()
    assert all(hasattr(gradserve.Client, m) for m in documented)
    ops = [m for m in documented if m not in ("compute", "check", "server_info")]
    assert ops == list(SHAPES)


def _batch(value: object) -> object:
    if isinstance(value, dict):
        return {k: _batch(v) for k, v in value.items()}
    arr = np.asarray(value)
    return np.stack([arr * (1 + 0.1 * i) for i in range(P)])


def _keyed(method: str, got: object, keys: list[str]) -> dict[str, np.ndarray]:
    if not isinstance(got, dict):
        return {keys[0]: np.asarray(got)}
    if method == "hessian":
        return {f"{a},{b}": np.asarray(v) for a, row in got.items() for b, v in row.items()}
    return {k: np.asarray(v) for k, v in got.items()}


@pytest.mark.parametrize("batched", [False, True])
def test_every_method_returns_the_documented_shapes(
    client: gradserve.Client, batched: bool
) -> None:
    lead = (P,) if batched else ()
    inputs = {"x": X, "A": A}
    for method, (program, extra, shapes) in SHAPES.items():
        args = _batch(inputs) if batched else inputs
        kwargs = {k: _batch(v) if batched else v for k, v in extra.items()}
        got = getattr(client, method)(program, args, batched=batched, **kwargs)
        keyed = _keyed(method, got, list(shapes))
        assert {k: v.shape for k, v in keyed.items()} == {k: lead + s for k, s in shapes.items()}, (
            method
        )
    # a scalar function's value is 0-d (batched: one number per point), as its
    # metadata says; one input gives one array
    res = client.compute("sum(x)", {"x": _batch(X) if batched else X}, ["value", "grad"],
                         batched=batched)  # fmt: skip
    assert res["value"].shape == lead and res["grad"].shape == (*lead, 3)
    assert res.metadata.out_shape == ()
    assert res.metadata.execution_path == ("vmap" if batched else "single")
    assert res.metadata.strategy == "direct" and res.metadata.routes == ()


# -- the two programs of issue 15 ----------------------------------------------------

LOGDET = "def f(x, A):\n    return logdet(A @ A.T + diag(1 + (x * x) ** 2))\n"
SOLVE = "def f(x, A):\n    return erf(solve(A @ A.T + 4 * eye(4), cat((x[1:], x[:1]))))\n"


def _issue_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(15)
    return rng.normal(size=(5, 4)), rng.normal(size=(5, 4, 4)) / 2


def _logdet_hessian(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Closed form: M = AAᵀ + diag(1 + x⁴), d_i = 4x_i³; H = -(M⁻¹ ∘ M⁻¹) ∘ d dᵀ +
    diag(12 x² ∘ diag(M⁻¹))."""
    m_inv = np.linalg.inv(a @ a.T + np.diag(1 + x**4))
    d = 4 * x**3
    return np.asarray(-(m_inv**2) * np.outer(d, d) + np.diag(12 * x**2 * np.diag(m_inv)))


def _solve_jacobian(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Closed form: y = M⁻¹ P x with P the cyclic shift; J = diag(erf'(y)) M⁻¹ P."""
    m_inv = np.linalg.inv(a @ a.T + 4 * np.eye(4))
    shift = np.roll(np.eye(4), -1, axis=0)
    y = m_inv @ shift @ x
    return np.asarray((2 / math.sqrt(math.pi) * np.exp(-(y**2)))[:, None] * m_inv @ shift)


def _logdet_np(x: np.ndarray, a: np.ndarray) -> float:
    return float(np.linalg.slogdet(a @ a.T + np.diag(1 + (x * x) ** 2))[1])


def _solve_np(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    y = np.linalg.solve(a @ a.T + 4 * np.eye(4), np.roll(x, -1))
    return np.array([math.erf(v) for v in y])


def test_issue_references_agree() -> None:
    """The closed forms and the difference references agree (two independent ways)."""
    x, a = _issue_inputs()
    for i in range(2):
        hess = R.hessian(lambda v, i=i: _logdet_np(v, a[i]), x[i])
        np.testing.assert_allclose(hess, _logdet_hessian(x[i], a[i]), atol=1e-7)
        jac = R.jacobian(lambda v, i=i: _solve_np(v, a[i]), x[i])
        np.testing.assert_allclose(jac, _solve_jacobian(x[i], a[i]), atol=1e-9)


@pytest.mark.parametrize("batched", [False, True])
def test_issue_programs_are_right(client: gradserve.Client, batched: bool) -> None:
    x, a = _issue_inputs()
    points = range(5) if batched else range(2)
    want_h = np.stack([_logdet_hessian(x[i], a[i]) for i in points])
    want_j = np.stack([_solve_jacobian(x[i], a[i]) for i in points])
    if batched:
        res_h = client.compute(LOGDET, {"x": x, "A": a}, ["hessian"], wrt="x", batched=True)
        res_j = client.compute(
            SOLVE, {"x": x, "A": a}, ["jacobian"], wrt="x", batched=True, mode="forward"
        )
        got_h, got_j = res_h["hessian"], res_j["jacobian"]
        for res, op in ((res_h, "hessian"), (res_j, "jacobian")):
            assert res.metadata.strategy == "rerouted"
            assert len(res.metadata.routes) == 1 and res.metadata.routes[0].startswith(op)
        assert res_j.metadata.jacobian_mode == "reverse"  # the mode that ran
    else:
        got_h = np.stack([client.hessian(LOGDET, {"x": x[i], "A": a[i]}, wrt="x") for i in points])
        got_j = np.stack(
            [
                client.jacobian(SOLVE, {"x": x[i], "A": a[i]}, wrt="x", mode="forward")
                for i in points
            ]
        )
    np.testing.assert_allclose(got_h, want_h, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got_j, want_j, rtol=1e-9, atol=1e-10)


# -- matrix cases end to end ---------------------------------------------------------

E2E_CASES = ["det", "solve", "softmax", "all", "compose:gelu-mlp"]
BY_NAME = {c.name: c for c in CASES}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", E2E_CASES)
def test_matrix_cases_through_the_server(client: gradserve.Client, name: str, dtype: str) -> None:
    ref = reference(BY_NAME[name], dtype)
    failures = []
    for batched in (False, True):
        answers = sdk_answers(client, ref, batched)
        routes = routes_of(answers)
        for v in compare(ref, batched, answers):
            t = transform(v.operation, batched)
            if not v.ok:
                failures.append(f"{t}: {v.ratio:.3g} tolerances off;{v.detail}")
            unsafe = any(t in FUNCTIONS[f].unsafe for f in ref.case.functions)
            if bool(routes[v.operation]) != unsafe:
                failures.append(f"{t}: routes {routes[v.operation]}")
    assert not failures, "\n".join(failures)
