"""Issue 16, item 8 (Check sampling) and the sampling and paging cases of 13: counts
and shapes are checked with Python integers before a point is drawn, drawing happens
off the event loop, and a client's mistake is never INTERNAL."""

from __future__ import annotations

import base64
import time

import grpc
import pytest
from support.cluster import ServerProcess
from support.hostile import Watch, scaled, unary_call

import gradserve
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


def sampled_check(
    shape: list[int], count: int, low: float = 0.0, high: float = 1.0
) -> pb.CheckRequest:
    req = pb.CheckRequest(function="sum(x * x)", kind=pb.CHECK_KIND_FINITE_DIFFERENCE)
    spec = req.inputs["x"].sample
    spec.distribution.uniform.low, spec.distribution.uniform.high = low, high
    spec.shape[:] = shape
    spec.count = count
    return req


def test_sampling_160_million_points_is_refused_before_drawing(
    hostile_server: ServerProcess, hostile_client: gradserve.Client
) -> None:
    with Watch(hostile_server) as watch:
        started = time.monotonic()
        with pytest.raises(gradserve.ResourceExhaustedError) as info:
            hostile_client.check("sum(x)", sample=gradserve.uniform(0, 1, count=160_000_000))
        seconds = time.monotonic() - started
    assert "160000000 sampled points" in info.value.message and "--max-points" in info.value.message
    assert seconds < 1
    watch.check()


def test_sampled_bytes_over_the_request_budget_are_refused_before_drawing(
    hostile_server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    """5M points of [4]: 160 MB, over --max-request-bytes (32 MiB here)."""
    with Watch(hostile_server) as watch:
        code, details, seconds = unary_call(stub.Check, sampled_check([4], 5_000_000))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "160,000,000 bytes" in details and "--max-request-bytes" in details
    assert seconds < 1
    watch.check()


def test_a_sample_for_an_unknown_input_is_refused_before_drawing(
    stub: pb_grpc.GradientServiceStub,
) -> None:
    req = sampled_check([4], 1_000_000)
    req.inputs["y"].CopyFrom(req.inputs["x"])
    code, details, seconds = unary_call(stub.Check, req)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "'y' is not an input" in details, details
    assert seconds < 0.5


@pytest.mark.parametrize(
    ("shape", "count", "low", "high", "code", "words"),
    [
        ([], 10, -1e308, 1e308, grpc.StatusCode.INVALID_ARGUMENT, "wider than a float64"),
        ([3, 6148914691236517206], 1, 0, 1, grpc.StatusCode.RESOURCE_EXHAUSTED, "dimension 1"),
        ([2**62, 0], 3, 0, 1, grpc.StatusCode.RESOURCE_EXHAUSTED, "dimension 0"),
        ([3], 0, 0, 1, grpc.StatusCode.INVALID_ARGUMENT, "at least 1"),
        ([-3], 5, 0, 1, grpc.StatusCode.INVALID_ARGUMENT, "not a valid shape"),
        ([3], 5, float("nan"), 1, grpc.StatusCode.INVALID_ARGUMENT, "low < high"),
    ],
)
def test_bad_samples_get_a_status_that_says_what(
    stub: pb_grpc.GradientServiceStub,
    shape: list[int], count: int, low: float, high: float, code: grpc.StatusCode, words: str,
) -> None:  # fmt: skip
    got, details, seconds = unary_call(stub.Check, sampled_check(shape, count, low, high))
    assert got is code and words in details, (got, details)
    assert seconds < 1


def test_a_sampled_check_within_the_budgets_runs_and_others_are_answered(
    hostile_server: ServerProcess, stub: pb_grpc.GradientServiceStub
) -> None:
    """Points within the budgets are drawn off the event loop, and the check runs on
    the workers while the server answers (the workers' own fairness is item 7's)."""
    req = sampled_check([], scaled(20_000, 4_000_000))
    req.function = "x * x"
    with Watch(hostile_server, probe="info") as watch:
        code, details, _ = unary_call(stub.Check, req, timeout=120)
    assert code is grpc.StatusCode.OK, details
    watch.check()


def test_a_claim_is_checked_before_any_point_is_drawn(stub: pb_grpc.GradientServiceStub) -> None:
    req = sampled_check([4], 1_000_000)
    req.kind = pb.CHECK_KIND_CLAIMED_GRAD
    req.claims.add(input="x", source="2 * x +")
    code, details, seconds = unary_call(stub.Check, req)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert seconds < 0.5  # no 32 MB drawn first


def test_a_page_token_past_int64_is_invalid(stub: pb_grpc.GradientServiceStub) -> None:
    for token in (
        base64.urlsafe_b64encode(b"v1:99999999999999999999999999").decode(),
        "v1:99999999999999999999999999",
        base64.urlsafe_b64encode(b"v1:-5").decode(),
    ):
        code, details, _ = unary_call(stub.ListJobs, pb.ListJobsRequest(page_token=token))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details, details
