"""Private: a registered function behind a compiled program's interface (imports torch)."""

from __future__ import annotations

from typing import Any

import torch

from .registry import PREFIX, Registered, RegisteredFunctionError, mark


class _Square(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x * x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * g


def warm_up() -> None:
    """Differentiate a tiny autograd.Function under torch.func once. The first such
    call imports ~800 modules (torch._dynamo, sympy): 2.5 s measured, better paid
    when a worker starts than by a user's first call (or its chunk timeout)."""
    x = torch.ones(2, 2, dtype=torch.float64)
    torch.func.vmap(torch.func.grad(lambda v: _Square.apply(v).sum()))(x)


class RegisteredFunction:
    """Call with one tensor per input, positionally, in ``.inputs`` order; the
    registered callable gets them by name.

    An exception it raises propagates unchanged, so that what torch.func's callers
    fall back on (no vmap rule: a loop over points; no ``jvp``: reverse mode) still
    works; it is marked with the function's name, and the worker reports it as the
    function's failure (:func:`~gradserve_workers.registry.failure_message`).
    """

    def __init__(self, info: Registered, fn: Any) -> None:
        self.info = info
        self._fn = fn

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.info.inputs

    def __repr__(self) -> str:
        return f"RegisteredFunction({PREFIX}{self.info.name}, inputs={self.inputs!r})"

    def __call__(self, *args: Any) -> torch.Tensor:
        name = PREFIX + self.info.name
        if len(args) != len(self.inputs):
            raise TypeError(f"{name} takes {len(self.inputs)} inputs, got {len(args)}")
        try:
            out = self._fn(**dict(zip(self.inputs, args, strict=True)))
        except Exception as exc:
            mark(exc, name)
            raise
        if not isinstance(out, torch.Tensor):
            raise RegisteredFunctionError(f"{name} returned {type(out).__name__}, not a tensor")
        return out
