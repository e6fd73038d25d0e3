"""Registered functions that misbehave in the ways the service must report well."""

from __future__ import annotations

import time
from typing import Any

import torch

SLOW_SECONDS = 600.0


def raises(x: torch.Tensor) -> torch.Tensor:
    """Always refuses: what a user sees is the exception's type and message."""
    raise ValueError("x must be positive definite")


def slow(x: torch.Tensor) -> torch.Tensor:
    """Takes ten minutes: the server's chunk timeout ends it."""
    time.sleep(SLOW_SECONDS)
    return x.sum()


class _Cube(torch.autograd.Function):
    # no generate_vmap_rule and no vmap staticmethod: cannot be vectorised

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return (x**3).sum()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


def no_vmap_rule(x: torch.Tensor) -> torch.Tensor:
    """sum(x³) through an autograd.Function without a vmap rule (runs per point)."""
    return _Cube.apply(x)


class _OldCube(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x**3).sum()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


def old_style(x: torch.Tensor) -> torch.Tensor:
    """sum(x³) through an autograd.Function whose forward takes ctx (no setup_context)."""
    return _OldCube.apply(x)


class _BrokenBackward(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return (x**2).sum()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("deliberate bug in a backward")


def internal_bug(x: torch.Tensor) -> torch.Tensor:
    """sum(x²), whose backward raises RuntimeError: a bug on the server's side (the
    operator's code, run by the workers outside the user's function), never the
    user's mistake."""
    return _BrokenBackward.apply(x)


def not_enabled(x: torch.Tensor) -> torch.Tensor:
    """Installed, never enabled by the tests' server."""
    return x.sum()
