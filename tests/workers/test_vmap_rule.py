"""The one rule that sends a function from ``vmap`` to a per-point loop
(``_vmap.is_data_dependent_error``), used by the op path, the certificate, the check
engine and the function language alike: each case below is raised by real torch or
by the language, not written by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from gradserve_workers import lang
from gradserve_workers._vmap import is_data_dependent_error, vmap_or_loop
from gradserve_workers.ops import OpsRequest, compute


class _NoVmapRule(torch.autograd.Function):
    """An autograd.Function without generate_vmap_rule or a vmap staticmethod."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x * 2

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * 2


class _OldStyle(torch.autograd.Function):
    """An autograd.Function whose forward takes ctx: no torch.func transform runs it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * 2


LANG_IF = "def f(x):\n    if sum(x) > 0:\n        return x\n    return -x\n"
LANG_RANGE = (
    "def f(x):\n    s = 0.0\n    for i in range(sum(x)):\n        s = s + 1\n    return s * x\n"
)

# name -> (a per-point function, whether vmap refuses it for its need of values)
CASES: dict[str, tuple[Callable[[torch.Tensor], Any], bool]] = {
    "torch: a tensor in an if": (lambda x: x if x.sum() > 0 else -x, True),
    "torch: .item()": (lambda x: x * x.sum().item(), True),
    "torch: a random op": (lambda x: x + torch.rand(3), True),
    "torch: autograd.Function without vmap support": (_NoVmapRule.apply, True),
    "language: a condition on a tensor": (lang.compile_function(LANG_IF), True),
    "language: range() of a tensor": (lang.compile_function(LANG_RANGE), True),
    # every transform refuses it, point by point too: not a reason to loop
    "torch: autograd.Function without setup_context": (_OldStyle.apply, False),
    "torch: shapes that cannot be multiplied": (lambda x: torch.ones(2, 2) @ x, False),
    "language: shapes that cannot be multiplied": (lang.compile_function("x @ ones(2)"), False),
}


def _vmap_error(f: Callable[[torch.Tensor], Any]) -> BaseException:
    with pytest.raises(Exception) as info:
        torch.func.vmap(f)(torch.ones(4, 3))
    return info.value


@pytest.mark.parametrize("name", list(CASES))
def test_the_rule_names_each_case(name: str) -> None:
    f, refused_for_values = CASES[name]
    assert is_data_dependent_error(_vmap_error(f)) is refused_for_values


def test_the_rule_is_for_runtime_errors_and_the_language_only() -> None:
    assert not is_data_dependent_error(ValueError("vmap: not a torch refusal"))
    assert not is_data_dependent_error(RuntimeError("shape mismatch"))
    assert is_data_dependent_error(lang.DataDependentControlFlow("needs a value"))


# the random op draws differently per point: nothing to compare its loop against
DETERMINISTIC_REFUSED = [n for n, (_, refused) in CASES.items() if refused and "random" not in n]


@pytest.mark.parametrize("name", DETERMINISTIC_REFUSED)
def test_vmap_or_loop_runs_each_refused_function_point_by_point(name: str) -> None:
    f, _ = CASES[name]
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]])
    out, vmapped = vmap_or_loop(f, (x,), (0,))
    assert not vmapped
    torch.testing.assert_close(out, torch.stack([f(x[0]), f(x[1])]))


@pytest.mark.parametrize("name", [n for n, (_, refused) in CASES.items() if not refused])
def test_vmap_or_loop_raises_what_is_not_a_refusal(name: str) -> None:
    f, _ = CASES[name]
    with pytest.raises(Exception, match=r"cannot be multiplied|setup_context"):
        vmap_or_loop(f, (torch.ones(2, 3),), (0,))


def test_the_language_and_the_op_path_agree_on_a_data_dependent_program() -> None:
    """The language raises its DataDependentControlFlow by the rule; compute, by the
    same rule, falls back to the loop and answers per point."""
    fn = lang.compile_function(LANG_IF)
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    r = compute(fn, ["x"], {"x": x}, OpsRequest(ops=("jacobian",), batched=True))
    assert not r.vmapped
    eye = torch.eye(2)
    torch.testing.assert_close(r.outputs["jacobian"]["x"], torch.stack([eye, -eye]))
