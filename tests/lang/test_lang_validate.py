"""The validator: accepted programs, refusals with exact positions, messages people can act on."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gradserve_workers
from gradserve_workers.lang import (
    FUNCTIONS,
    LangError,
    LimitExceededError,
    Limits,
    Program,
    SpecError,
    parse_and_validate,
)

CONTROL_FLOW = """def f(a):
    b = a * 2
    while norm(b) < 1000:
        b = b * 2
    if sum(b) > 0:
        c = b
    else:
        c = 100 * b
    return c
"""


@pytest.mark.parametrize(
    ("source", "kind", "inputs"),
    [
        ("2 * dot(x, x)", "expression", ("x",)),
        ("sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)", "expression", ("x",)),
        ("trace(A @ X)", "expression", ("A", "X")),
        ("logdet(X)", "expression", ("X",)),
        ("b * a + pi * e", "expression", ("b", "a")),
        ("a if c > 0 else b", "expression", ("a", "c", "b")),
        ("sum(y)\n", "expression", ("y",)),
        ("  # comment\nsin(x)  # trailing", "expression", ("x",)),
        ("3 + 4", "expression", ()),
        (CONTROL_FLOW, "function", ("a",)),
        ("def g(x, A, t):\n    return A @ x * t", "function", ("x", "A", "t")),
        ("def f():\n    return 1", "function", ()),
        ("def f(x):\n    a, (b, c) = x[0], (x[1], x[2])\n    return a + b + c", "function", ("x",)),
        ("def f(x):\n    y = z = x\n    return y + z", "function", ("x",)),
    ],
)
def test_accepted_programs(source: str, kind: str, inputs: tuple[str, ...]) -> None:
    program = parse_and_validate(source)
    assert isinstance(program, Program)
    assert program.kind == kind
    assert program.inputs == inputs
    assert program.source == source
    assert program.source_hash == hashlib.sha256(source.encode()).hexdigest()


def test_known_inputs_for_expressions_fix_the_order_and_allow_unused() -> None:
    program = parse_and_validate("x * 2", known_inputs=["y", "x"])
    assert program.inputs == ("y", "x")
    with pytest.raises(SpecError) as info:
        parse_and_validate("x + z", known_inputs=["x"])
    assert (info.value.line, info.value.column) == (1, 5)
    assert "undefined name `z`" in info.value.message


def test_known_inputs_must_match_def_parameters() -> None:
    assert parse_and_validate("def f(a, b):\n    return a", known_inputs=["b", "a"]).inputs == (
        "a",
        "b",
    )
    with pytest.raises(SpecError):
        parse_and_validate("def f(a):\n    return a", known_inputs=["x"])
    with pytest.raises(SpecError):
        parse_and_validate("x", known_inputs=["sum"])


# (source, class, line, column, text the message must contain)
POSITIONS: list[tuple[str, type[LangError], int, int, str]] = [
    ("np.sin(x)", SpecError, 1, 1, "np.sin"),
    ("2 * x.sum()", SpecError, 1, 7, ".sum"),
    ("math.pi * x", SpecError, 1, 1, "math.pi"),
    ("torch.exp(x)", SpecError, 1, 1, "torch.exp"),
    ("sine(x)", SpecError, 1, 1, "unknown function `sine`"),
    ("x + y.__class__", SpecError, 1, 7, "__class__"),
    ("def f(x):\n    y = x\n    return z", SpecError, 3, 12, "undefined name `z`"),
    ("def f(x):\n    y = w + x\n    w = 1\n    return y", SpecError, 2, 9, "before it is assigned"),
    ("def f(x):\n    if x[0] > 0:\n        return x", SpecError, 3, 5, "without returning"),
    ("def f(x):\n    y = x", SpecError, 2, 5, "never returns"),
    ("def f(x):\n    return", SpecError, 2, 5, "return needs a value"),
    ("def f(x):\n    return f(x)", SpecError, 2, 12, "recursion"),
    ("sum(x, 0, True, 1)", SpecError, 1, 17, "at most 3"),
    ("sum()", SpecError, 1, 1, "missing the argument `x`"),
    ("sum(x, axis=0)", SpecError, 1, 8, "no keyword argument `axis`"),
    ("sum(x, 0, dim=1)", SpecError, 1, 11, "twice"),
    ("clamp(x=x, min=0)", SpecError, 1, 7, "no keyword argument `x`"),
    ("sum(x", SpecError, 1, 4, "never closed"),
    ("sum(x]", SpecError, 1, 6, "does not match"),
    ("x +", SpecError, 1, 4, "syntax error"),
    ("def f(x):\n    return x +* 2", SpecError, 2, 15, "syntax error"),
    ("def f(x):\n    sum = x\n    return sum", SpecError, 2, 5, "built-in function"),
    ("def f(x):\n    pi = 3\n    return pi", SpecError, 2, 5, "built-in constant"),
    ("def f(x):\n    x[0] = 1\n    return x", SpecError, 2, 5, "item assignment"),
    ("def f(x):\n    for v in x:\n        pass\n    return x", SpecError, 2, 14, "range"),
    ("def f(x):\n    break\n    return x", SpecError, 2, 5, "outside of a loop"),
    ("def f(x):\n    x\n    return x", SpecError, 2, 5, "thrown away"),
    ("def f(x):\n    return x\ny = 1", SpecError, 3, 1, "one expression or one `def`"),
    ("y = 1", SpecError, 1, 1, "top level"),
    ("x; y", SpecError, 1, 4, "one expression or one `def`"),
    ("x is y", SpecError, 1, 1, "`is`"),
    ("[x, y]", SpecError, 1, 1, "lists are not allowed"),
    ("lambda: 0", SpecError, 1, 1, "lambda"),
    ("'s'", SpecError, 1, 1, "strings"),
    ("x << 2", SpecError, 1, 1, "shift"),
    ("sin", SpecError, 1, 1, "is a function"),
    ("é + y.bad", SpecError, 1, 7, "`.bad`"),  # columns count characters, not bytes
    ("9**9**9", LimitExceededError, 1, 1, "too large"),
    ("def f(x):\n    return x * 2 ** 64", LimitExceededError, 2, 16, "too large"),
    ("zeros((10**4, 10**4))", LimitExceededError, 1, 1, "elements"),
]


@pytest.mark.parametrize(("source", "cls", "line", "column", "text"), POSITIONS)
def test_refusals_have_exact_positions(
    source: str, cls: type[LangError], line: int, column: int, text: str
) -> None:
    with pytest.raises(LangError) as info:
        parse_and_validate(source)
    error = info.value
    assert type(error) is cls
    assert (error.line, error.column) == (line, column), str(error)
    assert text in error.message
    assert error.source_line == source.split("\n")[line - 1]


# The ten typical mistakes of a new user, and what the message must tell them to write.
MISTAKES: list[tuple[str, str]] = [
    ("sine(x)", "sin"),
    ("np.sin(x)", "write sin("),
    ("x.sum()", "write sum(x)"),
    ("math.pi * x", "write pi"),
    ("def f(x):\n    y = 2 * x", "add `return"),
    ("def f(x):\n    return 2 * z", "parameters of the def"),
    ("def f(x):\n    return 2 * xx", "did you mean `x`?"),
    ("sum((x + 1)", "closed by the matching"),
    ("sum(x, axis=0)", "write dim="),
    ("torch.exp(x)", "write exp("),
    ("arcsin(x)", "asin(x)"),
    ("x ^ 2", "x ** 2"),
    ("[x, x]", "tuple"),
]


@pytest.mark.parametrize(("source", "advice"), MISTAKES)
def test_typical_mistakes_say_what_to_write(source: str, advice: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_and_validate(source)
    assert advice in str(info.value)


def test_error_text_format() -> None:
    with pytest.raises(SpecError) as info:
        parse_and_validate("def f(x):\n    return sine(x)")
    assert str(info.value) == (
        "line 2, column 12: unknown function `sine`\n"
        "        return sine(x)\n"
        "               ^\n"
        "did you mean `sin` or `sinh` or `sign`?"
    )
    assert info.value.hint.startswith("did you mean")


def test_long_lines_are_cut_around_the_caret() -> None:
    source = "sum((" + "x, " * 200 + "y.bad, " + "x, " * 200 + "x))"
    with pytest.raises(SpecError) as info:
        parse_and_validate(source)
    shown = str(info.value).split("\n")
    assert len(shown[1]) < 120
    caret = shown[2].index("^")
    assert shown[1][caret : caret + 3] == "bad"


def test_errors_survive_pickling() -> None:
    import pickle

    with pytest.raises(SpecError) as info:
        parse_and_validate("sine(x)")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is SpecError
    assert (copy.message, copy.line, copy.column, copy.hint) == (
        info.value.message,
        1,
        1,
        info.value.hint,
    )
    assert str(copy) == str(info.value)
    limit = LimitExceededError("too big", limit="max_nodes")
    again = pickle.loads(pickle.dumps(limit))
    assert again.limit == "max_nodes" and again.line is None


def test_non_string_source_is_a_spec_error() -> None:
    with pytest.raises(SpecError):
        parse_and_validate(b"x")  # type: ignore[arg-type]


def test_every_function_signature_is_checked() -> None:
    for name, spec in FUNCTIONS.items():
        too_many = ", ".join(["x"] * (spec.max_args + 1))
        with pytest.raises(SpecError, match="at most"):
            parse_and_validate(f"{name}({too_many})")
        if spec.min_args:
            with pytest.raises(SpecError, match="missing"):
                parse_and_validate(f"{name}()")
        with pytest.raises(SpecError, match="keyword"):
            parse_and_validate(f"{name}(x, bogus=1)")


def test_validate_does_not_import_torch() -> None:
    root = Path(gradserve_workers.__file__).resolve().parent.parent
    code = (
        "import sys\n"
        "import gradserve_workers.lang.validate\n"
        "from gradserve_workers.lang import parse_and_validate, FUNCTIONS, SpecError, Limits\n"
        "parse_and_validate('def f(x):\\n    return sum(sin(x) @ x)')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        Limits(max_nodes=0)
    with pytest.raises(ValueError):
        Limits(max_depth=10_000)
    assert Limits().max_int == 2**63
