"""The function language through the SDK: control flow, typical mistakes, fuzzing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradserve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lang"))
from test_lang_fuzz_hypothesis import mutated, token_soup

# a function with data-dependent while and if, as the example states it
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from example_05_control_flow import F as CONTROL_FLOW


def test_control_flow_gradient_is_f_over_a(client: gradserve.Client) -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        a = rng.normal(size=4)
        fa = client.value(CONTROL_FLOW, {"a": a})
        # grad of a vector function is refused; the gradient of sum(f) is the vjp with ones
        g = client.vjp(CONTROL_FLOW, {"a": a}, cotangent=np.ones(4))
        np.testing.assert_allclose(g, fa / a, rtol=1e-12)
        summed = CONTROL_FLOW.replace("return c", "return sum(c)")
        np.testing.assert_allclose(client.grad(summed, {"a": a}), fa / a, rtol=1e-12)


MISTAKES = [
    ("sine(x)", "sin"),  # a typo in a function name
    ("np.sin(x)", "sin(x)"),
    ("x.sum()", "sum(x)"),
    ("math.pi * x", "pi"),
    ("torch.exp(x)", "exp(x)"),
    ("def f(x):\n    y = x * 2", "return"),  # a missing return
    ("def f(x):\n    return sum(x) + z", "z"),  # an undefined name
    ("sum((x + 1)", "("),  # mismatched brackets
    ("sum(x for x in x)", "comprehension"),
    ("lambda x: x", "lambda"),
]


def test_an_expression_with_an_extra_free_name_asks_for_that_input(
    client: gradserve.Client,
) -> None:
    with pytest.raises(gradserve.InvalidArgumentError, match=r"'z' is missing.*takes \(x, z\)"):
        client.value("sum(x) + z", {"x": [1.0]})


@pytest.mark.parametrize(("source", "says"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_typical_mistakes_say_what_to_write(
    client: gradserve.Client, source: str, says: str
) -> None:
    with pytest.raises(gradserve.InvalidSpecError) as info:
        client.value(source, {"x": [1.0, 2.0]})
    err = info.value
    assert err.line >= 1 and err.column >= 1
    assert says in str(err), str(err)
    assert "^" in str(err)  # a caret under the column


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(source=st.one_of(mutated(), token_soup))
def test_fuzzed_programs_end_in_a_value_or_a_clean_error(
    client: gradserve.Client, source: str
) -> None:
    try:
        out = client.value(source, {"x": [0.5, 1.0, 1.5], "y": [1.0, 2.0, 3.0]}, timeout=60)
    except gradserve.InvalidArgumentError as exc:
        # the fuzzed source may take other inputs than x and y: still a clean error
        assert exc.code == "INVALID_ARGUMENT"
        return
    except gradserve.ResourceExhaustedError:
        return
    assert isinstance(out, np.ndarray)
