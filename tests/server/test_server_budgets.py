"""The budgets without a cluster: estimates from shapes, refusals naming the budget,
the bytes-in-flight pool, the flags and their documentation."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path

import grpc
import numpy as np
import pytest

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.budgets import MAX_DIMS, Budgets, InFlight
from gradserve_server.config import BUDGET_DEFAULTS, ServerConfig, parse_config
from gradserve_server.errors import ServiceError
from gradserve_workers import lang
from gradserve_workers.replies import ReplyBudget, op_elements

MiB = 1024 * 1024


def budgets(**overrides: int) -> Budgets:
    return Budgets.from_config(
        ServerConfig(budgets={**BUDGET_DEFAULTS, **overrides})  # type: ignore[arg-type]
    )


def request(ops: list[int], shapes: dict[str, list[int]], batched: bool = False,
            dtype: int = pb.DTYPE_FLOAT64) -> pb.ComputeRequest:  # fmt: skip
    req = pb.ComputeRequest(function="f", ops=ops, batched=batched)
    for name, shape in shapes.items():
        req.inputs[name].CopyFrom(pb.Tensor(dtype=dtype, shape=shape))
    return req


@pytest.mark.parametrize(
    ("op", "out", "expected"),
    [("value", 5, 5), ("jvp", 5, 5), ("grad", 5, 12), ("vjp", 5, 12), ("hvp", 5, 12),
     ("jacobian", 5, 60), ("hessian", 1, 144)],
)  # fmt: skip
def test_reply_elements_per_op(op: str, out: int, expected: int) -> None:
    assert op_elements(op, out, 12) == expected


def test_estimates_read_shapes_only_with_python_integers() -> None:
    b = budgets()
    est = b.estimate_compute(
        request([pb.OP_HESSIAN], {"x": [40, 3000]}, batched=True), ("x",), ["hessian"], ["x"],
        "hessian(fn, inputs)",
    )  # fmt: skip
    assert (est.points, est.per_point_elements, est.out) == (40, 3000, 1)
    assert est.reply_bytes == 40 * 3000 * 3000 * 8 and est.input_bytes == 40 * 3000 * 8
    with pytest.raises(ServiceError) as info:
        b.admit_compute(est)
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2,880,000,000 bytes" in info.value.message and "--max-reply-bytes" in info.value.message


def test_an_unknown_output_leaves_the_worker_a_budget() -> None:
    b = budgets(max_reply_bytes=64 * MiB)
    est = b.estimate_compute(
        request([pb.OP_JACOBIAN], {"": [10_000]}), ("x",), ["jacobian"], ["x"], "jacobian"
    )
    assert est.out is None and est.reply_bytes == 10_000 * 8  # a lower bound
    budget = b.admit_compute(est)
    assert budget is not None and budget.message_bytes == 0
    with pytest.raises(lang.LimitExceededError) as info:
        budget.check("jacobian(fn, inputs)", ["jacobian"], 10_000, 10_000)
    assert info.value.limit == "reply" and "800,000,000 bytes" in str(info.value)
    budget.check("jacobian(fn, inputs)", ["jacobian"], 10, 10_000)  # 800 KB: fine


def test_a_unary_budget_sends_replies_over_the_message_limit_to_the_stream() -> None:
    b = budgets()
    est = b.estimate_compute(request([pb.OP_VALUE], {"x": [10]}), ("x",), ["value"], ["x"], "v")
    budget = b.admit_compute(est, unary=True)
    assert budget is not None and budget.message_bytes == b.message_bytes
    with pytest.raises(lang.LimitExceededError) as info:
        budget.check("value(fn, inputs)", ["value"], 3_000_000, 10)  # 24 MB
    assert info.value.limit == "message"
    assert ReplyBudget(0, 1, 8).check("value", ["value"], 10**9, 1) is None  # no limit


@pytest.mark.parametrize(
    ("shape", "code", "words"),
    [([0, 2**62], grpc.StatusCode.RESOURCE_EXHAUSTED, "dimension 1 is 4611686018427387904"),
     ([1] * (MAX_DIMS + 1), grpc.StatusCode.INVALID_ARGUMENT, "33 dimensions"),
     ([3, -1], grpc.StatusCode.INVALID_ARGUMENT, "negative"),
     ([2**40, 1], grpc.StatusCode.RESOURCE_EXHAUSTED, "dimension 0")],
)  # fmt: skip
def test_shapes_no_tensor_could_have_are_refused(
    shape: list[int], code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(ServiceError) as info:
        budgets().shape(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=shape), "input 'x'")
    assert info.value.code is code and words in info.value.message


def test_admission_names_the_budget_it_refuses() -> None:
    b = dataclasses.replace(budgets(max_request_bytes=MiB), points=1000)
    cases = {
        "--max-points": request([pb.OP_VALUE], {"x": [1001, 1]}, batched=True),
        "max_input_elements": request([pb.OP_VALUE], {"x": [1_000_001]}),
        "--max-request-bytes": request([pb.OP_VALUE], {"x": [200_000]}),
    }
    for name, req in cases.items():
        est = b.estimate_compute(req, ("x",), ["value"], ["x"], "value(fn, inputs)")
        with pytest.raises(ServiceError) as info:
            b.admit_compute(est)
        assert name in info.value.message, info.value.message


def test_samples_are_priced_before_drawing() -> None:
    b = budgets(max_request_bytes=MiB)
    spec = pb.SampleSpec(count=3, shape=[3, 6148914691236517206])  # wraps in int64
    with pytest.raises(ServiceError, match="dimension 1"):
        b.estimate_samples({"x": spec}, "check")
    with pytest.raises(ServiceError, match="160000000 sampled points"):
        b.estimate_samples({"x": pb.SampleSpec(count=160_000_000)}, "check")
    with pytest.raises(ServiceError, match="--max-request-bytes"):
        b.estimate_samples({"x": pb.SampleSpec(count=200_000)}, "check")
    assert b.estimate_samples({"x": pb.SampleSpec(count=1000, shape=[4])}, "check") == 32_000


def test_the_pool_of_bytes_in_flight_refuses_or_waits() -> None:
    async def run() -> None:
        pool = InFlight(100)
        first = pool.take(60, "a")
        with pytest.raises(ServiceError, match="--max-inflight-bytes"):
            pool.take(50, "b")
        waiter = asyncio.ensure_future(pool.wait(50, "c", timeout=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        first.release()
        first.release()  # once only
        second = await waiter
        assert pool.used == 50
        with pytest.raises(ServiceError):
            await pool.wait(60, "d", timeout=0.05)  # no room in time
        second.release()
        assert pool.used == 0

    asyncio.run(run())


def test_pieces_tile_each_slot_in_any_order_or_are_refused() -> None:
    data = np.arange(4.0).tobytes()
    asm = wire.PieceAssembler([32])
    for offset in (24, 0, 16, 8):
        asm.add(pb.TensorPiece(slot=0, offset=offset, data=data[offset : offset + 8]))
    assert asm.finish() == [data]
    asm = wire.PieceAssembler([32])
    asm.add(pb.TensorPiece(slot=0, offset=0, data=data[:24]))
    asm.add(pb.TensorPiece(slot=0, offset=8, data=data[8:16]))
    with pytest.raises(wire.WireError, match="overlaps"):
        asm.finish()
    asm = wire.PieceAssembler([4096])
    with pytest.raises(wire.WireError, match="more than 21 pieces"):
        for i in range(4096):
            asm.add(pb.TensorPiece(slot=0, offset=i, data=b"x"))


def test_budget_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADSERVE_MAX_REPLY_BYTES", "1234")
    config = parse_config(["--max-stream-bytes", "99", "--stream-stall-seconds", "2.5"])
    assert config.budgets["max_reply_bytes"] == 1234 and config.budgets["max_stream_bytes"] == 99
    assert config.stream_stall_s == 2.5
    assert Budgets.from_config(config).reply_bytes == 1234


def test_every_budget_flag_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "limits.md").read_text()
    flags = ["--" + name.replace("_", "-") for name in BUDGET_DEFAULTS]
    flags += ["--stream-stall-seconds", "--max-points", "--max-message-bytes"]
    missing = [f for f in flags if not re.search(rf"`{re.escape(f)}`", doc)]
    assert not missing, missing
