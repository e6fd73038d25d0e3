"""Element counts of tensors before they are created (torch-free).

Shared by the validator (which refuses `zeros(10**10)` when the arguments are
constants) and by the creation functions (which check again with the values at
run time, before allocating). Counts are exact Python integers: `eye(1e300)` or
`arange(-1e308, 1e308)` give a count far over any limit, never an overflow.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = [
    "MAX_DIMS",
    "SizeError",
    "arange_count",
    "as_shape",
    "count_text",
    "creation_numel",
    "shape_numel",
    "size_value",
]

# The most dims a tensor of a function may have: the wire's limit (see docs/limits.md).
# torch allows more, but NumPy, which carries results back, stops at 64.
MAX_DIMS = 32


class SizeError(ValueError):
    """A value that cannot be a size or a count (infinite, NaN, fractional, negative)."""


def size_value(value: int | float, what: str) -> int:
    """A size given as a number: a finite integer >= 0, exactly."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SizeError(f"{what} must be a finite integer, got {value}")
        if not value.is_integer():
            raise SizeError(f"{what} must be an integer, got {value}")
        value = int(value)
    if value < 0:
        raise SizeError(f"{what} must be >= 0, got {value}")
    return value


def count_text(count: int) -> str:
    """A count for a message: `eye(1e300)` has 10^600 elements, too many digits to print."""
    if count < 10**15:
        return str(count)
    exponent = int(math.log10(count))
    mantissa = count // 10 ** (exponent - 2)
    if mantissa >= 1000:  # log10 rounded up
        exponent += 1
        mantissa //= 10
    return f"about {mantissa / 100:.2f}e{exponent}"


def _number(value: object) -> int | float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def as_shape(value: object) -> tuple[int, ...] | None:
    """A number or a tuple of numbers as a shape; None if it is neither.

    Raises SizeError for numbers that cannot be sizes, and for more than MAX_DIMS dims.
    """
    parts = value if isinstance(value, tuple) else (value,)
    numbers = [_number(v) for v in parts]
    if any(n is None for n in numbers):
        return None
    if len(numbers) > MAX_DIMS:
        raise SizeError(f"a shape of {len(numbers)} dims, more than the {MAX_DIMS} allowed")
    return tuple(size_value(n, "a size") for n in numbers if n is not None)


def shape_numel(shape: tuple[int, ...]) -> int:
    # Negative sizes are an error torch reports later; count them as empty here.
    return math.prod(max(d, 0) for d in shape)


def arange_count(start: float, end: float, step: float) -> int | None:
    """How many values arange(start, end, step) has; None if step is 0 or not finite.

    Exact (in fractions): (end - start) / step overflows floats for bounds near 1e308.
    """
    if step == 0 or not all(math.isfinite(v) for v in (start, end, step)):
        return None
    return max(math.ceil((Fraction(end) - Fraction(start)) / Fraction(step)), 0)


def creation_numel(name: str, args: list[object]) -> int | None:
    """Elements a creation function would allocate, from its arguments in parameter order.

    Returns None when the arguments are not (yet) known numbers and shapes; raises
    SizeError when they are known and cannot be sizes.
    """
    if name in ("zeros", "ones", "full"):
        shape = as_shape(args[0]) if args else None
        return None if shape is None else shape_numel(shape)
    if name == "eye":
        n = _number(args[0]) if args else None
        m = _number(args[1]) if len(args) > 1 and args[1] is not None else n
        if n is None or m is None:
            return None
        return size_value(n, "eye()'s n") * size_value(m, "eye()'s m")
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
        count = arange_count(start, end, step)
        if count is None:
            raise SizeError("arange() needs a nonzero, finite step and finite bounds")
        return count
    if name == "linspace":
        steps = _number(args[2]) if len(args) > 2 else None
        return None if steps is None else size_value(steps, "linspace()'s steps")
    return None
