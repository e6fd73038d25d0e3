"""A corpus of custom ``torch.autograd.Function``s: right and wrong hand-written backwards.

Each is written per point in the ``setup_context`` form with ``generate_vmap_rule``
(what ``torch.func`` needs), so the service can check it vectorised over points.
``FIRST_ORDER`` entries have a right or a wrong ``backward``; ``SECOND_ORDER``
entries are scalar and their ``backward`` is right at first order, but not always
differentiable right (a detached term: the double backward drops it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable[..., torch.Tensor]
    shapes: tuple[tuple[int, ...], ...]  # per input, at one point
    right: bool
    positive: bool = False  # inputs drawn in [0.5, 2] (log, sqrt)


def _function(
    forward: Callable[..., torch.Tensor],
    backward: Callable[..., Any],
    save_output: bool = False,
) -> Callable[..., torch.Tensor]:
    """An autograd.Function from its forward and a backward of (inputs, output, g)."""

    class Custom(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args: torch.Tensor) -> torch.Tensor:
            return forward(*args)

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
            ctx.save_for_backward(*inputs, output)

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> Any:
            *inputs, output = ctx.saved_tensors
            return backward(*inputs, output, g)

    return Custom.apply  # type: ignore[no-any-return]


def _normalize_bwd(x: torch.Tensor, out: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g - out * (out @ g)) / torch.linalg.vector_norm(x)


def _lse(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x, 0)


F = _function
V3, M3 = (3,), (3, 3)

FIRST_ORDER: list[Case] = [
    Case("square", F(lambda x: x * x, lambda x, o, g: 2 * x * g), (V3,), True),
    Case("sin", F(torch.sin, lambda x, o, g: torch.cos(x) * g), (V3,), True),
    Case("exp", F(torch.exp, lambda x, o, g: o * g), (V3,), True),
    Case("log", F(torch.log, lambda x, o, g: g / x), (V3,), True, positive=True),
    Case("sigmoid", F(torch.sigmoid, lambda x, o, g: o * (1 - o) * g), (V3,), True),
    Case("tanh", F(torch.tanh, lambda x, o, g: (1 - o * o) * g), (V3,), True),
    Case(
        "softplus",
        F(torch.nn.functional.softplus, lambda x, o, g: torch.sigmoid(x) * g),
        (V3,),
        True,
    ),
    Case("sqrt", F(torch.sqrt, lambda x, o, g: g / (2 * o)), (V3,), True, positive=True),
    Case("mul", F(lambda x, y: x * y, lambda x, y, o, g: (g * y, g * x)), (V3, V3), True),
    Case(
        "matvec",
        F(lambda A, x: A @ x, lambda A, x, o, g: (torch.outer(g, x), A.mT @ g)),
        (M3, V3),
        True,
    ),
    Case(
        "quad_form",
        F(
            lambda x, A: x @ (A @ x),
            lambda x, A, o, g: (g * ((A + A.mT) @ x), g * torch.outer(x, x)),
        ),
        (V3, M3),
        True,
    ),
    Case("normalize", F(lambda x: x / torch.linalg.vector_norm(x), _normalize_bwd), (V3,), True),
    Case("logsumexp", F(_lse, lambda x, o, g: g * torch.exp(x - o)), (V3,), True),
    Case(
        "cumsum",
        F(
            lambda x: torch.cumsum(x, 0),
            lambda x, o, g: torch.flip(torch.cumsum(torch.flip(g, (0,)), 0), (0,)),
        ),
        (V3,),
        True,
    ),
    # wrong backwards: a sign, a factor, a transpose, a term, a normalisation, a direction
    Case("sin_sign", F(torch.sin, lambda x, o, g: -torch.cos(x) * g), (V3,), False),
    Case("exp_factor", F(torch.exp, lambda x, o, g: g), (V3,), False),
    Case("sqrt_half", F(torch.sqrt, lambda x, o, g: g / o), (V3,), False, positive=True),
    Case("mul_swapped", F(lambda x, y: x * y, lambda x, y, o, g: (g * x, g * y)), (V3, V3), False),
    Case(
        "matvec_transpose",
        F(lambda A, x: A @ x, lambda A, x, o, g: (torch.outer(g, x), A @ g)),
        (M3, V3),
        False,
    ),
    Case(
        "quad_form_transpose",
        F(lambda x, A: x @ (A @ x), lambda x, A, o, g: (g * 2 * (A @ x), g * torch.outer(x, x))),
        (V3, M3),
        False,
    ),
    Case(
        "normalize_no_projection",
        F(
            lambda x: x / torch.linalg.vector_norm(x),
            lambda x, o, g: g / torch.linalg.vector_norm(x),
        ),
        (V3,),
        False,
    ),
    Case("logsumexp_unnormalised", F(_lse, lambda x, o, g: g * torch.exp(x)), (V3,), False),
    Case(
        "softplus_sign",
        F(torch.nn.functional.softplus, lambda x, o, g: torch.sigmoid(-x) * g),
        (V3,),
        False,
    ),
    Case(
        "cumsum_direction",
        F(lambda x: torch.cumsum(x, 0), lambda x, o, g: torch.cumsum(g, 0)),
        (V3,),
        False,
    ),
]

SECOND_ORDER: list[Case] = [
    Case("sum_sin", F(lambda x: torch.sin(x).sum(), lambda x, o, g: g * torch.cos(x)), (V3,), True),
    Case("sum_exp", F(lambda x: torch.exp(x).sum(), lambda x, o, g: g * torch.exp(x)), (V3,), True),
    Case("sum_cube", F(lambda x: (x**3).sum(), lambda x, o, g: g * 3 * x**2), (V3,), True),
    Case("logsumexp2", F(_lse, lambda x, o, g: g * torch.exp(x - o)), (V3,), True),
    Case(
        "quad_form2",
        F(
            lambda x, A: x @ (A @ x),
            lambda x, A, o, g: (g * ((A + A.mT) @ x), g * torch.outer(x, x)),
        ),
        (V3, M3),
        True,
    ),
    # right first derivatives whose own derivative is lost (detached) or wrong
    Case(
        "sum_sin_detached",
        F(lambda x: torch.sin(x).sum(), lambda x, o, g: g * torch.cos(x.detach())),
        (V3,),
        False,
    ),
    Case(
        "sum_cube_detached",
        F(lambda x: (x**3).sum(), lambda x, o, g: g * 3 * x.detach() ** 2),
        (V3,),
        False,
    ),
    Case(
        "logsumexp_detached_output",
        F(_lse, lambda x, o, g: g * torch.exp(x - o.detach())),
        (V3,),
        False,
    ),
]


def draw(case: Case, points: int, seed: int = 0) -> list[torch.Tensor]:
    """``points`` random points for ``case``, float64, leading dimension = points."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in case.shapes:
        if case.positive:
            t = 0.5 + 1.5 * torch.rand((points, *shape), generator=gen, dtype=torch.float64)
        else:
            t = torch.randn((points, *shape), generator=gen, dtype=torch.float64)
        out.append(t)
    return out
