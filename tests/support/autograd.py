"""Functions with a hand-written (possibly wrong) derivative, for checking checks.

Not an oracle: these build the *subject* of a check (a function whose backward is a
claim, as gradcheck sees it); the checks compare it with finite differences. Tests
that need a reference derivative use support.reference (or support.oracle)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


def with_backward(
    f: Callable[[Tensor], Tensor],
    backward: Callable[[Tensor, Tensor], Tensor],
    jvp: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Callable[[Tensor], Tensor]:
    """``f`` as an ``autograd.Function`` whose backward is ``backward(x, grad_out)``
    (and forward-mode derivative ``jvp(x, tangent)``, when given): what gradcheck
    sees of a claimed derivative."""

    class F(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x: Tensor) -> Tensor:
            return f(x)

        @staticmethod
        def setup_context(ctx: object, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            ctx.save_for_backward(inputs[0])  # type: ignore[attr-defined]
            ctx.save_for_forward(inputs[0])  # type: ignore[attr-defined]

        @staticmethod
        def backward(ctx: object, g: Tensor) -> Tensor:
            (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
            return backward(x, g)

        @staticmethod
        def jvp(ctx: object, t: Tensor) -> Tensor:
            if jvp is None:  # torch's own "not implemented": forward mode falls back
                return torch.autograd.Function.jvp(ctx, t)  # type: ignore[no-any-return]
            (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
            return jvp(x, t)

    return F.apply  # type: ignore[no-any-return]
