"""The compiler and interpreter: every table function against torch, control flow, transforms."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from gradserve_workers.lang import (
    FUNCTIONS,
    CompiledFunction,
    DataDependentControlFlow,
    FunctionRuntimeError,
    LimitExceededError,
    compile_function,
    compile_program,
    parse_and_validate,
)

F64 = torch.float64

X = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
Y = torch.tensor([1.5, 0.7, -0.4], dtype=F64)
_M = torch.tensor([[1.0, 0.2, -0.5], [0.3, 2.0, 0.1], [-0.4, 0.6, 1.5]], dtype=F64)
A = _M @ _M.T + 3 * torch.eye(3, dtype=F64)  # symmetric positive definite
B = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.5]], dtype=F64)
INPUTS = {"x": X, "y": Y, "A": A, "B": B}

Ref = Callable[..., Any]

# name -> (source, reference over x, y, A, B). One entry per table function.
CASES: dict[str, list[tuple[str, Ref]]] = {
    "sin": [("sin(x)", lambda x, y, A, B: torch.sin(x))],
    "cos": [("cos(x)", lambda x, y, A, B: torch.cos(x))],
    "tan": [("tan(x)", lambda x, y, A, B: torch.tan(x))],
    "asin": [("asin(x / 4)", lambda x, y, A, B: torch.asin(x / 4))],
    "acos": [("acos(x / 4)", lambda x, y, A, B: torch.acos(x / 4))],
    "atan": [("atan(x)", lambda x, y, A, B: torch.atan(x))],
    "atan2": [("atan2(y, x)", lambda x, y, A, B: torch.atan2(y, x))],
    "sinh": [("sinh(x)", lambda x, y, A, B: torch.sinh(x))],
    "cosh": [("cosh(x)", lambda x, y, A, B: torch.cosh(x))],
    "tanh": [("tanh(x)", lambda x, y, A, B: torch.tanh(x))],
    "asinh": [("asinh(x)", lambda x, y, A, B: torch.asinh(x))],
    "acosh": [("acosh(1 + x ** 2)", lambda x, y, A, B: torch.acosh(1 + x**2))],
    "atanh": [("atanh(x / 4)", lambda x, y, A, B: torch.atanh(x / 4))],
    "exp": [("exp(x)", lambda x, y, A, B: torch.exp(x))],
    "expm1": [("expm1(x)", lambda x, y, A, B: torch.expm1(x))],
    "log": [("log(y + 1)", lambda x, y, A, B: torch.log(y + 1))],
    "log1p": [("log1p(x ** 2)", lambda x, y, A, B: torch.log1p(x**2))],
    "log2": [("log2(x ** 2)", lambda x, y, A, B: torch.log2(x**2))],
    "log10": [("log10(x ** 2)", lambda x, y, A, B: torch.log10(x**2))],
    "sqrt": [("sqrt(x ** 2 + 1)", lambda x, y, A, B: torch.sqrt(x**2 + 1))],
    "rsqrt": [("rsqrt(x ** 2 + 1)", lambda x, y, A, B: 1 / torch.sqrt(x**2 + 1))],
    "abs": [("abs(x)", lambda x, y, A, B: torch.abs(x))],
    "sign": [("sign(x)", lambda x, y, A, B: torch.sign(x))],
    "floor": [("floor(x)", lambda x, y, A, B: torch.floor(x))],
    "ceil": [("ceil(x)", lambda x, y, A, B: torch.ceil(x))],
    "round": [("round(x * 3)", lambda x, y, A, B: torch.round(x * 3))],
    "trunc": [("trunc(x)", lambda x, y, A, B: torch.trunc(x))],
    "square": [("square(x)", lambda x, y, A, B: x * x)],
    "reciprocal": [("reciprocal(x)", lambda x, y, A, B: 1 / x)],
    "sigmoid": [("sigmoid(x)", lambda x, y, A, B: 1 / (1 + torch.exp(-x)))],
    "relu": [("relu(x)", lambda x, y, A, B: torch.clamp(x, min=0))],
    "softplus": [("softplus(x)", lambda x, y, A, B: torch.log1p(torch.exp(x)))],
    "gelu": [("gelu(x)", lambda x, y, A, B: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))))],
    "silu": [("silu(x)", lambda x, y, A, B: x * torch.sigmoid(x))],
    "erf": [("erf(x)", lambda x, y, A, B: torch.erf(x))],
    "erfc": [("erfc(x)", lambda x, y, A, B: 1 - torch.erf(x))],
    "pow": [
        ("pow(x, 3)", lambda x, y, A, B: x**3),
        ("pow(2, x)", lambda x, y, A, B: 2**x),
    ],
    "hypot": [("hypot(x, y)", lambda x, y, A, B: torch.sqrt(x**2 + y**2))],
    "maximum": [("maximum(x, y)", lambda x, y, A, B: torch.where(x > y, x, y))],
    "minimum": [("minimum(x, 0)", lambda x, y, A, B: torch.clamp(x, max=0))],
    "clamp": [
        ("clamp(x, -1, 1)", lambda x, y, A, B: torch.clamp(x, -1, 1)),
        ("clamp(x, min=0)", lambda x, y, A, B: torch.clamp(x, min=0)),
        ("clamp(x, max=y)", lambda x, y, A, B: torch.minimum(x, y)),
    ],
    "where": [
        ("where(x > 0, x, 0.1 * x)", lambda x, y, A, B: torch.where(x > 0, x, 0.1 * x)),
        ("where(x > y, 1, 0)", lambda x, y, A, B: (x > y).to(F64)),
    ],
    "sum": [
        ("sum(A)", lambda x, y, A, B: A.sum()),
        ("sum(A, dim=0)", lambda x, y, A, B: A.sum(0)),
        ("sum(A, 1, True)", lambda x, y, A, B: A.sum(1, keepdim=True)),
        ("sum(A, dim=(0, 1))", lambda x, y, A, B: A.sum()),
        ("sum(A, keepdim=True)", lambda x, y, A, B: A.sum().reshape(1, 1)),
        ("sum(x > 0)", lambda x, y, A, B: (x > 0).sum().to(F64)),
    ],
    "mean": [
        ("mean(x)", lambda x, y, A, B: x.sum() / 3),
        ("mean(A, dim=1)", lambda x, y, A, B: A.mean(1)),
    ],
    "prod": [
        ("prod(x)", lambda x, y, A, B: x[0] * x[1] * x[2]),
        ("prod(A, 0)", lambda x, y, A, B: A.prod(0)),
    ],
    "max": [
        ("max(x)", lambda x, y, A, B: torch.tensor(2.0, dtype=F64)),
        ("max(A, dim=1)", lambda x, y, A, B: A.max(1).values),
        ("max(x, y)", lambda x, y, A, B: torch.maximum(x, y)),
        ("max(x, 0)", lambda x, y, A, B: torch.clamp(x, min=0)),
    ],
    "min": [
        ("min(x)", lambda x, y, A, B: torch.tensor(-1.2, dtype=F64)),
        ("min(A, dim=0, keepdim=True)", lambda x, y, A, B: A.min(0, keepdim=True).values),
        ("min(x, y)", lambda x, y, A, B: torch.minimum(x, y)),
    ],
    "norm": [
        ("norm(x)", lambda x, y, A, B: torch.sqrt((x**2).sum())),
        ("norm(x, 1)", lambda x, y, A, B: x.abs().sum()),
        ("norm(x, ord=inf)", lambda x, y, A, B: x.abs().max()),
        ("norm(A)", lambda x, y, A, B: torch.sqrt((A**2).sum())),
        ("norm(A, dim=1)", lambda x, y, A, B: torch.sqrt((A**2).sum(1))),
    ],
    "logsumexp": [
        ("logsumexp(x)", lambda x, y, A, B: torch.log(torch.exp(x).sum())),
        ("logsumexp(A, dim=0)", lambda x, y, A, B: torch.log(torch.exp(A).sum(0))),
    ],
    "softmax": [("softmax(x)", lambda x, y, A, B: torch.exp(x) / torch.exp(x).sum())],
    "log_softmax": [
        ("log_softmax(A, dim=0)", lambda x, y, A, B: torch.log(torch.exp(A) / torch.exp(A).sum(0)))
    ],
    "var": [
        ("var(x)", lambda x, y, A, B: ((x - x.mean()) ** 2).sum() / 2),
        ("var(x, correction=0)", lambda x, y, A, B: ((x - x.mean()) ** 2).sum() / 3),
    ],
    "std": [("std(x)", lambda x, y, A, B: torch.sqrt(((x - x.mean()) ** 2).sum() / 2))],
    "cumsum": [
        ("cumsum(x)", lambda x, y, A, B: torch.stack((x[0], x[0] + x[1], x.sum()))),
        ("cumsum(A, dim=1)", lambda x, y, A, B: torch.cumsum(A, 1)),
    ],
    "cumprod": [("cumprod(x)", lambda x, y, A, B: torch.stack((x[0], x[0] * x[1], x.prod())))],
    "all": [("all(x > -5)", lambda x, y, A, B: torch.tensor(1.0, dtype=F64))],
    "any": [("any(x > 5)", lambda x, y, A, B: torch.tensor(0.0, dtype=F64))],
    "dot": [("dot(x, y)", lambda x, y, A, B: (x * y).sum())],
    "matmul": [
        ("matmul(A, x)", lambda x, y, A, B: A @ x),
        ("matmul(A, B)", lambda x, y, A, B: A @ B),
        ("A @ B @ x", lambda x, y, A, B: A @ B @ x),
    ],
    "outer": [("outer(x, y)", lambda x, y, A, B: x[:, None] * y[None, :])],
    "kron": [("kron(A, B)", lambda x, y, A, B: torch.kron(A, B))],
    "trace": [("trace(A @ B)", lambda x, y, A, B: torch.diagonal(A @ B).sum())],
    "det": [("det(A)", lambda x, y, A, B: torch.linalg.det(A))],
    "logdet": [("logdet(A)", lambda x, y, A, B: torch.log(torch.linalg.det(A)))],
    "inv": [("inv(A) @ A", lambda x, y, A, B: torch.eye(3, dtype=F64))],
    "solve": [("A @ solve(A, x)", lambda x, y, A, B: x)],
    "cholesky": [
        ("cholesky(A) @ cholesky(A).T", lambda x, y, A, B: A),
    ],
    "eigvalsh": [("sum(eigvalsh(A))", lambda x, y, A, B: torch.diagonal(A).sum())],
    "diag": [
        ("diag(x)", lambda x, y, A, B: torch.diag(x)),
        ("diag(A)", lambda x, y, A, B: torch.diagonal(A)),
    ],
    "tril": [("tril(A)", lambda x, y, A, B: torch.tril(A))],
    "triu": [("triu(A, 1)", lambda x, y, A, B: torch.triu(A, 1))],
    "transpose": [
        ("transpose(B)", lambda x, y, A, B: B.T),
        ("transpose(B, 0, 1)", lambda x, y, A, B: B.T),
        ("transpose(x)", lambda x, y, A, B: x),
        ("B.T", lambda x, y, A, B: B.T),
    ],
    "reshape": [
        ("reshape(A, (9,))", lambda x, y, A, B: A.reshape(9)),
        ("reshape(A, 9)", lambda x, y, A, B: A.reshape(9)),
        ("reshape(x, (-1, 1))", lambda x, y, A, B: x.reshape(3, 1)),
    ],
    "flatten": [("flatten(B)", lambda x, y, A, B: B.reshape(9))],
    "squeeze": [
        ("squeeze(reshape(x, (1, 3)))", lambda x, y, A, B: x),
        ("squeeze(reshape(x, (1, 3)), 0)", lambda x, y, A, B: x),
    ],
    "unsqueeze": [("unsqueeze(x, 1) * y", lambda x, y, A, B: torch.outer(x, y))],
    "stack": [
        ("stack((x, y))", lambda x, y, A, B: torch.stack((x, y))),
        ("stack((x, y), dim=1)", lambda x, y, A, B: torch.stack((x, y), 1)),
        (
            "stack((x[0], 2, x[1] * x[2]))",
            lambda x, y, A, B: torch.stack((x[0], 2 + 0 * x[0], x[1] * x[2])),
        ),
    ],
    "cat": [("cat((x, y))", lambda x, y, A, B: torch.cat((x, y)))],
    "numel": [("numel(A) * x", lambda x, y, A, B: 9 * x)],
    "len": [("len(x) * x", lambda x, y, A, B: 3 * x)],
    "shape": [
        ("zeros(shape(B)) + B", lambda x, y, A, B: B),
        ("shape(B)[0] * x", lambda x, y, A, B: 3 * x),
    ],
    "zeros": [("zeros((2, 3))", lambda x, y, A, B: torch.zeros(2, 3, dtype=F64))],
    "ones": [("ones(3) * x", lambda x, y, A, B: x)],
    "full": [
        ("full((2, 2), 7)", lambda x, y, A, B: torch.full((2, 2), 7.0, dtype=F64)),
        ("full(3, x[0])", lambda x, y, A, B: x[0].expand(3)),
    ],
    "zeros_like": [("zeros_like(A)", lambda x, y, A, B: torch.zeros(3, 3, dtype=F64))],
    "ones_like": [("ones_like(x)", lambda x, y, A, B: torch.ones(3, dtype=F64))],
    "eye": [
        ("eye(3) + A", lambda x, y, A, B: torch.eye(3, dtype=F64) + A),
        ("eye(2, 3)", lambda x, y, A, B: torch.eye(2, 3, dtype=F64)),
    ],
    "arange": [
        ("arange(3) * x", lambda x, y, A, B: torch.tensor([0.0, 1.0, 2.0], dtype=F64) * x),
        ("arange(1, 2, 0.25)", lambda x, y, A, B: torch.tensor([1.0, 1.25, 1.5, 1.75], dtype=F64)),
    ],
    "linspace": [
        ("linspace(0, 1, 3)", lambda x, y, A, B: torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    ],
    "tensor": [
        (
            "tensor(((1, 2), (3, 4)))",
            lambda x, y, A, B: torch.tensor([[1.0, 2], [3, 4]], dtype=F64),
        ),
        ("tensor((x[0], 1))", lambda x, y, A, B: torch.stack((x[0], torch.ones((), dtype=F64)))),
    ],
}


def run(source: str, **overrides: torch.Tensor) -> torch.Tensor:
    fn = compile_function(source)
    values = {**INPUTS, **overrides}
    return fn(*(values[name] for name in fn.inputs))


def test_every_table_function_has_cases() -> None:
    assert set(CASES) == set(FUNCTIONS)


@pytest.mark.parametrize(
    ("source", "reference"),
    [case for cases in CASES.values() for case in cases],
    ids=[source for cases in CASES.values() for source, _ in cases],
)
def test_function_matches_torch(source: str, reference: Ref) -> None:
    result = run(source)
    expected = reference(X, Y, A, B)
    has_inputs = bool(parse_and_validate(source).inputs)
    assert result.dtype == (F64 if has_inputs else torch.get_default_dtype())
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected.to(result.dtype))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_table_examples_run(name: str) -> None:
    result = run(FUNCTIONS[name].example)
    assert isinstance(result, torch.Tensor)
    assert result.is_floating_point()


# -- dtypes, devices, purity ----------------------------------------------------------


def test_numbers_keep_the_tensor_dtype() -> None:
    x32 = X.to(torch.float32)
    assert compile_function("2 * x + 0.1")(x32).dtype == torch.float32
    assert compile_function("where(x > 0, 2.5, x)")(x32).dtype == torch.float32
    assert compile_function("(x > 0) * 2.5")(x32).dtype == torch.float32
    assert compile_function("sum(x > 0) / 2")(x32).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "source",
    ["zeros(3) + x", "ones(3) * x", "eye(3) @ x", "arange(3) + x", "linspace(0, 1, 3) + x"],
)
def test_created_tensors_follow_the_input_dtype(source: str, dtype: torch.dtype) -> None:
    assert compile_function(source)(X.to(dtype)).dtype == dtype


def test_without_inputs_the_default_dtype_is_used() -> None:
    fn = compile_function("zeros(2) + pi")
    assert fn.inputs == ()
    assert fn().dtype == torch.get_default_dtype()
    torch.testing.assert_close(fn(), torch.full((2,), math.pi))


def test_numbers_are_returned_as_tensors() -> None:
    assert compile_function("2 + 3")().item() == 5
    assert compile_function("def f(x):\n    return 1")(X).dtype == F64


def test_inputs_are_never_changed_in_place() -> None:
    x = X.clone()
    src = "def f(x):\n    x += 1\n    x *= 2\n    y = x\n    y -= 1\n    return y"
    out = compile_function(src)(x)
    torch.testing.assert_close(x, X)
    torch.testing.assert_close(out, (X + 1) * 2 - 1)


def test_wrong_number_of_inputs_is_a_type_error() -> None:
    fn = compile_function("x + y")
    with pytest.raises(TypeError):
        fn(X)


def test_compile_program_and_properties() -> None:
    program = parse_and_validate("dot(a, b)")
    fn = compile_program(program)
    assert isinstance(fn, CompiledFunction)
    assert fn.program is program and fn.inputs == ("a", "b")
    torch.testing.assert_close(fn(X, Y), X @ Y)


# -- statements --------------------------------------------------------------------------


def test_control_flow_constructs() -> None:
    src = """
def f(x, n):
    '''docstring is allowed'''
    total = 0
    a, b = x[0], x[1]
    for i in range(5):
        if i == 1:
            continue
        elif i >= 4:
            break
        else:
            pass
        total += i
    k = 0
    while k < 3:
        k = k + 1
    for j in range(1, 7, 2):
        total = total + j
    y = a * b if total > 3 else -a
    return y * total + k + (n if n > 0 and total > 0 or False else 0)
"""
    fn = compile_function(src)
    n = torch.tensor(2.0, dtype=F64)
    # total = 0 + 2 + 3 = 5 from the first loop, + 1 + 3 + 5 = 14
    expected = X[0] * X[1] * 14 + 3 + 2
    torch.testing.assert_close(fn(X, n), expected)


def test_python_ints_stay_python_ints() -> None:
    src = "def f(x):\n    n = 7 // 2 + 10 % 4\n    return x[n - 5] * n"
    torch.testing.assert_close(compile_function(src)(X), X[0] * 5)


def test_indexing_and_slicing() -> None:
    assert run("x[-1]").item() == pytest.approx(2.0)
    torch.testing.assert_close(run("x[::2]"), X[::2])
    torch.testing.assert_close(run("B[:, 0]"), B[:, 0])
    torch.testing.assert_close(run("B[1:, -1]"), B[1:, -1])
    torch.testing.assert_close(run("B[0, 1]"), B[0, 1])
    torch.testing.assert_close(run("x[x > 0]"), X[X > 0])
    torch.testing.assert_close(run("x[:, None] * y[None, :]"), torch.outer(X, Y))
    torch.testing.assert_close(run("B[None, 0, :]"), B[None, 0, :])
    torch.testing.assert_close(run("def f(x):\n    i = len(x) - 1\n    return x[i]"), X[2])


def test_chained_comparison_is_elementwise() -> None:
    got = run("where(0 < x < 1, 1, 0)")
    torch.testing.assert_close(got, ((X > 0) & (X < 1)).to(F64))
    assert run("1 < 2 < 3").item() == 1


def test_maybe_unassigned_name_fails_at_run_time() -> None:
    src = "def f(x):\n    if sum(x) > 100:\n        y = x\n    return y"
    with pytest.raises(FunctionRuntimeError) as info:
        compile_function(src)(X)
    assert (info.value.line, info.value.column) == (4, 12)
    assert "before it is assigned" in info.value.message


def test_multi_element_condition_is_a_runtime_error_with_position() -> None:
    src = "def f(x):\n    y = x\n    if x > 0:\n        y = -x\n    return y"
    with pytest.raises(FunctionRuntimeError) as info:
        compile_function(src)(X)
    assert (info.value.line, info.value.column) == (3, 8)
    assert "shape (3,)" in info.value.message
    assert "all(" in info.value.hint


def test_runtime_errors_name_the_call() -> None:
    Am = torch.ones(3, 4, dtype=F64)
    with pytest.raises(FunctionRuntimeError) as info:
        compile_function("matmul(A, x)")(Am, torch.ones(5, dtype=F64))
    assert info.value.message == "matmul(A, x): shapes (3, 4) and (5,) cannot be multiplied"
    assert (info.value.line, info.value.column) == (1, 1)
    with pytest.raises(FunctionRuntimeError) as info:
        compile_function("def f(A, x):\n    y = 2 * x\n    return A @ y")(Am, X)
    assert info.value.message == "A @ y: shapes (3, 4) and (3,) cannot be multiplied"
    assert (info.value.line, info.value.column) == (3, 12)


def test_runtime_limits_have_positions() -> None:
    src = "def f(x):\n    k = 0\n    while k >= 0:\n        k += 1\n    return x"
    with pytest.raises(LimitExceededError) as info:
        compile_function(src)(X)
    assert info.value.limit == "max_loop_iterations"
    assert (info.value.line, info.value.column) == (3, 5)
    assert info.value.message == "while loop ran more than 10000 iterations"


# -- torch.func transforms ---------------------------------------------------------------

CONTROL_FLOW = """
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


@pytest.mark.parametrize("seed", range(5))
def test_control_flow_example_jacobian(seed: int) -> None:
    torch.manual_seed(seed)
    a = torch.randn(4, dtype=F64)
    fn = compile_function(CONTROL_FLOW)
    # closed form, worked out in numpy: f(a) = s * 2**m * a, with m the doublings and
    # s = 1 or 100 by the sign of the sum, both constant near a; so J = s * 2**m * I
    x, m = a.numpy(), 1
    while np.linalg.norm(2**m * x) < 1000:
        m += 1
    slope = 2.0**m * (1 if np.sum(2**m * x) > 0 else 100)
    want = torch.as_tensor(slope * np.eye(4))
    torch.testing.assert_close(fn(a), slope * a)
    torch.testing.assert_close(torch.func.jacrev(fn)(a), want)
    torch.testing.assert_close(torch.func.jacfwd(fn)(a), want)
    grad = torch.func.grad(lambda t: fn(t).sum())(a)
    torch.testing.assert_close(grad, want.sum(0))


def test_control_flow_under_vmap_raises_data_dependent() -> None:
    fn = compile_function(CONTROL_FLOW)
    points = torch.randn(6, 4, dtype=F64)
    with pytest.raises(DataDependentControlFlow) as info:
        torch.func.vmap(fn)(points)
    assert info.value.line == 4
    # The fallback the worker uses: one point at a time.
    rows = torch.stack([fn(p) for p in points])
    assert rows.shape == (6, 4)


@pytest.mark.parametrize(
    "source",
    [
        "x if sum(x) > 0 else -x",
        "def f(x):\n    return x if max(x) > 0 and min(x) < 0 else x",
        "def f(x):\n    for i in range(int_n(x)):\n        x = x * 2\n    return x".replace(
            "int_n(x)", "numel(x)"
        ),
        "arange(sum(x)) ",
    ],
)
def test_value_dependent_code_under_vmap(source: str) -> None:
    fn = compile_function(source.strip())
    points = torch.rand(3, 3, dtype=F64) + 0.5
    try:
        out = torch.func.vmap(fn)(points)
    except DataDependentControlFlow:
        return
    # Code that does not depend on values (range(numel(x))) must just work.
    torch.testing.assert_close(out, torch.stack([fn(p) for p in points]))


def test_expression_functions_under_vmap_grad_hessian() -> None:
    rosen = compile_function("sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)")
    points = torch.randn(5, 4, dtype=F64)

    def rosen_grad(x: torch.Tensor) -> torch.Tensor:
        g = torch.zeros_like(x)
        g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
        g[1:] += 200 * (x[1:] - x[:-1] ** 2)
        return g

    grads = torch.func.vmap(torch.func.grad(rosen))(points)
    torch.testing.assert_close(grads, torch.stack([rosen_grad(p) for p in points]))

    quad = compile_function("2 * dot(x, x)")
    hess = torch.func.vmap(torch.func.hessian(quad))(points)
    torch.testing.assert_close(hess, 4 * torch.eye(4, dtype=F64).expand(5, 4, 4))

    tr = compile_function("trace(A @ X)")
    Xs = torch.randn(5, 3, 3, dtype=F64)
    g = torch.func.vmap(torch.func.grad(tr, argnums=1), in_dims=(None, 0))(A, Xs)
    torch.testing.assert_close(g, A.T.expand(5, 3, 3))

    ld = compile_function("logdet(X)")
    spd = torch.stack([A, A + torch.eye(3, dtype=F64)])
    g = torch.func.vmap(torch.func.grad(ld))(spd)
    torch.testing.assert_close(g, torch.linalg.inv(spd).transpose(-2, -1))


def test_jvp_and_vjp() -> None:
    fn = compile_function("sin(x) * y")
    t = torch.ones(3, dtype=F64)
    tangent = torch.func.jvp(fn, (X, Y), (t, torch.zeros(3, dtype=F64)))[1]
    torch.testing.assert_close(tangent, torch.cos(X) * Y)
    pullback = torch.func.vjp(fn, X, Y)[1]
    gx, gy = pullback(torch.ones(3, dtype=F64))
    torch.testing.assert_close(gx, torch.cos(X) * Y)
    torch.testing.assert_close(gy, torch.sin(X))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_table_examples_work_under_vmap(name: str) -> None:
    """Every example either vmaps to the per-point result or asks for the fallback."""
    fn = compile_function(FUNCTIONS[name].example)
    values = {k: torch.stack([v, v * 0.5 + 0.1]) for k, v in INPUTS.items()}
    args = [values[n] for n in fn.inputs]
    if not args:
        return
    try:
        out = torch.func.vmap(fn)(*args)
    except DataDependentControlFlow:
        return
    expected = torch.stack([fn(*(a[i] for a in args)) for i in range(2)])
    torch.testing.assert_close(out, expected)
