"""Shared memory across tenants and budgets, on a server with a token file and a
small --max-points: one tenant's region is invisible to another, and inputs read
from shared memory count against the budgets as bytes on the wire do."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest
from support.cluster import RayNode, ServerProcess, start_server

import gradserve
from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

TOKENS = {"alice": secrets.token_hex(16), "bob": secrets.token_hex(16)}
PROOF = b"alice-proof-0123456789"
MAX_POINTS = 1000


@pytest.fixture(scope="module")
def tenant_server(ray_head: RayNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tokens: Path = tmp_path_factory.mktemp("shm") / "tokens"
    tokens.write_text("".join(f"{t} {tok}\n" for t, tok in TOKENS.items()))
    tokens.chmod(0o600)
    proc: ServerProcess = start_server(
        ray_head,
        num_workers=1,
        extra=["--auth-token-file", str(tokens), "--max-points", str(MAX_POINTS),
               "--max-shm-regions", "2"],
    )  # fmt: skip
    try:
        yield proc.address
    finally:
        proc.stop()


@pytest.fixture
def segment() -> Iterator[shared_memory.SharedMemory]:
    seg = shared_memory.SharedMemory(
        name=f"gradserve_test_{secrets.token_hex(6)}", create=True, size=1 << 20
    )
    assert seg.buf is not None
    seg.buf[: len(PROOF)] = PROOF
    try:
        yield seg
    finally:
        seg.close()
        seg.unlink()


class As:
    def __init__(self, channel: grpc.Channel, tenant: str) -> None:
        self.stub = pb_grpc.GradientServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {TOKENS[tenant]}"),)

    def __call__(self, rpc: str, request: object) -> object:
        return getattr(self.stub, rpc)(request, metadata=self.metadata, timeout=60)

    def refused(self, rpc: str, request: object) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self(rpc, request)
        return info.value


def _compute(seg: shared_memory.SharedMemory, points: int, region: str = "r") -> pb.ComputeRequest:
    x = np.ones((points, 4))
    assert seg.buf is not None
    seg.buf[64 : 64 + x.nbytes] = x.tobytes()
    req = pb.ComputeRequest(function="sum(x * x)", ops=[pb.OP_GRAD], batched=True)
    tensor = wire.encode(x, with_data=False)
    tensor.shared_memory.CopyFrom(pb.SharedMemoryRef(region=region, offset=64))
    req.inputs["x"].CopyFrom(tensor)
    req.output.CopyFrom(pb.SharedMemoryRef(region=region, offset=65536))
    return req


def test_a_region_is_invisible_to_other_tenants(
    tenant_server: str, segment: shared_memory.SharedMemory
) -> None:
    with grpc.insecure_channel(tenant_server) as channel:
        alice, bob = As(channel, "alice"), As(channel, "bob")
        register = pb.RegisterSharedMemoryRequest(
            name="r", key=segment.name, byte_size=segment.size, proof=PROOF
        )
        alice("RegisterSharedMemory", register)
        try:
            alice("Compute", _compute(segment, 10))
            # bob cannot use, list or unregister it: NOT_FOUND as if it did not exist
            error = bob.refused("Compute", _compute(segment, 10))
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert bob("ListSharedMemory", pb.ListSharedMemoryRequest()).regions == []  # type: ignore[attr-defined]
            error = bob.refused(
                "UnregisterSharedMemory", pb.UnregisterSharedMemoryRequest(name="r")
            )
            assert error.code() == grpc.StatusCode.NOT_FOUND
            # nor register the segment by its name without the bytes it holds
            stolen = pb.RegisterSharedMemoryRequest(
                name="mine", key=segment.name, byte_size=4096, proof=b"guessed-proof-000000"
            )
            error = bob.refused("RegisterSharedMemory", stolen)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            listed = alice("ListSharedMemory", pb.ListSharedMemoryRequest())
            assert [r.name for r in listed.regions] == ["r"]  # type: ignore[attr-defined]
            # at most --max-shm-regions per tenant
            alice("RegisterSharedMemory", pb.RegisterSharedMemoryRequest(
                name="r2", key=segment.name, byte_size=4096, proof=PROOF))  # fmt: skip
            error = alice.refused("RegisterSharedMemory", pb.RegisterSharedMemoryRequest(
                name="r3", key=segment.name, byte_size=4096, proof=PROOF))  # fmt: skip
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-shm-regions" in error.details()
        finally:
            gone = alice("UnregisterSharedMemory", pb.UnregisterSharedMemoryRequest())
        assert sorted(r.name for r in gone.regions) == ["r", "r2"]  # type: ignore[attr-defined]


def test_inputs_in_shared_memory_count_against_the_budgets(
    tenant_server: str, segment: shared_memory.SharedMemory
) -> None:
    with grpc.insecure_channel(tenant_server) as channel:
        alice = As(channel, "alice")
        alice("RegisterSharedMemory", pb.RegisterSharedMemoryRequest(
            name="r", key=segment.name, byte_size=segment.size, proof=PROOF))  # fmt: skip
        try:
            alice("Compute", _compute(segment, MAX_POINTS))
            error = alice.refused("Compute", _compute(segment, MAX_POINTS + 1))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"{MAX_POINTS + 1} points" in error.details()
        finally:
            alice("UnregisterSharedMemory", pb.UnregisterSharedMemoryRequest())


def test_the_sdk_with_tokens_by_shared_memory(tenant_server: str) -> None:
    x = np.random.default_rng(4).normal(size=(MAX_POINTS, 4))
    with gradserve.Client(tenant_server, token=TOKENS["bob"], shared_memory=True) as client:
        got = client.grad("sum(x * x)", {"x": x}, batched=True)
        assert [r.calls_using for r in client.shared_memory_regions()] == [0]
    np.testing.assert_array_equal(got, 2 * x)
