"""Validating a request and binding its tensors to the function's inputs.

Everything here runs on the request path before any work is dispatched, with
NumPy only: the function is parsed and checked by the language's torch-free
validator, tensors are decoded zero-copy, and every mismatch is reported with
the field it concerns.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from gradserve import wire
from gradserve.results import OP_BY_NUMBER
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.errors import exhausted, invalid
from gradserve_workers import lang

T = TypeVar("T")
DTYPES: dict[Any, str] = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_FLOAT64: "float64"}
MODES: dict[Any, str] = {
    pb.JACOBIAN_MODE_AUTO: "auto",
    pb.JACOBIAN_MODE_FORWARD: "forward",
    pb.JACOBIAN_MODE_REVERSE: "reverse",
}


@dataclass
class Bound:
    """A validated request: the program, its arrays by input name, the point count."""

    program: lang.Program
    arrays: dict[str, np.ndarray]
    batched: bool
    points: int  # 1 when not batched
    dtype: str
    wrt: tuple[str, ...]
    per_point_elements: int
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # cotangent/tangents/vector


def validate_program(
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


def decode_map(tensors: Mapping[str, pb.Tensor], what: str) -> dict[str, np.ndarray]:
    out = {}
    for name, msg in tensors.items():
        try:
            out[name] = wire.decode(msg, f"{what} {name!r}" if name else what)
        except wire.WireError as exc:
            raise invalid(str(exc), what) from None
    return out


def request_arrays(
    req: pb.ComputeRequest, blobs: Sequence[bytes] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Every tensor of a compute request, decoded zero-copy: field -> name -> array.

    Fields are "input", "cotangent" (name ""), "tangent" and "vector". ``blobs``
    are the bytes of a streamed request's slots, in slot order.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    for index, ((what, name), msg) in enumerate(request_keys(req)):
        where = f"{what} {name!r}" if name else what
        try:
            arr = wire.decode(msg, where, None if blobs is None else blobs[index])
        except wire.WireError as exc:
            raise invalid(str(exc), what) from None
        out.setdefault(what, {})[name] = arr
    return out


def request_keys(req: pb.ComputeRequest) -> list[tuple[tuple[str, str], pb.Tensor]]:
    """A compute request's tensors in slot order, each with its field and name (see
    :func:`request_arrays`)."""
    keys = [("input", n) for n in sorted(req.inputs)]
    keys += [("cotangent", "")] if req.HasField("cotangent") else []
    keys += [("tangent", n) for n in sorted(req.tangents)]
    keys += [("vector", n) for n in sorted(req.vector)]
    return list(zip(keys, wire.request_slots(req), strict=True))


def resolve_dtype(requested: Any, arrays: Mapping[str, np.ndarray], default: str) -> str:
    if requested in DTYPES:
        return DTYPES[requested]
    kinds = {str(a.dtype) for a in arrays.values()}
    if not kinds:
        return default
    return "float32" if kinds == {"float32"} else "float64"


def check_finite(
    arrays: Mapping[str, np.ndarray], batched: bool, call: str, first_point: int = 0
) -> None:
    """Refuse NaN and Inf, naming where (``first_point``: the point the arrays'
    first row is, for a chunk of a batch)."""
    for name, arr in arrays.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
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


def check_points(
    arrays: Mapping[str, np.ndarray],
    batched: bool,
    call: str,
    max_points: int,
    max_input_elements: int,
) -> tuple[int, int]:
    """(points, input elements per point), with batch dimensions checked to agree."""
    points = 1
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
        points = next(iter(sizes.values()), 1)
        if points == 0:
            raise invalid(f"{call}: batched inputs have no points", "inputs")
        if points > max_points:
            raise exhausted(f"{call}: {points} points is over the server's limit of {max_points}")
    per_point = sum(int(a[0].size if batched else a.size) for a in arrays.values())
    if per_point > max_input_elements:
        raise exhausted(
            f"{call}: {per_point} input elements per point is over the limit of "
            f"{max_input_elements} (max_input_elements)",
            "inputs",
        )
    return points, per_point


def op_names(ops: Sequence[int], call: str) -> tuple[str, ...]:
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


def resolve_wrt(wrt: Sequence[str], inputs: Sequence[str], call: str) -> tuple[str, ...]:
    for name in wrt:
        if name not in inputs:
            raise invalid(
                f"{call}: wrt names {name!r}, which is not an input; the function takes "
                f"({', '.join(inputs)}){_suggest(name, inputs)}",
                "wrt",
            )
    return tuple(n for n in inputs if n in wrt) if wrt else tuple(inputs)
