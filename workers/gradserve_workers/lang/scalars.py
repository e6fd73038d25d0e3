"""Arithmetic on plain Python numbers with bounded integers (torch-free).

Python ints grow without bound: `9 ** 9 ** 9` would spend minutes and gigabytes
before anything could notice. Every operation on two Python numbers goes through
`binary()`, which refuses an integer result beyond `max_int` *before* computing it
where the cost is in the computation (powers), and right after it where the
computation is cheap because the operands are already bounded (+, -, *).
The validator uses the same functions to fold constants, so the refusal of
`9**9**9` happens before the function ever reaches a worker.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

from .errors import FunctionRuntimeError, LimitExceededError

__all__ = ["Number", "binary", "check_int", "compare", "is_number", "unary"]

Number = int | float

_PLAIN: dict[str, Callable[[Number, Number], Number]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
}

_COMPARE: dict[str, Callable[[Number, Number], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def is_number(value: object) -> bool:
    """True for Python int, float and bool (not for tensors, tuples or complex)."""
    return isinstance(value, int | float)


def check_int(value: Number, max_int: int) -> Number:
    """Refuse an int whose magnitude reaches max_int; floats pass (they cannot grow)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= max_int:
        raise LimitExceededError(
            f"integer value needs more than {max_int.bit_length() - 1} bits "
            f"(the limit is magnitude below {max_int})",
            limit="max_int",
            hint="write the number as a float (e.g. 1e30) if you need a large value",
        )
    return value


def _power(base: Number, exponent: Number, max_int: int) -> Number:
    # Compare log2 of the result with the bound, without computing the result.
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and exponent * math.log2(abs(base)) >= math.log2(max_int)
    ):
        raise LimitExceededError(
            f"{base} ** {exponent} is too large: it would exceed the integer limit "
            f"of {max_int.bit_length() - 1} bits",
            limit="max_int",
            hint="use floats (e.g. 9.0 ** 9) if a large value is really meant",
        )
    try:
        result = base**exponent
    except ZeroDivisionError:
        raise FunctionRuntimeError(f"{base} ** {exponent} divides by zero") from None
    except OverflowError:
        raise FunctionRuntimeError(f"{base} ** {exponent} overflows a float") from None
    if isinstance(result, complex):
        # A negative float to a fractional power: torch gives nan, so do we.
        return math.nan
    return result


def binary(op: str, left: Number, right: Number, max_int: int) -> Number:
    """Apply the binary operator `op` ("+", "**", ...) to two Python numbers."""
    if op == "**":
        return check_int(_power(left, right, max_int), max_int)
    if op == "@":
        raise FunctionRuntimeError("`@` needs tensors, not numbers")
    try:
        result = _PLAIN[op](left, right)
    except ZeroDivisionError:
        raise FunctionRuntimeError(f"division by zero in {left} {op} {right}") from None
    except OverflowError:
        raise FunctionRuntimeError(f"{left} {op} {right} overflows a float") from None
    return check_int(result, max_int)


def unary(op: str, operand: Number, max_int: int) -> Number:
    """Apply unary "+", "-" or "not" to a Python number."""
    if op == "not":
        return not operand
    result = -operand if op == "-" else +operand
    return check_int(result, max_int)


def compare(op: str, left: Number, right: Number) -> bool:
    return _COMPARE[op](left, right)
