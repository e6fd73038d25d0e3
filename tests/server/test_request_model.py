"""The request model: the proto decoded once into typed, validated requests, each
validation rule written once; the server imports no private SDK module."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import grpc
import numpy as np
import pytest

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import chunks
from gradserve_server.budgets import Budgets
from gradserve_server.codec import RequestCodec
from gradserve_server.config import parse_config
from gradserve_server.errors import ServiceError
from gradserve_workers.tasks import COTANGENT, TANGENT, chunk_arrays, extra_arrays

SERVER = Path(__file__).resolve().parents[2] / "server" / "gradserve_server"


def _codec() -> RequestCodec:
    config = parse_config([])
    return RequestCodec(config, Budgets.from_config(config))


def test_the_server_imports_no_private_sdk_module() -> None:
    offenders = []
    for path in sorted(SERVER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "gradserve" and any(p.startswith("_") for p in parts[1:]):
                    offenders.append(f"{path.relative_to(SERVER)}:{node.lineno} {name}")
    assert SERVER.is_dir() and not offenders, offenders


def _check(kind: int = pb.CHECK_KIND_UNSPECIFIED, **options: float) -> pb.CheckRequest:
    req = pb.CheckRequest(function="sum(x * x)", kind=kind)
    req.inputs["x"].tensor.CopyFrom(wire.encode(np.array([1.0, 2.0])))
    if kind not in (pb.CHECK_KIND_UNSPECIFIED, pb.CHECK_KIND_FINITE_DIFFERENCE):
        req.claims.add(input="x", source="2 * x")
    for name, value in options.items():
        setattr(req.options, name, value)
    return req


@pytest.mark.parametrize(
    "kind",
    [
        pb.CHECK_KIND_FINITE_DIFFERENCE,
        pb.CHECK_KIND_CLAIMED_GRAD,
        pb.CHECK_KIND_CLAIMED_JACOBIAN,
    ],
)
@pytest.mark.parametrize(
    ("name", "value"),
    [("atol", math.inf), ("atol", -1.0), ("rtol", math.nan), ("eps", 0.0), ("eps", math.inf)],
)
def test_every_kind_of_check_refuses_the_same_tolerances(
    kind: int, name: str, value: float
) -> None:
    with pytest.raises(ServiceError) as info:
        _codec().check(_check(kind, **{name: value}))
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == f"check(fn, inputs): {name} must be a finite positive number"
    assert info.value.field == f"options.{name}"


def test_the_workers_claimed_check_refuses_an_infinite_atol_as_the_others_do() -> None:
    # it once accepted one (atol < 0 was its only test), while the finite-difference
    # check and the server refused it
    import torch

    from gradserve_workers.check import CheckError, claimed_check, finite_difference_check

    x = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    f = lambda x: (x * x).sum()  # noqa: E731
    with pytest.raises(CheckError, match="atol and rtol must be finite"):
        claimed_check(f, {"x": lambda x: 2 * x}, ["x"], x, kind="grad", atol=math.inf)
    with pytest.raises(CheckError, match="atol and rtol must be finite"):
        finite_difference_check(f, ["x"], x, atol=math.inf)


def test_a_check_decodes_into_a_typed_request_with_defaults() -> None:
    req = _codec().check(_check(pb.CHECK_KIND_CLAIMED_GRAD, atol=1e-7))
    assert req.kind == "grad" and req.wrt == ("x",)
    assert req.claims is not None and dict(req.claims.sources) == {"x": "2 * x"}
    assert not req.claims.numeric
    assert (req.options.order, req.options.atol, req.options.rtol, req.options.eps) == (
        1, 1e-7, 1e-3, 1e-6,
    )  # fmt: skip
    assert req.inputs.points == 1 and not req.inputs.batched and req.inputs.dtype == "float64"
    fd = _codec().check(_check())
    assert fd.kind == "finite_difference" and fd.claims is None


def test_numeric_claims_are_typed_arrays_and_reach_the_workers_under_one_encoding() -> None:
    msg = _check()
    msg.kind = pb.CHECK_KIND_CLAIMED_GRAD
    msg.claims.add(input="x").values.CopyFrom(wire.encode(np.array([2.0, 4.0])))
    req = _codec().check(msg)
    assert req.claims is not None and req.claims.numeric
    np.testing.assert_array_equal(req.claims.values["x"], [2.0, 4.0])
    sent = chunks.payload(req, 1)
    np.testing.assert_array_equal(extra_arrays(sent, "claim:")["x"], [2.0, 4.0])
    assert chunks.check_spec(req, {}).numeric == ("x",)


def test_compute_extras_are_typed_fields_not_prefixed_keys() -> None:
    msg = pb.ComputeRequest(function="x * y", ops=[pb.OP_JVP, pb.OP_VJP], batched=True)
    for name in ("x", "y"):
        msg.inputs[name].CopyFrom(wire.encode(np.ones((3, 2))))
        msg.tangents[name].CopyFrom(wire.encode(np.full((3, 2), 2.0)))
    msg.cotangent.CopyFrom(wire.encode(np.zeros((3, 2))))
    req = _codec().compute(msg)
    assert req.ops == ("jvp", "vjp") and req.wrt == ("x", "y")
    assert req.inputs.points == 3 and req.inputs.per_point_elements == 4
    assert set(req.tangents) == {"x", "y"} and req.cotangent is not None
    assert not req.vector
    arrays = chunks.payload(req, 1)
    assert set(arrays) == {"x", "y", COTANGENT, TANGENT + "x", TANGENT + "y"}
    assert (
        arrays.keys()
        == chunk_arrays(req.inputs.arrays, cotangent=req.cotangent, tangents=req.tangents).keys()
    )
    np.testing.assert_array_equal(extra_arrays(arrays, TANGENT)["y"], np.full((3, 2), 2.0))


def test_a_batched_tangent_without_its_points_is_refused_by_the_one_rule() -> None:
    msg = pb.ComputeRequest(function="sum(x)", ops=[pb.OP_JVP], batched=True)
    msg.inputs["x"].CopyFrom(wire.encode(np.ones((3, 2))))
    msg.tangents["x"].CopyFrom(wire.encode(np.ones((2,))))
    with pytest.raises(ServiceError, match="has shape"):
        _codec().compute(msg)
