"""The validation rules of a request, each written once and used by every request
kind that needs it (codec.py applies them; jobs run their tasks through the codec).

Each rule raises a :class:`~gradserve_server.errors.ServiceError` that says what and
where (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for a size over a limit) and returns
what it validated. NumPy only: the function is parsed and checked by the language's
torch-free validator.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from gradserve.names import OP_BY_NUMBER
from gradserve_server.errors import exhausted, invalid
from gradserve_workers import lang
from gradserve_workers.tasks import valid_tolerance

T = TypeVar("T")

# a check's tolerances when the request leaves them out
DEFAULT_TOLERANCES = {"atol": 1e-5, "rtol": 1e-3, "eps": 1e-6}


def program(
    source: str, limits: Mapping[str, int], known_inputs: Sequence[str] | None = None
) -> lang.Program:
    """The validated program (cached: a Program is immutable, and repeat calls of the
    same function are the common case; refusals are not cached, they are cheap)."""
    return _validated(
        source,
        tuple(sorted(limits.items())),
        None if known_inputs is None else tuple(known_inputs),
    )


@functools.lru_cache(maxsize=1024)
def _validated(
    source: str, limits: tuple[tuple[str, int], ...], known_inputs: tuple[str, ...] | None
) -> lang.Program:
    return lang.parse_and_validate(source, lang.Limits(**dict(limits)), known_inputs=known_inputs)


def _suggest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def op_names(ops: Sequence[int], call: str) -> tuple[str, ...]:
    """The requested operations by name, each once, in the order asked."""
    if not ops:
        raise invalid(f"{call}: no operation requested; ask for value, grad, jacobian, ...", "ops")
    names = []
    for op in ops:
        if op not in OP_BY_NUMBER:
            raise invalid(f"{call}: unknown operation number {op}", "ops")
        name = OP_BY_NUMBER[op]
        if name not in names:
            names.append(name)
    return tuple(names)


def wrt(names: Sequence[str], inputs: Sequence[str], call: str) -> tuple[str, ...]:
    """The inputs to differentiate with respect to, in the function's order (all when
    none are named)."""
    for name in names:
        if name not in inputs:
            raise invalid(
                f"{call}: wrt names {name!r}, which is not an input; the function takes "
                f"({', '.join(inputs)}){_suggest(name, inputs)}",
                "wrt",
            )
    return tuple(n for n in inputs if n in names) if names else tuple(inputs)


def bind_names(
    given: Mapping[str, T], expected: Sequence[str], what: str, call: str
) -> dict[str, T]:
    """Match named arrays (or anything) to names; a single unnamed one binds to a single
    name."""
    if "" in given:
        if len(given) != 1 or len(expected) != 1:
            raise invalid(
                f"{call}: an unnamed {what} needs a function with exactly one input; "
                f"this one takes ({', '.join(expected)}): pass a dict by name",
                what,
            )
        return {expected[0]: given[""]}
    unknown = [n for n in given if n not in expected]
    if unknown:
        raise invalid(
            f"{call}: {what} {unknown[0]!r} is not an input of the function, which takes "
            f"({', '.join(expected)}){_suggest(unknown[0], expected)}",
            what,
        )
    missing = [n for n in expected if n not in given]
    if missing:
        raise invalid(
            f"{call}: {what} {missing[0]!r} is missing; the function takes ({', '.join(expected)})",
            what,
        )
    return {n: given[n] for n in expected}


def input_sources(sources: Mapping[str, str | None], call: str) -> bool:
    """Each input is a tensor or a sample, and either every one is sampled or none
    (sampled inputs are batched); True when they are sampled."""
    for name, which in sources.items():
        if which not in ("sample", "tensor"):
            where = f"input {name!r}" if name else "input"
            raise invalid(f"{call}: {where} has neither a tensor nor a sample", "inputs")
    sampled = "sample" in sources.values()
    if sampled and set(sources.values()) != {"sample"}:
        raise invalid(f"{call}: sample every input or none (sampled inputs are batched)", "inputs")
    return sampled


def points(
    arrays: Mapping[str, np.ndarray],
    batched: bool,
    call: str,
    max_points: int,
    max_input_elements: int,
) -> tuple[int, int]:
    """(points, input elements per point), with batch dimensions checked to agree."""
    count = 1
    if batched:
        sizes = {}
        for name, arr in arrays.items():
            if arr.ndim == 0:
                raise invalid(
                    f"{call}: batched=True but input {name!r} is a scalar; its leading "
                    "dimension must index points",
                    "inputs",
                )
            sizes[name] = arr.shape[0]
        if len(set(sizes.values())) > 1:
            detail = ", ".join(f"{n}: {s}" for n, s in sizes.items())
            raise invalid(f"{call}: batched inputs disagree on the number of points ({detail})")
        count = next(iter(sizes.values()), 1)
        if count == 0:
            raise invalid(f"{call}: batched inputs have no points", "inputs")
        if count > max_points:
            raise exhausted(f"{call}: {count} points is over the server's limit of {max_points}")
    per_point = sum(int(a[0].size if batched else a.size) for a in arrays.values())
    if per_point > max_input_elements:
        raise exhausted(
            f"{call}: {per_point} input elements per point is over the limit of "
            f"{max_input_elements} (max_input_elements)",
            "inputs",
        )
    return count, per_point


def finite_inputs(
    arrays: Mapping[str, np.ndarray], batched: bool, call: str, first_point: int = 0
) -> None:
    """No NaN or Inf among the inputs: derivatives there mean nothing (``first_point``:
    the point the arrays' first row is, for a chunk of a batch)."""
    for name, arr in arrays.items():
        # one pass, no temporary: a finite sum has no NaN/Inf term (a sum that
        # overflows is looked at element by element); 0.6 vs 2.4 ms at 16 MB, measured
        with np.errstate(over="ignore", invalid="ignore"):  # the point of the sum
            total = np.add.reduce(arr, axis=None)
        if math.isfinite(total):
            continue
        finite = np.isfinite(arr)
        if not finite.all():
            index = tuple(int(i) for i in np.argwhere(~finite)[0])
            kind = "NaN" if np.isnan(arr[index]) else "Inf"
            where = (
                f"point {first_point + index[0]}, index {index[1:]}"
                if batched and index
                else f"index {index}"
            )
            raise invalid(
                f"{call}: input {name!r} contains {kind} at {where}; derivatives there are "
                "meaningless, so nothing was computed",
                "inputs",
            )


def shaped_as_inputs(
    op: str, what: str, given: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
) -> None:
    """Tangents and vectors have their inputs' shapes."""
    for name, arr in given.items():
        if arr.shape != inputs[name].shape:
            raise invalid(
                f"{op}(fn, inputs, {what}): the {what} for {name!r} has shape "
                f"{arr.shape}, but the input has shape {inputs[name].shape}",
                what,
            )


def one_per_point(arrays: Iterable[np.ndarray], points: int, call: str) -> None:
    """A batched request's cotangent, tangents and vectors lead with its points."""
    for arr in arrays:
        if arr.ndim == 0 or arr.shape[0] != points:
            raise invalid(
                f"{call}: batched=True, so cotangents, tangents and vectors need a leading "
                f"dimension of {points} points"
            )


def order(value: int, call: str) -> int:
    """A check's order: 1 (Jacobians) or 2 (Hessians); 0 means the default, 1."""
    value = value or 1
    if value not in (1, 2):
        raise invalid(f"{call}: order must be 1 or 2, not {value}", "options.order")
    return value


def tolerance(name: str, value: float | None, call: str) -> float:
    """A check's ``atol``, ``rtol`` or ``eps`` (None: its default): a finite number,
    >= 0, and for the step ``eps`` > 0. The same rule for every kind of check."""
    value = DEFAULT_TOLERANCES[name] if value is None else value
    if not valid_tolerance(name, value):
        raise invalid(f"{call}: {name} must be a finite positive number", f"options.{name}")
    return float(value)


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def claim_values(
    values: np.ndarray,
    kind: str,
    key: str,
    inputs: Mapping[str, np.ndarray],
    batched_points: int | None,
    call: str,
) -> np.ndarray:
    """A numeric claim's array, refused when its shape is not the derivative's or it
    holds NaN or Inf.

    ``inputs``: the bound inputs; ``batched_points``: the point count of a batched
    check (``None`` when not batched). A claimed Jacobian's output dimensions are
    known only once the function ran; its input dimensions are checked here, the rest
    on the workers.
    """
    lead = 1 if batched_points is not None else 0
    in_shapes = {n: tuple(a.shape[lead:]) for n, a in inputs.items()}
    first, _, second = key.partition(",")
    per = tuple(values.shape)
    prefix = ""
    if batched_points is not None:
        if values.ndim == 0 or values.shape[0] != batched_points:
            raise invalid(
                f"{call}: the claimed {kind} for {key!r} has shape {_shape(per)}; a batched "
                f"check needs one claim per point: a leading dimension of {batched_points}",
                "claims",
            )
        per, prefix = per[1:], f"{batched_points} points x "
    if kind == "grad":
        expected = in_shapes[first]
        ok = per == expected
        text = _shape(expected)
    elif kind == "hessian":
        expected = in_shapes[first] + in_shapes[second or first]
        ok = per == expected
        text = _shape(expected)
    else:
        tail = in_shapes[first]
        ok = len(per) >= len(tail) and per[len(per) - len(tail) :] == tail
        text = f"out_shape + {_shape(tail)}"
    if not ok:
        raise invalid(
            f"{call}: the claimed {kind} for {key!r} has shape {_shape(tuple(values.shape))}, "
            f"expected {prefix}{text}",
            "claims",
        )
    if not np.isfinite(values).all():
        raise invalid(f"{call}: the claimed {kind} for {key!r} holds NaN or Inf", "claims")
    return values
