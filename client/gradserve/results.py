"""What calls return: frozen dataclasses built from protos (protobuf never leaks out)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradserve.names import (
    CHECK_KIND_BY_NUMBER,
    DTYPE_BY_NUMBER,
    EXECUTION_PATH_BY_NUMBER,
    JOB_STATE_BY_NUMBER,
    OP_BY_NUMBER,
    TERMINAL_STATES,
)
from gradserve.v1 import gradserve_pb2 as pb

# What the one-operation calls return: one array when there is one input (or one
# ``wrt`` name), else a dict by input name; a Hessian of several inputs is a nested
# dict of blocks ``H[a][b]``.
Derivative = np.ndarray | dict[str, np.ndarray]
Hessian = np.ndarray | dict[str, np.ndarray] | dict[str, dict[str, np.ndarray]]


@dataclass(frozen=True)
class Certificate:
    """How well two automatic-differentiation routes agreed on a certified answer.

    ``disagreement`` is the largest ``|a - b| / (scale + 1)`` over the ``checks``
    and ``points`` (``a`` and ``b`` the same random projection of the derivative by
    forward and by reverse mode, ``scale`` the magnitude of the terms they sum); an
    answer is returned only when it is at most ``tolerance``. ``skipped`` names
    checks that could not run (a function without forward-mode AD).
    """

    disagreement: float
    tolerance: float
    checks: tuple[str, ...]
    points: int
    skipped: tuple[str, ...] = ()

    @classmethod
    def _from_proto(cls, msg: pb.Certificate) -> Certificate:
        return cls(
            disagreement=float(msg.disagreement),
            tolerance=float(msg.tolerance),
            checks=tuple(msg.checks),
            points=int(msg.points),
            skipped=tuple(msg.skipped),
        )


@dataclass(frozen=True)
class Metadata:
    """How a computation ran.

    ``execution_path`` is ``"vmap"`` or ``"per_point"`` (data-dependent control
    flow) for ``batched=True``, ``"single"`` for one point; ``unconnected`` names
    inputs the output does not depend on (their derivatives are zeros).
    ``strategy`` is ``"direct"``, or ``"rerouted"`` when an operation ran by a safe
    strategy because the function calls one for which the direct transform is wrong
    under the server's torch; ``routes`` then says which, one line per operation
    (e.g. ``"hessian: reverse-over-reverse-hessian (direct hessian@batch is unsafe
    for logdet)"``).
    ``certificate`` is set when the answer was checked by a second route
    (``verify=``), else ``None``.
    ``lane`` says where the call ran: ``"fast"`` (a small call, computed in the
    server's own process), ``"ray"`` (the worker pool), or ``""`` (a server
    without a fast lane).
    """

    execution_path: str = ""
    unconnected: tuple[str, ...] = ()
    out_shape: tuple[int, ...] = ()
    points: int = 0
    chunks: int = 0
    workers: int = 0
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    jacobian_mode: str = ""
    warnings: tuple[str, ...] = ()
    strategy: str = ""
    routes: tuple[str, ...] = ()
    certificate: Certificate | None = None
    lane: str = ""

    @classmethod
    def _from_proto(cls, msg: pb.ComputeMetadata) -> Metadata:
        return cls(
            execution_path=EXECUTION_PATH_BY_NUMBER.get(msg.execution_path, ""),
            unconnected=tuple(msg.unconnected),
            out_shape=tuple(int(d) for d in msg.out_shape),
            points=int(msg.points),
            chunks=int(msg.chunks),
            workers=int(msg.workers),
            compute_seconds=float(msg.compute_seconds),
            wall_seconds=float(msg.wall_seconds),
            jacobian_mode=msg.jacobian_mode,
            warnings=tuple(msg.warnings),
            strategy=msg.strategy,
            routes=tuple(msg.routes),
            certificate=(
                Certificate._from_proto(msg.certificate) if msg.HasField("certificate") else None
            ),
            lane=msg.lane,
        )


@dataclass(frozen=True)
class ComputeResult:
    """Every requested operation's result, by operation name, plus metadata.

    Each value follows the SDK's convention: one array when there is one input
    (or one ``wrt`` name), else a dict by input name (for ``hessian`` a nested
    dict ``H[a][b]``); ``value`` and ``jvp`` are always one array.
    """

    outputs: Mapping[str, Any]
    metadata: Metadata

    def __getitem__(self, op: str) -> Any:
        return self.outputs[op]


@dataclass(frozen=True)
class WorstElement:
    """The element of a check with the largest error, values side by side."""

    point: int
    input: str
    output_index: tuple[int, ...]
    input_index: tuple[int, ...]
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    # finite differences only: the difference's own error (Richardson, h and h/2),
    # and whether abs_error is beyond it (a real disagreement) or within its noise
    fd_error: float | None = None
    beyond_fd_error: bool | None = None
    # fast mode, when no element-wise check could follow: the random projection vᵀJu
    # that failed (the indices are then empty)
    projection: int | None = None

    @classmethod
    def _from_proto(cls, msg: pb.WorstElement) -> WorstElement:
        return cls(
            point=int(msg.point),
            input=msg.input,
            output_index=tuple(int(i) for i in msg.output_index),
            input_index=tuple(int(i) for i in msg.input_index),
            analytic=msg.analytic,
            numeric=msg.numeric,
            abs_error=msg.abs_error,
            rel_error=msg.rel_error,
            fd_error=msg.fd_error if msg.HasField("fd_error") else None,
            beyond_fd_error=msg.beyond_fd_error if msg.HasField("beyond_fd_error") else None,
            projection=int(msg.projection) if msg.HasField("projection") else None,
        )


@dataclass(frozen=True)
class Kink:
    """Where one-sided differences disagree: the function is not differentiable there.

    ``right`` and ``left`` are the forward and backward differences, ``autograd``
    what autograd returns there (a subgradient at best), ``at`` the input value
    (``None`` along a random direction in fast mode, where ``direction`` says which).
    """

    point: int
    input: str
    output_index: tuple[int, ...]
    input_index: tuple[int, ...]
    at: float | None
    right: float
    left: float
    autograd: float
    direction: int | None = None

    @classmethod
    def _from_proto(cls, msg: pb.Kink) -> Kink:
        return cls(
            point=int(msg.point),
            input=msg.input,
            output_index=tuple(int(i) for i in msg.output_index),
            input_index=tuple(int(i) for i in msg.input_index),
            at=msg.at if msg.HasField("at") else None,
            right=msg.right,
            left=msg.left,
            autograd=msg.autograd,
            direction=int(msg.direction) if msg.HasField("direction") else None,
        )


@dataclass(frozen=True)
class CheckReport:
    """The verdict of a derivative check.

    ``worst`` names the element with the largest error (``numeric`` holds the
    finite difference, or the claimed value for claimed-derivative checks);
    ``non_differentiable`` says the function has a kink at a checked point, and
    ``kink`` says where, with the one-sided derivatives side by side. ``dtype`` is the
    inputs' dtype (both sides are compared in float64). ``metadata``
    says how the check ran (chunks, workers, seconds); a check in a job's task
    result carries it on the task instead.
    """

    passed: bool
    kind: str
    order: int
    mode: str
    max_abs_error: float
    max_rel_error: float
    worst: WorstElement | None
    non_differentiable: bool
    symmetric: bool | None
    point_passed: tuple[bool, ...]
    message: str
    atol: float
    rtol: float
    eps: float
    num_points: int
    execution_path: str = ""
    kink: Kink | None = None
    max_asymmetry: float = 0.0
    # how it ran, not what it found: two reports of one check compare equal
    metadata: Metadata = field(default_factory=Metadata, compare=False)
    # numeric claims: which of the claim, autograd and finite differences disagree
    # (one sentence), and whether autograd matched finite differences
    three_way: str = ""
    autograd_matches_finite_differences: bool | None = None
    # the inputs' dtype, "float32" or "float64" (both sides are compared in float64);
    # "" from a server that does not say
    dtype: str = ""

    @property
    def worst_point(self) -> int | None:
        return None if self.worst is None else self.worst.point

    def __str__(self) -> str:
        return self.message

    @classmethod
    def _from_proto(
        cls, msg: pb.CheckReport, metadata: pb.ComputeMetadata | None = None
    ) -> CheckReport:
        return cls(
            passed=msg.passed,
            kind=CHECK_KIND_BY_NUMBER.get(msg.kind, ""),
            order=int(msg.order),
            mode=msg.mode,
            max_abs_error=msg.max_abs_error,
            max_rel_error=msg.max_rel_error,
            worst=WorstElement._from_proto(msg.worst) if msg.HasField("worst") else None,
            non_differentiable=msg.non_differentiable,
            symmetric=msg.symmetric if msg.HasField("symmetric") else None,
            point_passed=tuple(msg.point_passed),
            message=msg.message,
            atol=msg.atol,
            rtol=msg.rtol,
            eps=msg.eps,
            num_points=int(msg.num_points),
            execution_path=EXECUTION_PATH_BY_NUMBER.get(msg.execution_path, ""),
            kink=Kink._from_proto(msg.kink) if msg.HasField("kink") else None,
            three_way=msg.three_way,
            autograd_matches_finite_differences=(
                msg.autograd_matches_finite_differences
                if msg.HasField("autograd_matches_finite_differences")
                else None
            ),
            max_asymmetry=msg.max_asymmetry,
            dtype=DTYPE_BY_NUMBER.get(msg.dtype, ""),
            metadata=Metadata() if metadata is None else Metadata._from_proto(metadata),
        )


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    signature: str
    example: str


@dataclass(frozen=True)
class RegisteredFunctionInfo:
    """A registered function of the server: call it as ``fn="@" + name``."""

    name: str
    inputs: tuple[str, ...]
    doc: str


@dataclass(frozen=True)
class ServerInfo:
    version: str
    workers: int
    ray_address: str
    limits: Mapping[str, int]
    functions: tuple[FunctionInfo, ...]
    device: str
    max_message_bytes: int
    # the operator's registered functions, called as fn="@NAME"
    registered_functions: tuple[RegisteredFunctionInfo, ...] = ()

    @classmethod
    def _from_proto(cls, msg: pb.ServerInfo) -> ServerInfo:
        return cls(
            version=msg.version,
            workers=int(msg.workers),
            ray_address=msg.ray_address,
            limits=dict(msg.limits),
            functions=tuple(FunctionInfo(f.name, f.signature, f.example) for f in msg.functions),
            device=msg.device,
            max_message_bytes=int(msg.max_message_bytes),
            registered_functions=tuple(
                RegisteredFunctionInfo(f.name, tuple(f.inputs), f.doc)
                for f in msg.registered_functions
            ),
        )


@dataclass(frozen=True)
class TaskError:
    task_index: int
    task_id: str
    code: str
    message: str


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job: its state and progress."""

    id: str
    name: str
    state: str
    tasks_total: int
    tasks_done: int
    tasks_failed: int
    points_total: int
    points_done: int
    created_at: float
    started_at: float
    finished_at: float
    errors: tuple[TaskError, ...] = ()
    idempotency_key: str = ""

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def _from_proto(cls, msg: pb.Job) -> JobStatus:
        return cls(
            id=msg.id,
            name=msg.name,
            state=JOB_STATE_BY_NUMBER.get(msg.state, "unspecified"),
            tasks_total=msg.tasks_total,
            tasks_done=msg.tasks_done,
            tasks_failed=msg.tasks_failed,
            points_total=msg.points_total,
            points_done=msg.points_done,
            created_at=msg.created_at,
            started_at=msg.started_at,
            finished_at=msg.finished_at,
            errors=tuple(TaskError(e.task_index, e.task_id, e.code, e.message) for e in msg.errors),
            idempotency_key=msg.idempotency_key,
        )


@dataclass(frozen=True)
class TaskResult:
    """One task of a job: ``outputs`` by operation, ``check`` report, or ``error``."""

    task_index: int
    task_id: str
    outputs: Mapping[str, Any] = field(default_factory=dict)
    check: CheckReport | None = None
    error: str | None = None
    error_code: str | None = None
    metadata: Metadata = field(default_factory=Metadata)


def shape_outputs(results: Any, arrays: list[np.ndarray]) -> dict[str, Any]:
    """Group decoded arrays by op with the SDK's one-array-or-dict convention.

    ``results`` are OpResult messages whose tensors were decoded, in order, into
    ``arrays``.
    """
    shaped: dict[str, Any] = {}
    index = 0
    for result in results:
        op = OP_BY_NUMBER.get(result.op, str(result.op))
        by_input: dict[str, Any] = {}
        single: np.ndarray | None = None
        for out in result.outputs:
            arr = arrays[index]
            index += 1
            if op == "hessian":
                by_input.setdefault(out.input, {})[out.input2] = arr
            elif out.input:
                by_input[out.input] = arr
            else:
                single = arr
        if single is not None:
            shaped[op] = single
        elif op == "hessian" and len(by_input) == 1:
            (row,) = by_input.values()
            shaped[op] = next(iter(row.values())) if len(row) == 1 else row
        elif len(by_input) == 1:
            shaped[op] = next(iter(by_input.values()))
        else:
            shaped[op] = by_input
    return shaped
