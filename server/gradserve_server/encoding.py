"""Results as protobuf messages: check reports, and op outputs for unary and
streamed replies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gradserve import wire
from gradserve.names import CHECK_KINDS, DTYPES, OPS
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_workers.report import CheckReport, beyond_fd_error


def report_to_proto(report: CheckReport, execution_path: pb.ExecutionPath) -> pb.CheckReport:
    """``report`` as a message; ``execution_path`` is the call's, as its metadata says
    it (single for one unbatched point, else vmap or per point), so the two agree."""
    msg = pb.CheckReport(
        passed=report.passed,
        kind=CHECK_KINDS.get(report.kind, pb.CHECK_KIND_UNSPECIFIED),
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
    msg.dtype = DTYPES.get(report.dtype, pb.DTYPE_UNSPECIFIED)
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
        if kink.direction is not None:
            msg.kink.direction = kink.direction
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
        if w.projection is not None:
            msg.worst.projection = w.projection
    return msg


def outputs_to_proto(outputs: Mapping[str, Mapping[str, np.ndarray]], into: Any) -> None:
    """Op results built in place in the repeated field ``into`` (each array's bytes
    copied at most once)."""
    for op, by_key in outputs.items():
        result = into.add(op=OPS[op])
        for key, arr in by_key.items():
            first, _, second = key.partition(",")
            wire.fill(result.outputs.add(input=first, input2=second).tensor, arr)


def stream_outputs(outputs: Mapping[str, Mapping[str, list[np.ndarray]]], into: Any) -> list[Any]:
    """Op results' dtypes and shapes in the repeated field ``into``, for a streamed
    reply; returns each slot's bytes as its chunks' buffers in order, for
    :func:`gradserve.wire.split_pieces` to send without joining them."""
    slots = []
    for op, by_key in outputs.items():
        result = into.add(op=OPS[op])
        for key, parts in by_key.items():
            first, _, second = key.partition(",")
            tensor = result.outputs.add(input=first, input2=second).tensor
            head = wire.fill(tensor, parts[0], with_data=False)
            rest = [np.ascontiguousarray(p, dtype=head.dtype) for p in parts[1:]]
            if rest:  # chunks of points: C-order arrays stack by concatenating their bytes
                tensor.shape[0] = sum(int(p.shape[0]) for p in parts)
            slots.append([a.data.cast("B") for a in (head, *rest)])
    return slots
