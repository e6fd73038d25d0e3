"""Replies as protobuf messages: how a call ran (its metadata), check reports, and
op outputs for unary and streamed replies. The one place replies are encoded."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gradserve import wire
from gradserve.results import OP_BY_NUMBER
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.requests import Inputs
from gradserve_workers.report import CheckReport, beyond_fd_error
from gradserve_workers.tasks import ChunkResult

_REPORT_KINDS = {
    "finite_difference": pb.CHECK_KIND_FINITE_DIFFERENCE,
    "claimed_grad": pb.CHECK_KIND_CLAIMED_GRAD,
    "claimed_jacobian": pb.CHECK_KIND_CLAIMED_JACOBIAN,
    "claimed_hessian": pb.CHECK_KIND_CLAIMED_HESSIAN,
}
_OP_NUMBERS: dict[str, Any] = {name: number for number, name in OP_BY_NUMBER.items()}


def report_to_proto(report: CheckReport, execution_path: pb.ExecutionPath) -> pb.CheckReport:
    """``report`` as a message; ``execution_path`` is the call's, as its metadata says
    it (single for one unbatched point, else vmap or per point), so the two agree."""
    msg = pb.CheckReport(
        passed=report.passed,
        kind=_REPORT_KINDS.get(report.kind, pb.CHECK_KIND_UNSPECIFIED),
        order=report.order,
        mode=report.mode,
        max_abs_error=report.max_abs_error,
        max_rel_error=report.max_rel_error,
        non_differentiable=report.non_differentiable,
        point_passed=list(report.point_passed),
        message=report.message,
        atol=report.atol,
        rtol=report.rtol,
        eps=report.eps,
        num_points=report.num_points,
        execution_path=execution_path,
    )
    if report.symmetric is not None:
        msg.symmetric = report.symmetric
    msg.three_way = report.three_way
    if report.autograd_matches_fd is not None:
        msg.autograd_matches_finite_differences = report.autograd_matches_fd
    msg.max_asymmetry = report.max_asymmetry
    kink = report.kink
    if kink is not None:
        msg.kink.CopyFrom(
            pb.Kink(
                point=kink.point,
                input=kink.input,
                output_index=list(kink.output_index),
                input_index=list(kink.input_index),
                right=kink.right,
                left=kink.left,
                autograd=kink.autograd,
            )
        )
        if kink.at is not None:
            msg.kink.at = kink.at
    if report.worst is not None:
        w = report.worst
        msg.worst.CopyFrom(
            pb.WorstElement(
                point=w.point,
                input=w.input,
                output_index=list(w.output_index),
                input_index=list(w.input_index),
                analytic=w.analytic,
                numeric=w.numeric,
                abs_error=w.abs_error,
                rel_error=w.rel_error,
            )
        )
        if w.fd_error is not None:
            msg.worst.fd_error = w.fd_error
            msg.worst.beyond_fd_error = bool(beyond_fd_error(w))
    return msg


def outputs_to_proto(outputs: Mapping[str, Mapping[str, np.ndarray]], into: Any) -> None:
    """Op results built in place in the repeated field ``into`` (each array's bytes
    copied at most once)."""
    for op, by_key in outputs.items():
        result = into.add(op=_OP_NUMBERS[op])
        for key, arr in by_key.items():
            first, _, second = key.partition(",")
            wire.fill(result.outputs.add(input=first, input2=second).tensor, arr)


def stream_outputs(outputs: Mapping[str, Mapping[str, list[np.ndarray]]], into: Any) -> list[Any]:
    """Op results' dtypes and shapes in the repeated field ``into``, for a streamed
    reply; returns each slot's bytes as its chunks' buffers in order, for
    :func:`gradserve.wire.split_pieces` to send without joining them."""
    slots = []
    for op, by_key in outputs.items():
        result = into.add(op=_OP_NUMBERS[op])
        for key, parts in by_key.items():
            first, _, second = key.partition(",")
            tensor = result.outputs.add(input=first, input2=second).tensor
            head = wire.fill(tensor, parts[0], with_data=False)
            rest = [np.ascontiguousarray(p, dtype=head.dtype) for p in parts[1:]]
            if rest:  # chunks of points: C-order arrays stack by concatenating their bytes
                tensor.shape[0] = sum(int(p.shape[0]) for p in parts)
            slots.append([a.data.cast("B") for a in (head, *rest)])
    return slots


def metadata(
    results: Sequence[ChunkResult], inputs: Inputs, wrt: Sequence[str], started: float
) -> pb.ComputeMetadata:
    """How a call ran, from its chunks' results (``started``: its perf_counter at the
    start). An input is unconnected when no chunk found the output depends on it."""
    unconnected = set(results[0].unconnected)
    for r in results[1:]:
        unconnected &= set(r.unconnected)
    meta = pb.ComputeMetadata(
        unconnected=[n for n in wrt if n in unconnected],
        out_shape=list(results[0].out_shape),
        chunks=len(results),
        workers=len({r.actor for r in results}),
        compute_seconds=sum(r.seconds for r in results),
        wall_seconds=time.perf_counter() - started,
        jacobian_mode=results[0].jacobian_mode or "",
        points=inputs.points,
    )
    describe_execution(
        meta,
        all(r.vmapped for r in results) if inputs.batched else None,
        unconnected,
        merged_routes(r.routes for r in results),
    )
    describe_certificate(meta, [r.certificate for r in results])
    return meta


def describe_certificate(
    meta: pb.ComputeMetadata, certificates: Sequence[Mapping[str, Any] | None]
) -> None:
    """The chunks' certificates as one (the worst agreement, the points summed), set
    only when every chunk was certified."""
    if not certificates or any(c is None for c in certificates):
        return
    certs = [c for c in certificates if c is not None]
    first = certs[0]
    meta.certificate.CopyFrom(
        pb.Certificate(
            disagreement=max(float(c["disagreement"]) for c in certs),
            tolerance=float(first["tolerance"]),
            checks=list(first["checks"]),
            points=sum(int(c["points"]) for c in certs),
            skipped=sorted({s for c in certs for s in c["skipped"]}),
        )
    )


def merged_routes(per_chunk: Iterable[Sequence[str]]) -> list[str]:
    """Every route any chunk took, once, in the order first seen."""
    return list(dict.fromkeys(r for routes in per_chunk for r in routes))


def describe_execution(
    meta: pb.ComputeMetadata,
    vmapped: bool | None,
    unconnected: Iterable[str],
    routes: Sequence[str] = (),
) -> None:
    """The execution path, the strategy (direct, or the routes taken around transforms
    known to be wrong) and the warnings a user should read (``vmapped`` is None when
    nothing was mapped over points: one point)."""
    meta.strategy = "rerouted" if routes else "direct"
    meta.routes[:] = list(routes)
    if vmapped is None:
        meta.execution_path = pb.EXECUTION_PATH_SINGLE
    else:
        meta.execution_path = pb.EXECUTION_PATH_VMAP if vmapped else pb.EXECUTION_PATH_PER_POINT
        if not vmapped:
            meta.warnings.append(
                "the function cannot be vectorised (data-dependent control flow, or an "
                "autograd.Function without a vmap rule), so points ran one at a time"
            )
    names = sorted(unconnected)
    if names:
        meta.warnings.append(
            f"the output does not depend on {', '.join(names)}: its derivatives are zeros"
        )
