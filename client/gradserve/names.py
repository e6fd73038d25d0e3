"""The names of the wire's enums, each table defined once, with its inverse.

The SDK, the server and its job store take them from here (the server depends on
this distribution); a name is what users write (``dtype="float32"``, a job file's
``check: {grad: ...}``, ``jobs(states="running")``) and what results carry.

>>> CHECK_KIND_BY_NUMBER[CLAIM_KINDS["grad"]], JOB_STATE_BY_NUMBER[JOB_STATES["running"]]
('claimed_grad', 'running')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb

__all__ = [
    "CHECK_KINDS",
    "CHECK_KIND_BY_NUMBER",
    "CLAIM_KINDS",
    "DTYPES",
    "DTYPE_BY_NUMBER",
    "EXECUTION_PATHS",
    "EXECUTION_PATH_BY_NUMBER",
    "JACOBIAN_MODES",
    "JACOBIAN_MODE_BY_NUMBER",
    "JOB_STATES",
    "JOB_STATE_BY_NUMBER",
    "OPS",
    "OP_BY_NUMBER",
    "TERMINAL_STATES",
]


def _inverse(table: Mapping[str, Any]) -> dict[Any, str]:
    return {number: name for name, number in table.items()}


# float32, float64: defined with the tensor codec, which needs them first
DTYPES: Mapping[str, Any] = wire.DTYPE_NAMES
DTYPE_BY_NUMBER = _inverse(DTYPES)

OPS: dict[str, Any] = {
    "value": pb.OP_VALUE,
    "grad": pb.OP_GRAD,
    "jacobian": pb.OP_JACOBIAN,
    "hessian": pb.OP_HESSIAN,
    "vjp": pb.OP_VJP,
    "jvp": pb.OP_JVP,
    "hvp": pb.OP_HVP,
}
OP_BY_NUMBER = _inverse(OPS)

CHECK_KINDS: dict[str, Any] = {
    "finite_difference": pb.CHECK_KIND_FINITE_DIFFERENCE,
    "claimed_grad": pb.CHECK_KIND_CLAIMED_GRAD,
    "claimed_jacobian": pb.CHECK_KIND_CLAIMED_JACOBIAN,
    "claimed_hessian": pb.CHECK_KIND_CLAIMED_HESSIAN,
}
CHECK_KIND_BY_NUMBER = _inverse(CHECK_KINDS)
# a claim's argument (check(grad=...), a job file's check: {grad: ...}) -> its kind
CLAIM_KINDS: dict[str, Any] = {
    name.removeprefix("claimed_"): number
    for name, number in CHECK_KINDS.items()
    if name.startswith("claimed_")
}

JACOBIAN_MODES: dict[str, Any] = {
    "auto": pb.JACOBIAN_MODE_AUTO,
    "forward": pb.JACOBIAN_MODE_FORWARD,
    "reverse": pb.JACOBIAN_MODE_REVERSE,
}
JACOBIAN_MODE_BY_NUMBER = _inverse(JACOBIAN_MODES)

EXECUTION_PATHS: dict[str, Any] = {
    "vmap": pb.EXECUTION_PATH_VMAP,
    "per_point": pb.EXECUTION_PATH_PER_POINT,
    "single": pb.EXECUTION_PATH_SINGLE,
}
EXECUTION_PATH_BY_NUMBER = _inverse(EXECUTION_PATHS)

JOB_STATES: dict[str, Any] = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
}
JOB_STATE_BY_NUMBER = _inverse(JOB_STATES)
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
