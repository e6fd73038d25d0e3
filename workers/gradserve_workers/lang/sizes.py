"""Element counts of tensors before they are created (torch-free).

Shared by the validator (which refuses `zeros(10**10)` when the arguments are
constants) and by the creation functions (which check again with the values at
run time, before allocating).
"""

from __future__ import annotations

import math

__all__ = ["arange_count", "as_shape", "creation_numel", "shape_numel"]


def as_shape(value: object) -> tuple[int, ...] | None:
    """An int or a tuple of ints as a shape; None if it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    return None


def shape_numel(shape: tuple[int, ...]) -> int:
    # Negative sizes are an error torch reports later; count them as empty here.
    return math.prod(max(d, 0) for d in shape)


def arange_count(start: float, end: float, step: float) -> int | None:
    """How many values arange(start, end, step) has; None if step is 0 or not finite."""
    if step == 0 or not all(math.isfinite(v) for v in (start, end, step)):
        return None
    return max(math.ceil((end - start) / step), 0)


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def creation_numel(name: str, args: list[object]) -> int | None:
    """Elements a creation function would allocate, from its arguments in parameter order.

    Returns None when the arguments are not (yet) known numbers and shapes.
    """
    if name in ("zeros", "ones", "full"):
        shape = as_shape(args[0]) if args else None
        return None if shape is None else shape_numel(shape)
    if name == "eye":
        n = _number(args[0]) if args else None
        m = _number(args[1]) if len(args) > 1 and args[1] is not None else n
        if n is None or m is None:
            return None
        return int(max(n, 0) * max(m, 0))
    if name == "arange":
        # arange(end) or arange(start, end[, step]); a missing end arrives as None.
        first = _number(args[0]) if args else None
        second = _number(args[1]) if len(args) > 1 and args[1] is not None else None
        step = _number(args[2]) if len(args) > 2 else 1.0
        if len(args) > 1 and args[1] is not None and second is None:
            return None
        if first is None or step is None:
            return None
        start, end = (0.0, first) if second is None else (first, second)
        return arange_count(start, end, step)
    if name == "linspace":
        steps = _number(args[2]) if len(args) > 2 else None
        return None if steps is None else int(max(steps, 0))
    return None
