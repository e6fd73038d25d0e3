"""The SDK's result dataclasses, built from protos."""

from __future__ import annotations

from gradserve.results import CheckReport, Metadata
from gradserve.v1 import gradserve_pb2 as pb


def test_check_report_carries_metadata_but_compares_by_findings() -> None:
    msg = pb.CheckReport(
        passed=True, kind=pb.CHECK_KIND_FINITE_DIFFERENCE, order=1, mode="full",
        max_abs_error=1e-9, point_passed=[True], num_points=1,
    )  # fmt: skip
    fast = CheckReport._from_proto(msg, pb.ComputeMetadata(chunks=2, workers=2, wall_seconds=0.02))
    slow = CheckReport._from_proto(msg, pb.ComputeMetadata(chunks=1, workers=1, wall_seconds=0.05))
    assert (fast.metadata.chunks, fast.metadata.workers) == (2, 2)
    assert fast.metadata.wall_seconds == 0.02 and slow.metadata.chunks == 1
    assert fast == slow  # the same findings: how each ran does not matter
    assert CheckReport._from_proto(msg).metadata == Metadata()
    assert CheckReport._from_proto(msg) != CheckReport._from_proto(
        pb.CheckReport(passed=False, kind=pb.CHECK_KIND_FINITE_DIFFERENCE, num_points=1)
    )
