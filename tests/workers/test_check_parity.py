"""Verdict parity with torch.autograd.gradcheck on a corpus of claimed gradients.

For each scalar function f and claimed gradient c, gradcheck runs on a
torch.autograd.Function whose backward is the claim; gradserve runs claimed_check(f,
c) (claim vs autograd) and finite_difference_check on the same Function (autograd =
the claim, vs central differences). All three verdicts must agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from support.autograd import with_backward

from gradserve_workers.check import claimed_check, finite_difference_check

Tensor = torch.Tensor
Claim = Callable[[Tensor], Tensor]

A = torch.tensor(
    [[1.0, 2.0, 0.0, -1.0], [0.5, 1.0, 3.0, 0.0], [0.0, -2.0, 1.0, 1.0], [1.0, 0.0, 0.0, 2.0]],
    dtype=torch.float64,
)

# (name, f, correct gradient, wrong gradient, low, high): inputs uniform in [low, high)
CORPUS: list[tuple[str, Callable[[Tensor], Tensor], Claim, Claim, float, float]] = [
    ("square", lambda x: (x**2).sum(), lambda x: 2 * x, lambda x: x, -2, 2),
    ("two_dot", lambda x: 2 * torch.dot(x, x), lambda x: 4 * x, lambda x: 2 * x, -2, 2),
    ("sin", lambda x: torch.sin(x).sum(), torch.cos, lambda x: -torch.cos(x), -3, 3),
    ("cos", lambda x: torch.cos(x).sum(), lambda x: -torch.sin(x), torch.sin, -3, 3),
    ("exp", lambda x: torch.exp(x).sum(), torch.exp, lambda x: x * torch.exp(x), -1, 1),
    ("log", lambda x: torch.log(x).sum(), lambda x: 1 / x, torch.log, 0.5, 3),
    (
        "sqrt",
        lambda x: torch.sqrt(x).sum(),
        lambda x: 0.5 / torch.sqrt(x),
        lambda x: 1 / torch.sqrt(x),
        0.5,
        3,
    ),
    (
        "tanh",
        lambda x: torch.tanh(x).sum(),
        lambda x: 1 - torch.tanh(x) ** 2,
        lambda x: 1 - torch.tanh(x),
        -2,
        2,
    ),
    (
        "sigmoid",
        lambda x: torch.sigmoid(x).sum(),
        lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)),
        torch.sigmoid,
        -2,
        2,
    ),
    ("cube", lambda x: (x**3).sum(), lambda x: 3 * x**2, lambda x: 3 * x, -2, 2),
    ("prod", lambda x: x.prod(), lambda x: x.prod() / x, lambda x: x.prod().expand_as(x), 0.5, 2),
    ("logsumexp", lambda x: torch.logsumexp(x, 0), lambda x: torch.softmax(x, 0), torch.exp, -2, 2),
    (
        "norm",
        lambda x: torch.linalg.vector_norm(x),
        lambda x: x / torch.linalg.vector_norm(x),
        lambda x: 2 * x,
        0.5,
        2,
    ),
    (
        "sum_squared",
        lambda x: x.sum() ** 2,
        lambda x: 2 * x.sum().expand_as(x),
        lambda x: 2 * x,
        -2,
        2,
    ),
    ("softplus", lambda x: torch.nn.functional.softplus(x).sum(), torch.sigmoid, torch.tanh, -2, 2),
    (
        "x_sin_x",
        lambda x: torch.dot(x, torch.sin(x)),
        lambda x: torch.sin(x) + x * torch.cos(x),
        torch.sin,
        -2,
        2,
    ),
    (
        "exp2x",
        lambda x: torch.exp(2 * x).sum(),
        lambda x: 2 * torch.exp(2 * x),
        lambda x: torch.exp(2 * x),
        -1,
        1,
    ),
    ("reciprocal", lambda x: (1 / x).sum(), lambda x: -1 / x**2, lambda x: 1 / x**2, 0.5, 2),
    ("mean_square", lambda x: (x**2).mean(), lambda x: 2 * x / x.numel(), lambda x: 2 * x, -2, 2),
    ("xlogx", lambda x: (x * torch.log(x)).sum(), lambda x: torch.log(x) + 1, torch.log, 0.5, 3),
    (
        "atan",
        lambda x: torch.atan(x).sum(),
        lambda x: 1 / (1 + x**2),
        lambda x: 1 / (1 + x.abs()),
        -2,
        2,
    ),
    (
        "erf",
        lambda x: torch.erf(x).sum(),
        lambda x: 2 / math.sqrt(math.pi) * torch.exp(-(x**2)),
        lambda x: torch.exp(-(x**2)),
        -2,
        2,
    ),
    ("quartic", lambda x: (x**4).sum() / 4, lambda x: x**3, lambda x: x**2, 0.5, 2),
    ("sinh", lambda x: torch.sinh(x).sum(), torch.cosh, torch.sinh, -2, 2),
    (
        "sin_cos",
        lambda x: (torch.sin(x) * torch.cos(x)).sum(),
        lambda x: torch.cos(2 * x),
        lambda x: torch.cos(x) ** 2,
        -2,
        2,
    ),
    (
        "sum_times_sumsq",
        lambda x: x.sum() * (x**2).sum(),
        lambda x: (x**2).sum() + 2 * x * x.sum(),
        lambda x: (x**2).sum().expand_as(x),
        0.5,
        2,
    ),
    (
        "log1p_sq",
        lambda x: torch.log1p(x**2).sum(),
        lambda x: 2 * x / (1 + x**2),
        lambda x: 2 * x,
        0.5,
        2,
    ),
    ("quadratic_form", lambda x: x @ A @ x, lambda x: (A + A.T) @ x, lambda x: 2 * A @ x, 0.5, 2),
    (
        "silu",
        lambda x: (x * torch.sigmoid(x)).sum(),
        lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))),
        torch.sigmoid,
        -2,
        2,
    ),
    (
        "cos_sq",
        lambda x: (torch.cos(x) ** 2).sum(),
        lambda x: -torch.sin(2 * x),
        lambda x: -2 * torch.sin(x),
        -2,
        2,
    ),
    (
        "gauss",
        lambda x: torch.exp(-(x**2)).sum(),
        lambda x: -2 * x * torch.exp(-(x**2)),
        lambda x: -x * torch.exp(-(x**2)),
        -2,
        2,
    ),
    (
        "rosenbrock",
        lambda x: (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum(),
        lambda x: (
            torch.cat([torch.zeros(1, dtype=x.dtype), 200 * (x[1:] - x[:-1] ** 2)])
            + torch.cat(
                [
                    -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1]),
                    torch.zeros(1, dtype=x.dtype),
                ]
            )
        ),
        lambda x: torch.cat([torch.zeros(1, dtype=x.dtype), 200 * (x[1:] - x[:-1] ** 2)]),
        -1,
        1,
    ),
    # tolerance edges: a 1% error fails both, a 1e-6 relative error passes both
    ("square_1pct_off", lambda x: (x**2).sum(), lambda x: 2 * x, lambda x: 2 * x * 1.01, 0.5, 2),
    (
        "square_tiny_off",
        lambda x: (x**2).sum(),
        lambda x: 2 * x * (1 + 1e-6),
        lambda x: 2 * x * 1.5,
        0.5,
        2,
    ),
]


def as_function(f: Callable[[Tensor], Tensor], claim: Claim) -> Callable[[Tensor], Tensor]:
    """``f`` as an autograd.Function whose backward is ``claim`` (what gradcheck sees)."""
    return with_backward(f, lambda x, g: g * claim(x))


CASES = [
    pytest.param(f, claim, low, high, which == "correct", id=f"{name}-{which}")
    for name, f, good, bad, low, high in CORPUS
    for which, claim in (("correct", good), ("wrong", bad))
]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("f,claim,low,high,correct", CASES)
def test_verdict_matches_gradcheck(
    f: Callable[[Tensor], Tensor], claim: Claim, low: float, high: float, correct: bool
) -> None:
    g = torch.Generator().manual_seed(11)
    x = low + (high - low) * torch.rand(4, generator=g, dtype=torch.float64)
    fn = as_function(f, claim)
    expected = torch.autograd.gradcheck(
        fn, (x.clone().requires_grad_(True),), raise_exception=False
    )
    assert expected == correct  # the corpus means what it says
    claimed = claimed_check(f, {"x": claim}, ["x"], {"x": x}, kind="grad")
    assert claimed.passed == expected, claimed.message
    fd = finite_difference_check(fn, ["x"], {"x": x})
    assert fd.passed == expected, fd.message
