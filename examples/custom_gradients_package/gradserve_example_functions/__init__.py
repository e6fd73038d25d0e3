"""Registered gradserve functions with a hand-written backward.

``quad_form(x, A) = xᵀ A x``, once with the right backward and once with a bug a
person writes easily: ``d/dx xᵀAx = (A + Aᵀ) x``, but ``2 A x`` is only right for a
symmetric ``A`` (a missed transpose). A check at random, non-symmetric ``A``
catches it::

    gradserve serve --functions quad_form,quad_form_buggy
    gradserve check @quad_form_buggy -i x=[1,2] -i "A=[[1,2],[0,1]]"

Both are written per point (``x`` of shape ``(n,)``, ``A`` of shape ``(n, n)``);
``generate_vmap_rule = True`` lets the service vectorise them over points.
"""

from __future__ import annotations

from typing import Any

import torch


class _QuadForm(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        return x @ (A @ x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, A = ctx.saved_tensors
        return g * ((A + A.mT) @ x), g * torch.outer(x, x)


class _QuadFormBuggy(_QuadForm):
    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, A = ctx.saved_tensors
        # BUG (planted): d/dx xᵀAx is (A + Aᵀ) x; 2 A x forgets the transpose
        return g * (2 * (A @ x)), g * torch.outer(x, x)


def quad_form(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """xᵀ A x for a vector x (n,) and a square matrix A (n, n); backward written by hand."""
    return _QuadForm.apply(x, A)


def quad_form_buggy(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """xᵀ A x with a planted bug in its backward: the gradient in x misses a transpose."""
    return _QuadFormBuggy.apply(x, A)
