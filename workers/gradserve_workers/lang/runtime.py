"""The per-call state of a running function and the tensor helpers all of it shares.

A `Context` lives for one call: the working dtype and device (from the inputs),
the limits, and the loop-iteration budget that all loops of the call draw from.
Its helpers convert Python numbers to tensors in the working dtype and check the
size of a tensor *before* an operation allocates it.
"""

from __future__ import annotations

from typing import Any

import torch

from . import sizes
from .errors import DataDependentControlFlow, FunctionRuntimeError, LimitExceededError
from .limits import Limits

__all__ = ["Context", "is_vmap_error", "shape_text", "to_int", "to_number", "transpose_last"]


def shape_text(shape: torch.Size | tuple[int, ...]) -> str:
    """(3, 4) and (5,) like Python prints tuples; torch.Size would add noise."""
    return str(tuple(int(d) for d in shape))


def is_vmap_error(exc: BaseException) -> bool:
    """True for the RuntimeErrors torch.func.vmap raises when a value is needed.

    bool() or .item() of a batched tensor raise "vmap: It looks like you're ...
    data-dependent control flow" / "... calling .item()". Any vmap-specific
    failure is worth a retry point by point, so the test is deliberately broad.
    """
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return "vmap" in text or "data-dependent" in text or "batched tensor" in text


def to_number(value: object, what: str) -> int | float:
    """A Python number from a number or a one-element tensor (for sizes and bounds)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise FunctionRuntimeError(
                f"{what} must be a single number, got a tensor of shape {shape_text(value.shape)}"
            )
        number = value.item()  # under vmap this raises, and becomes DataDependentControlFlow
        if isinstance(number, bool):
            return int(number)
        if isinstance(number, int | float):
            return number
    raise FunctionRuntimeError(f"{what} must be a number, got {type(value).__name__}")


def to_int(value: object, what: str) -> int:
    number = to_number(value, what)
    if isinstance(number, float):
        if not number.is_integer():
            raise FunctionRuntimeError(f"{what} must be an integer, got {number}")
        return int(number)
    return number


def transpose_last(value: torch.Tensor) -> torch.Tensor:
    """x.T: swap the last two dims; a scalar or a vector is returned unchanged."""
    if value.dim() < 2:
        return value
    return value.transpose(-2, -1)


class Context:
    """State of one call of a compiled function."""

    __slots__ = ("budget", "device", "dtype", "limits", "peak")

    def __init__(self, dtype: torch.dtype, device: torch.device, limits: Limits) -> None:
        self.dtype = dtype
        self.device = device
        self.limits = limits
        self.budget = limits.max_loop_iterations
        # the most elements any checked tensor of this call has (per point under vmap):
        # callers size their batches by it
        self.peak = 0

    # -- limits -----------------------------------------------------------------------

    def check_numel(self, numel: int, what: str) -> None:
        self.peak = max(self.peak, numel)
        if numel > self.limits.max_tensor_elements:
            raise LimitExceededError(
                f"{what} would have {numel} elements, more than the limit of "
                f"{self.limits.max_tensor_elements}",
                limit="max_tensor_elements",
            )

    def check_shape(self, shape: tuple[int, ...] | torch.Size, what: str) -> None:
        self.check_numel(sizes.shape_numel(tuple(int(d) for d in shape)), what)

    def check_result(self, value: Any, what: str) -> Any:
        if isinstance(value, torch.Tensor):
            self.check_numel(value.numel(), f"the result of {what}")
        return value

    def broadcast(self, values: tuple[Any, ...], what: str) -> None:
        """Check the broadcast shape of some operands (tensors and numbers) before the op."""
        shapes = [tuple(v.shape) for v in values if isinstance(v, torch.Tensor)]
        if len(shapes) < 2:
            return
        if all(s == shapes[0] for s in shapes):
            # the common case, without torch.broadcast_shapes: it takes ~18 us a call
            # (measured), and runs before every binary op of every evaluation
            self.check_shape(shapes[0], f"the result of {what}")
            return
        try:
            shape = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            raise FunctionRuntimeError(
                "shapes " + " and ".join(shape_text(s) for s in shapes) + " cannot be broadcast"
            ) from None
        self.check_shape(shape, f"the result of {what}")

    def spend_iteration(self, kind: str, local_count: int) -> None:
        """Draw one loop iteration from the budget of the call."""
        self.budget -= 1
        if self.budget < 0:
            limit = self.limits.max_loop_iterations
            message = (
                f"{kind} loop ran more than {limit} iterations"
                if local_count > limit
                else f"loops ran more than {limit} iterations in total (counted over all loops "
                f"of one call; this {kind} loop reached it)"
            )
            raise LimitExceededError(
                message,
                limit="max_loop_iterations",
                hint="make sure the loop ends; the server's loop limit bounds every call",
            )

    # -- conversions ------------------------------------------------------------------

    def tensor(self, value: Any) -> torch.Tensor:
        """A tensor for math: numbers and bool/int tensors become the working dtype."""
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() or value.is_complex():
                return value
            return value.to(self.dtype)
        if isinstance(value, int | float):
            return torch.as_tensor(value, dtype=self.dtype, device=self.device)
        if isinstance(value, tuple):
            raise FunctionRuntimeError(
                "a tuple cannot be used as a tensor here; use tensor((...)) or stack((...))"
            )
        raise FunctionRuntimeError(f"expected a tensor or a number, got {type(value).__name__}")

    def arith(self, value: Any) -> Any:
        """An operand of an arithmetic operator: numbers stay Python numbers (torch keeps
        the tensor's dtype for them); bool and int tensors become the working dtype."""
        if isinstance(value, torch.Tensor) and not (
            value.is_floating_point() or value.is_complex()
        ):
            return value.to(self.dtype)
        return value

    def truth(self, value: Any, what: str) -> bool:
        """bool() of a condition, with the errors a person can act on."""
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise FunctionRuntimeError(
                    f"the condition {what} is a tensor of shape {shape_text(value.shape)}, "
                    "not a single value",
                    hint="reduce it with all(...) or any(...), or choose elementwise with "
                    "where(cond, a, b)",
                )
            try:
                return bool(value)
            except RuntimeError as exc:
                if is_vmap_error(exc):
                    raise DataDependentControlFlow(
                        f"the condition {what} depends on the value of a tensor, which "
                        "vmap cannot provide (data-dependent control flow)"
                    ) from None
                raise
        if isinstance(value, tuple):
            raise FunctionRuntimeError(f"the condition {what} is a tuple, not a single value")
        return bool(value)

    def matmul(self, left: Any, right: Any, what: str) -> torch.Tensor:
        """a @ b with a readable shape error and a size check before multiplying."""
        a, b = self.tensor(left), self.tensor(right)
        if a.dim() == 0 or b.dim() == 0:
            raise FunctionRuntimeError(
                "matrix product needs tensors with at least one dim; for a scalar factor write *"
            )
        inner_b = b.shape[-2] if b.dim() >= 2 else b.shape[0]
        if a.shape[-1] != inner_b:
            raise FunctionRuntimeError(
                f"shapes {shape_text(a.shape)} and {shape_text(b.shape)} cannot be multiplied"
            )
        try:
            batch = torch.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]))
        except RuntimeError:
            raise FunctionRuntimeError(
                f"batch dims of {shape_text(a.shape)} and {shape_text(b.shape)} cannot be broadcast"
            ) from None
        out = (
            tuple(batch)
            + ((int(a.shape[-2]),) if a.dim() >= 2 else ())
            + ((int(b.shape[-1]),) if b.dim() >= 2 else ())
        )
        self.check_shape(out, f"the result of {what}")
        return torch.matmul(a, b)
