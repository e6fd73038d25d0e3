"""What the workers are sent for a request: its spec (the work, without arrays),
its arrays (once per call, or one object-store ref to them), and how one chunk of
points is submitted to an actor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray

from gradserve_server import dispatch
from gradserve_server.requests import CheckRequest, ComputeRequest
from gradserve_workers.shm import SharedArrays
from gradserve_workers.tasks import (
    PACKED_CALL_MAX_BYTES,
    CheckSpec,
    ChunkCall,
    ComputeSpec,
    chunk_arrays,
    pack_call,
)

__all__ = ["OBJECT_STORE_BYTES", "check_spec", "chunk_submitter", "compute_spec", "payload"]

# Arrays above this size go to the object store once instead of with every chunk.
OBJECT_STORE_BYTES = 256 * 1024


def compute_spec(req: ComputeRequest, limits: Mapping[str, int]) -> ComputeSpec:
    return ComputeSpec(
        source=req.program.source,
        source_hash=req.program.source_hash,
        ops=req.ops,
        wrt=req.wrt,
        batched=req.inputs.batched,
        dtype=req.inputs.dtype,
        jacobian_mode=req.jacobian_mode,
        chunk_size=req.chunk_size,
        limits=dict(limits),
        reply_budget=req.header.reply_budget,
        verify=req.verify,
    )


def check_spec(req: CheckRequest, limits: Mapping[str, int]) -> CheckSpec:
    options, claims = req.options, req.claims
    return CheckSpec(
        source=req.program.source,
        source_hash=req.program.source_hash,
        wrt=req.wrt,
        batched=req.inputs.batched,
        dtype=req.inputs.dtype,
        kind=req.kind,
        claims=dict(claims.sources) if claims is not None else {},
        order=options.order,
        atol=options.atol,
        rtol=options.rtol,
        eps=options.eps,
        fast=options.fast,
        seed=options.seed,
        limits=dict(limits),
        numeric=tuple(claims.values) if claims is not None else (),
    )


def call_arrays(req: ComputeRequest | CheckRequest) -> dict[str, Any]:
    """Every array a chunk call of ``req`` reads, by its key among the chunk's arrays."""
    if isinstance(req, ComputeRequest):
        return chunk_arrays(
            req.inputs.arrays, cotangent=req.cotangent, tangents=req.tangents, vector=req.vector
        )
    claims = req.claims.values if req.claims is not None else None
    return chunk_arrays(req.inputs.arrays, claims=claims)


def payload(req: ComputeRequest | CheckRequest, chunks: int) -> Any:
    """What each chunk call carries: the arrays, or one object-store ref to them when
    they are large and several chunks would otherwise each copy them."""
    arrays = call_arrays(req)
    if chunks > 1 and sum(a.nbytes for a in arrays.values()) > OBJECT_STORE_BYTES:
        return ray.put(arrays)  # once, not once per chunk
    return arrays


def chunk_submitter(
    spec: ComputeSpec | CheckSpec, method: str, payload: Any, start: int, stop: int
) -> dispatch.Submit:
    """How chunk ``[start, stop)`` is called on an actor handle (``method``: "compute"
    or "check"). A chunk whose arrays are small, or lie in the caller's shared memory
    (:class:`~gradserve_workers.shm.SharedArrays`: names and offsets), travels as one
    packed message (:func:`~gradserve_workers.tasks.pack_call`); larger arrays, and
    an object-store ref to them, go as Ray arguments, which the worker reads where Ray
    put them."""
    if isinstance(payload, SharedArrays):
        return dispatch.Packed(pack_call(ChunkCall(spec, payload, start, stop)))
    if not isinstance(payload, dict):
        return lambda h: getattr(h, method).remote(spec, payload, start, stop)
    if spec.batched:  # each chunk of points carries only its own slice
        arrays = {k: v[start:stop] for k, v in payload.items()}
        first, last = 0, stop - start
    else:
        arrays, first, last = payload, start, stop
    if sum(a.nbytes for a in arrays.values()) > PACKED_CALL_MAX_BYTES:
        return lambda h: getattr(h, method).remote(spec, arrays, first, last)
    return dispatch.Packed(pack_call(ChunkCall(spec, arrays, first, last)))  # once, for any retry
