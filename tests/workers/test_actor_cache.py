"""The actor's compile cache: whitespace, comments and parentheses do not defeat it,
positions in errors stay each source's own, and claims are cached like functions."""

from __future__ import annotations

import time

import pytest
import torch

from gradserve_workers import lang
from gradserve_workers.actor import GradActor

LIMITS = {"max_loop_iterations": 100}


def position_of_error(fn: lang.CompiledFunction) -> tuple[int | None, int | None]:
    try:
        fn(torch.ones(3, dtype=torch.float64))
    except lang.FunctionRuntimeError as err:
        return err.line, err.column
    raise AssertionError("no error")


def test_a_layout_variant_reuses_the_compiled_body_with_its_own_positions() -> None:
    actor = GradActor()
    plain = actor._compiled("sum(x[5])", "h1", LIMITS)
    padded = actor._compiled("sum( (x[5]) )   # the same function", "h2", LIMITS)
    assert padded._body is plain._body  # not validated or compiled again
    assert padded.program.source_hash != plain.program.source_hash
    # each reports its own source's columns, in either order, again and again
    for _ in range(2):
        assert position_of_error(padded) == (1, 7)
        assert position_of_error(plain) == (1, 5)
    different = actor._compiled("sum(x[6])", "h3", LIMITS)
    assert different._body is not plain._body


def test_a_def_relocated_over_lines_reports_the_right_line() -> None:
    actor = GradActor()
    first = actor._compiled("def f(x):\n    y = x[0]\n    return y + x[7]", "d1", LIMITS)
    second = actor._compiled(
        "def f(x):\n\n    # a comment\n    y = x[0]\n\n    return y  +  x[7]", "d2", LIMITS
    )
    assert second._body is first._body
    assert position_of_error(second) == (6, 18)
    assert position_of_error(first) == (3, 16)


def test_limits_and_inputs_are_part_of_the_key() -> None:
    actor = GradActor()
    a = actor._compiled("sum(x * y)", "k1", LIMITS)
    b = actor._compiled("sum(x*y)", "k2", {"max_loop_iterations": 5})
    c = actor._compiled("sum(x*y)", "k3", LIMITS, known_inputs=("y", "x"))
    assert b._body is not a._body and c._body is not a._body
    assert c.inputs == ("y", "x") and a.inputs == ("x", "y")


def test_claims_are_cached() -> None:
    actor = GradActor()
    first = actor._compiled("2 * x", "c1", LIMITS, known_inputs=("x",))
    assert actor._compiled("2 * x", "c1", LIMITS, known_inputs=("x",)) is first
    actor._claim("2 * x", ["x"], LIMITS)
    size = len(actor._cache)
    actor._claim("2 * x", ["x"], LIMITS)
    assert len(actor._cache) == size


def test_padded_variants_of_a_long_function_cost_no_compiling() -> None:
    body = "sum(stack((" + ",".join(["x"] * 2000) + ")))"
    actor = GradActor()
    first = actor._compiled(body, "p0", {})
    started = time.perf_counter()
    for i in range(1, 6):
        source = body + " " * (i * 1000)
        assert actor._compiled(source, f"p{i}", {})._body is first._body
    assert time.perf_counter() - started < 2.0


def test_a_refused_source_is_still_refused_with_its_position() -> None:
    actor = GradActor()
    with pytest.raises(lang.SpecError) as info:
        actor._compiled("sum(x", "bad", LIMITS)
    assert info.value.line == 1
