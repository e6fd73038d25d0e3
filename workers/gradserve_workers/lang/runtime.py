"""The per-call state of a running function and the tensor helpers all of it shares.

A `Context` lives for one call: the working dtype and device (from the inputs),
the limits, and the loop-iteration budget that all loops of the call draw from.
Its helpers convert Python numbers to tensors in the working dtype and check the
size of a tensor *before* an operation allocates it.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch._C import _functorch

from .._vmap import is_data_dependent_error
from . import sizes
from .errors import DataDependentControlFlow, FunctionRuntimeError, LimitExceededError
from .limits import Limits

__all__ = [
    "Context",
    "Watch",
    "current_watch",
    "shape_text",
    "to_int",
    "to_number",
    "transpose_last",
    "watching",
]

# Tensors smaller than this are counted without a finalizer (which costs ~3 us an
# operation): added up for the whole call as if none were ever freed. A call would
# need about a million such operations to reach a budget in gigabytes.
TRACK_MIN_BYTES = 1024


class Watch:
    """The deadline and the cancel flag of one worker call, checked between operations.

    A call is every evaluation of the function in one chunk; the worker creates one
    for the chunk, and a bare call of a compiled function gets its own. Once expired
    it stays expired, so a fallback path that catches the error meets it again at its
    first operation.
    """

    __slots__ = ("cancelled", "deadline", "limit", "seconds")

    def __init__(self, seconds: float, limit: str = "max_call_seconds") -> None:
        self.seconds = seconds
        self.limit = limit
        self.deadline = time.monotonic() + seconds if math.isfinite(seconds) else math.inf
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the call at its next operation (set from another thread)."""
        self.cancelled = True

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def check(self, what: str) -> None:
        if self.cancelled:
            raise LimitExceededError(
                f"the call was cancelled (its caller went away or its deadline passed) "
                f"while running {what}",
                limit="cancelled",
            )
        if time.monotonic() > self.deadline:
            raise LimitExceededError(
                f"the call ran for more than {self.seconds:g} s of worker time, the "
                f"per-call CPU budget ({self.limit}); it was stopped while running {what}",
                limit=self.limit,
                hint="make the function cheaper, or split the points over several calls",
            )


_current = threading.local()


@contextmanager
def watching(watch: Watch) -> Iterator[Watch]:
    """Make ``watch`` the deadline of every call of a compiled function on this thread."""
    previous = getattr(_current, "watch", None)
    _current.watch = watch
    try:
        yield watch
    finally:
        _current.watch = previous


def current_watch() -> Watch | None:
    return getattr(_current, "watch", None)


def _real(value: torch.Tensor) -> torch.Tensor:
    """The tensor under torch.func's wrappers: under vmap it has the batch dims, so its
    size is what the operation really allocated."""
    while _functorch.is_functorch_wrapped_tensor(value):
        value = _functorch.get_unwrapped(value)
    return value


def shape_text(shape: torch.Size | tuple[int, ...]) -> str:
    """(3, 4) and (5,) like Python prints tuples; torch.Size would add noise."""
    return str(tuple(int(d) for d in shape))


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


class _Held(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a storage the call made, with its address and size."""

    __slots__ = ("key", "size")
    key: int
    size: int


def _forgetter(ctx_ref: weakref.ref[Context]) -> Any:
    """The callback that drops a freed storage from its call's count (the call may be
    gone by then: results outlive it)."""

    def forget(held: _Held) -> None:
        ctx = ctx_ref()
        if ctx is not None and ctx.tracked.get(held.key) is held:
            del ctx.tracked[held.key]
            ctx.held -= held.size

    return forget


class Context:
    """State of one call of a compiled function.

    Memory: every tensor an operation of the function returns is counted once per
    storage (views share their base's) until its storage is freed. A storage that
    autograd saves for the backward pass stays alive, so the count covers saved
    tensors too, under torch.func's transforms as well (which refuse
    saved_tensors_hooks). Inputs belong to the caller and are not counted.
    """

    __slots__ = (
        "__weakref__",
        "_on_free",
        "budget",
        "device",
        "dtype",
        "held",
        "inputs",
        "limits",
        "peak",
        "small",
        "tracked",
        "watch",
    )

    def __init__(self, dtype: torch.dtype, device: torch.device, limits: Limits) -> None:
        self.dtype = dtype
        self.device = device
        self.limits = limits
        self.budget = limits.max_loop_iterations
        # the most elements any checked tensor of this call has (per point under vmap):
        # callers size their batches by it
        self.peak = 0
        self.watch = current_watch() or Watch(limits.max_call_seconds)
        # storage address -> a weak reference to the storage that forgets it when freed
        self.tracked: dict[int, _Held] = {}
        self._on_free = _forgetter(weakref.ref(self))
        self.held = 0  # bytes of the tracked storages
        self.small = 0  # bytes of untracked small results, never subtracted
        self.inputs: set[int] = set()

    # -- limits -----------------------------------------------------------------------

    def add_inputs(self, values: tuple[Any, ...]) -> None:
        """Storages of the inputs: views of them (x[0]) cost nothing new."""
        for value in values:
            if isinstance(value, torch.Tensor):
                try:
                    self.inputs.add(_real(value).untyped_storage().data_ptr())
                except (RuntimeError, TypeError):
                    continue

    def account(self, value: Any, what: str) -> None:
        """Called with the result of every operation: the deadline, the cancel flag, the
        dims and the memory the call holds."""
        watch = self.watch
        if watch.cancelled or time.monotonic() > watch.deadline:
            watch.check(what)
        if not isinstance(value, torch.Tensor):
            return
        if value.dim() > sizes.MAX_DIMS:
            raise FunctionRuntimeError(
                f"{what} has {value.dim()} dims, more than the {sizes.MAX_DIMS} allowed"
            )
        if type(value) is not torch.Tensor:
            # a tensor subclass: the finite-difference engine's lazy one-hot rows
            # (_perturb._Batch), which keeps its own bounds and refuses storage access
            return
        real = _real(value) if _functorch.is_functorch_wrapped_tensor(value) else value
        nbytes = real.nbytes
        if nbytes < TRACK_MIN_BYTES:
            self.small += nbytes
        else:
            self._track(real, nbytes)
        if self.held + self.small > self.limits.max_call_bytes:
            self.check_bytes(0, what)

    def _track(self, real: torch.Tensor, nbytes: int) -> None:
        try:
            storage = real.untyped_storage()
        except (RuntimeError, TypeError):  # a tensor without storage: count it for good
            self.small += nbytes
            return
        key = storage.data_ptr()
        if key == 0 or key in self.tracked or key in self.inputs:
            return
        held = _Held(storage, self._on_free)
        held.key = key
        held.size = storage.nbytes()
        self.tracked[key] = held
        self.held += held.size

    def check_bytes(self, more: int, what: str) -> None:
        """Refuse if the call would hold more than its memory budget."""
        total = self.held + self.small + more
        budget = self.limits.max_call_bytes
        if total > budget:
            raise LimitExceededError(
                f"{what} would bring the memory this call holds to {total / 2**20:.0f} MiB "
                f"(live tensors and those autograd keeps for the derivative), more than "
                f"the per-call memory budget of {budget / 2**20:.0f} MiB (max_call_bytes)",
                limit="max_call_bytes",
                hint="use smaller tensors or fewer loop iterations, or ask for fewer "
                "derivatives at once",
            )

    def check_numel(self, numel: int, what: str) -> None:
        self.peak = max(self.peak, numel)
        if numel > self.limits.max_tensor_elements:
            raise LimitExceededError(
                f"{what} would have {sizes.count_text(numel)} elements, more than the limit of "
                f"{self.limits.max_tensor_elements}",
                limit="max_tensor_elements",
            )
        # before allocating: the size is per point under vmap, so this is a lower bound
        self.check_bytes(numel * self.dtype.itemsize, what)

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
        self.watch.check(f"a {kind} loop")
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
                if is_data_dependent_error(exc):
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
