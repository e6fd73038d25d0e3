"""Every limit in Limits: refused statically where possible, at run time otherwise, fast."""

from __future__ import annotations

import time

import pytest
import torch

from gradserve_workers.lang import (
    LimitExceededError,
    Limits,
    compile_function,
    parse_and_validate,
)

X = torch.linspace(0.5, 1.5, 3, dtype=torch.float64)


def limit_of(source: str, limits: Limits = Limits()) -> LimitExceededError:
    """The limit error of validating, or else of calling with X for every input."""
    with pytest.raises(LimitExceededError) as info:
        fn = compile_function(source, limits)
        fn(*(X for _ in fn.inputs))
    return info.value


def test_max_source_chars() -> None:
    parse_and_validate("x" * 100, Limits(max_source_chars=100))
    error = limit_of("x" * 101, Limits(max_source_chars=100))
    assert error.limit == "max_source_chars" and "101 characters" in error.message


def test_max_nodes() -> None:
    source = "(" + "x, " * 30 + ")"
    error = limit_of(source, Limits(max_nodes=20))
    assert error.limit == "max_nodes"
    assert error.line == 1


def test_max_depth() -> None:
    parse_and_validate("-" * 5 + "x", Limits(max_depth=8))
    error = limit_of("-" * 10 + "x", Limits(max_depth=8))
    assert error.limit == "max_depth" and error.line == 1


def test_max_depth_default_allows_ordinary_programs() -> None:
    poly = " + ".join(f"{i} * x ** {i}" for i in range(12))
    parse_and_validate(poly)


@pytest.mark.parametrize(
    "source",
    [
        "def f(x):\n    while True:\n        x = x + 1\n    return x",
        "def f(x):\n    for i in range(11):\n        x = x + 1\n    return x",
    ],
)
def test_max_loop_iterations_per_loop(source: str) -> None:
    error = limit_of(source, Limits(max_loop_iterations=10))
    assert error.limit == "max_loop_iterations"
    assert error.line == 2 and error.column == 5
    assert "more than 10 iterations" in error.message


def test_max_loop_iterations_is_a_budget_for_all_loops_of_a_call() -> None:
    ok = "def f(x):\n    for i in range(10):\n        x = x + 1\n    return x"
    compile_function(ok, Limits(max_loop_iterations=10))(X)
    two = (
        "def f(x):\n    for i in range(6):\n        x = x + 1\n"
        "    for i in range(6):\n        x = x + 1\n    return x"
    )
    error = limit_of(two, Limits(max_loop_iterations=10))
    assert error.line == 4 and "in total" in error.message
    nested = (
        "def f(x):\n    for i in range(4):\n        for j in range(4):\n"
        "            x = x + 1\n    return x"
    )
    assert limit_of(nested, Limits(max_loop_iterations=10)).limit == "max_loop_iterations"
    # The budget is per call: a second call starts afresh.
    fn = compile_function(ok, Limits(max_loop_iterations=10))
    fn(X)
    fn(X)


def test_default_loop_limit_stops_endless_loops_quickly() -> None:
    start = time.perf_counter()
    error = limit_of("def f(x):\n    while 1:\n        pass\n    return x", Limits())
    assert error.message == "while loop ran more than 10000 iterations"
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "source",
    ["zeros(101)", "ones((11, 10))", "eye(11)", "arange(0, 101)", "linspace(0, 1, 101)"],
)
def test_max_tensor_elements_static(source: str) -> None:
    with pytest.raises(LimitExceededError) as info:
        parse_and_validate(source, Limits(max_tensor_elements=100))
    assert info.value.limit == "max_tensor_elements"
    assert (info.value.line, info.value.column) == (1, 1)


@pytest.mark.parametrize(
    "source",
    [
        "zeros(numel(x) * 40)",
        "outer(ones(11), x[0] * ones(10))",
        "reshape(ones(11), (11, 1)) * ones(10)",
        "reshape(ones(11), (11, 1)) @ reshape(ones(10), (1, 10))",
        "diag(ones(11))",
        "kron(ones(11), ones(10))",
        "cat((ones(60), ones(60)))",
        "stack((ones(60), ones(60)))",
        "full((11, 10), x[0])",
        "tensor((ones(60), ones(60)))",
    ],
)
def test_max_tensor_elements_at_run_time(source: str) -> None:
    error = limit_of(source, Limits(max_tensor_elements=100))
    assert error.limit == "max_tensor_elements"
    assert error.line == 1


def test_max_tensor_elements_checks_before_allocating() -> None:
    # 10**6 x 10**6 doubles would be 8 TB: it must be refused, not attempted.
    start = time.perf_counter()
    error = limit_of("def f(x):\n    y = ones(10**6)\n    return outer(y, y)", Limits())
    assert "1000000000000 elements" in error.message
    assert time.perf_counter() - start < 1.0


def test_max_input_elements_has_its_default() -> None:
    # Checked by the caller (the worker), which knows the inputs of a point.
    assert Limits().max_input_elements == 1_000_000


def test_max_int_power_tower_is_instant() -> None:
    start = time.perf_counter()
    with pytest.raises(LimitExceededError) as info:
        parse_and_validate("9**9**9")
    assert info.value.limit == "max_int"
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    "source",
    [
        "def f(x):\n    n = 3\n    for i in range(10):\n        n = n ** 3\n    return x * n",
        "def f(x):\n    n = 2\n    for i in range(100):\n        n = n * n\n    return x * n",
        "def f(x):\n    n = 1\n    for i in range(100):\n        n = n + n\n    return x * n",
        "def f(x):\n    n = -(2 ** 62)\n    n = n * 4\n    return x * n",
    ],
)
def test_max_int_at_run_time(source: str) -> None:
    start = time.perf_counter()
    assert limit_of(source, Limits()).limit == "max_int"
    assert time.perf_counter() - start < 0.5


def test_max_int_is_configurable() -> None:
    assert compile_function("2 ** 20", Limits(max_int=2**21))().item() == 2**20
    with pytest.raises(LimitExceededError):
        parse_and_validate("2 ** 21", Limits(max_int=2**21))
