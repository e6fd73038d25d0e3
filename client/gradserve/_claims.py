"""Claimed derivatives as the wire carries them: source text, or numbers.

A claim is function-language source (``"4 * x"``), or the derivative's values
computed elsewhere (a NumPy array, a list, a CPU tensor; one per point for
batched checks, leading dimension = points). Numbers are checked against the
service's autograd and against finite differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradserve import wire
from gradserve.errors import InvalidArgumentError
from gradserve.v1 import gradserve_pb2 as pb

# a claimed derivative: function-language source, or its values (an array-like)
Claim = str | Any


def claimed(value: Any) -> bool:
    """True when a ``grad=``/``jacobian=``/``hessian=`` argument holds a claim."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value)
    return not (hasattr(value, "__len__") and not hasattr(value, "shape") and len(value) == 0)


def claim(first: str, second: str, value: Any, call: str) -> pb.Claim:
    """One claim for input ``first`` (and ``second``, a Hessian's cross block)."""
    msg = pb.Claim(input=first, input2=second)
    if isinstance(value, str):
        msg.source = value
        return msg
    where = f"{call}: the claim for {first!r}" if first else f"{call}: the claim"
    try:
        arr = wire.as_float_array(value, dtype="float64", where=where)
    except wire.WireError as exc:
        raise InvalidArgumentError(f"{exc}; a claim is source text or numbers (an array)") from None
    msg.values.CopyFrom(wire.encode(arr))
    return msg


def claims_for(claims: Any, wrt: list[str], call: str) -> list[pb.Claim]:
    """The claims of a check: one (for the one ``wrt`` input), or a dict by input
    (``"a,b"`` or ``(a, b)`` keys for a Hessian's blocks)."""
    if not isinstance(claims, Mapping):  # one claim: source text, or numbers
        if len(wrt) > 1:
            raise InvalidArgumentError(
                f"{call}: one claim but wrt names {len(wrt)} inputs; give a dict by input"
            )
        return [claim(wrt[0] if wrt else "", "", claims, call)]
    out = []
    for key, source in claims.items():
        if isinstance(key, tuple):
            first, second = key
        elif isinstance(key, str) and "," in key:
            first, second = (k.strip() for k in key.split(",", 1))
        else:
            first, second = key, ""
        out.append(claim(first, second, source, call))
    return out


# a job file's key for numeric claims: grad_values, jacobian_values, hessian_values
VALUES = "_values"


def numeric_claims_in_job(check: Mapping[str, Any], base: Path, fail: Any) -> dict[str, Any]:
    """A job file's ``check:`` with ``KIND_values`` (a path to a ``.npy`` file,
    relative to the job file; ``{npy: path}``; inline numbers; or a dict of those
    by input) read into arrays under ``KIND``."""
    out = dict(check)
    for key in [k for k in check if k.endswith(VALUES)]:
        kind = key[: -len(VALUES)]
        if kind in check:
            raise fail("check", f"give {kind} or {key}, not both")
        given = out.pop(key)
        if isinstance(given, Mapping) and set(given) != {"npy"}:
            out[kind] = {
                name: _numbers(v, base, f"check.{key}.{name}", fail) for name, v in given.items()
            }
        else:
            out[kind] = _numbers(given, base, f"check.{key}", fail)
    return out


def _numbers(value: Any, base: Path, where: str, fail: Any) -> np.ndarray:
    if isinstance(value, Mapping):
        value = value["npy"]
    if isinstance(value, str) and value.endswith(".npy"):
        path = base / value
        try:
            value = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise fail(where, f"cannot read {path}: {exc}") from None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise fail(where, "give a .npy path or numbers (nested lists)") from None
