"""Property: any text, valid or mutated, ends in a value or one of our errors — never a crash.

Valid programs are mutated token by token (delete, insert, replace, duplicate) with
tokens from a pool that includes dangerous ones (dunders, builtins, huge numbers,
loops); random token soup and random text are tried too. Every outcome must be a
tensor or a LangError subclass, quickly.
"""

from __future__ import annotations

import io
import itertools
import tokenize
from datetime import timedelta

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradserve_workers.lang import (
    FUNCTIONS,
    LangError,
    compile_program,
    parse_and_validate,
)

SEEDS = [
    "2 * dot(x, x)",
    "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)",
    "trace(outer(x, y) @ outer(y, x))",
    "where(x > 0, x, 0.1 * x) + max(x, dim=0)",
    "def f(a):\n    b = a * 2\n    while norm(b) < 1000:\n        b = b * 2\n"
    "    if sum(b) > 0:\n        c = b\n    else:\n        c = 100 * b\n    return c\n",
    "def f(x, y):\n    t = 0\n    for i in range(len(x)):\n        t += x[i] * y[i]\n"
    "    return t if t > 0 else -t\n",
    "def f(x):\n    a, b = x[0], x[1:]\n    n = 3\n    while n > 0:\n        n -= 1\n"
    "        b = cat((b, a * ones(1)))\n    return sum(b)\n",
    *(spec.example for spec in FUNCTIONS.values()),
]

POOL = [
    "x", "y", "A", "(", ")", "[", "]", ",", ":", ".", "=", "+", "-", "*", "/", "//", "%",
    "**", "@", "<", ">", "==", "not", "and", "or", "if", "else", "elif", "while", "for", "in",
    "range", "def", "return", "pass", "break", "lambda", "import", "os", "sys", "eval",
    "exec", "open", "getattr", "globals", "__class__", "__import__", "__builtins__",
    "'a'", 'f"{x}"', "b''", "None", "...", "1j", "0", "1", "-1", "9", "1e308", "10**9",
    "9**9**9", "2**63", "True", "\n", "    ", "\n    ", "sum", "zeros", "ones", "outer",
    "reshape", "eye", "arange", "linspace", "inv", "x.T", "yield", "global", "with", "try",
    "del", "class", "async", "await", ";", "*", "**", "{", "}", "#", "\\", "\t",
]  # fmt: skip

X = torch.linspace(0.5, 1.5, 3, dtype=torch.float64)


def chunks(source: str) -> list[str]:
    """The source cut at token boundaries (gaps kept, so joining gives it back)."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    cuts = {0, len(source)}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        for row, col in (token.start, token.end):
            if row - 1 < len(offsets):
                cuts.add(min(offsets[row - 1] + col, len(source)))
    points = sorted(cuts)
    return [source[a:b] for a, b in itertools.pairwise(points) if b > a]


SEED_CHUNKS = [chunks(s) for s in SEEDS]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    parts = list(draw(st.sampled_from(SEED_CHUNKS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        i = draw(st.integers(0, max(len(parts) - 1, 0)))
        if op == "delete" and parts:
            del parts[i]
        elif op == "insert":
            parts.insert(i, draw(st.sampled_from(POOL)))
        elif op == "replace" and parts:
            parts[i] = draw(st.sampled_from(POOL))
        elif parts:
            j = draw(st.integers(i, len(parts)))
            parts[i:i] = parts[i:j]
    return "".join(parts)


token_soup = st.lists(st.sampled_from(POOL), max_size=25).map(" ".join)


def outcome(source: str) -> object:
    """Validate, compile and call; return the value or the (expected) error."""
    try:
        program = parse_and_validate(source)
        fn = compile_program(program)
        value = fn(*(X for _ in program.inputs))
    except LangError as exc:
        assert exc.message
        str(exc)  # formatting must never fail either
        return exc
    assert isinstance(value, torch.Tensor)
    return value


FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)


@FUZZ
@given(mutated())
def test_mutated_programs_end_cleanly(source: str) -> None:
    outcome(source)


@FUZZ
@given(token_soup)
def test_token_soup_ends_cleanly(source: str) -> None:
    outcome(source)


@settings(FUZZ, max_examples=100)
@given(st.text(max_size=60))
def test_random_text_ends_cleanly(source: str) -> None:
    outcome(source)


def test_seeds_are_valid() -> None:
    for source in SEEDS:
        program = parse_and_validate(source)
        assert "".join(chunks(source)) == source
        assert program.kind in ("expression", "function")
