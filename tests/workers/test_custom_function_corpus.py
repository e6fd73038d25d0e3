"""The service's checks agree with torch.autograd.gradcheck / gradgradcheck, point by
point, on a corpus of custom autograd.Functions with right and wrong backwards.

gradcheck is the reference here only for its verdict (the tool people use today);
both sides compare autograd with central differences, so neither checks the other
with autograd alone.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from support.custom_functions import FIRST_ORDER, SECOND_ORDER, Case, draw

from gradserve_workers.check import finite_difference_check

POINTS = 12


def _names(case: Case) -> list[str]:
    return [f"in{i}" for i in range(len(case.shapes))]


def _service(case: Case, points: list[torch.Tensor], order: int) -> tuple[bool, ...]:
    names = _names(case)
    report = finite_difference_check(
        case.fn, names, dict(zip(names, points, strict=True)), batched=True, order=order
    )
    return report.point_passed


def _gradcheck(case: Case, points: list[torch.Tensor], order: int) -> tuple[bool, ...]:
    check = torch.autograd.gradcheck if order == 1 else torch.autograd.gradgradcheck
    verdicts = []
    for i in range(points[0].shape[0]):
        args = tuple(p[i].clone().requires_grad_(True) for p in points)
        verdicts.append(bool(check(case.fn, args, eps=1e-6, atol=1e-5, rtol=1e-3,
                                   raise_exception=False)))  # fmt: skip
    return tuple(verdicts)


def test_the_corpus_is_large_and_mixed() -> None:
    cases = FIRST_ORDER + SECOND_ORDER
    assert len(cases) >= 20
    assert len({c.name for c in cases}) == len(cases)
    assert {c.right for c in FIRST_ORDER} == {c.right for c in SECOND_ORDER} == {True, False}
    assert all(inspect.signature(c.fn) for c in cases)


@pytest.mark.parametrize("case", FIRST_ORDER, ids=[c.name for c in FIRST_ORDER])
def test_first_order_verdicts_agree_with_gradcheck(case: Case) -> None:
    points = draw(case, POINTS, seed=1)
    service = _service(case, points, 1)
    assert service == _gradcheck(case, points, 1)
    assert all(service) == case.right


@pytest.mark.parametrize("case", SECOND_ORDER, ids=[c.name for c in SECOND_ORDER])
def test_second_order_verdicts_agree_with_gradgradcheck(case: Case) -> None:
    points = draw(case, POINTS, seed=2)
    service = _service(case, points, 2)
    assert service == _gradcheck(case, points, 2)
    assert all(service) == case.right
