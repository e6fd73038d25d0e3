"""The computations behind Compute and Check, free of gRPC: decode (codec.py), plan
(planner.py), dispatch (chunks.py, dispatch.py), assemble (encoding.py). This module
only orders those steps; jobs run their tasks through the same chunk-level methods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import chunks, dispatch, encoding, fastlane, numeric, shm
from gradserve_server.budgets import Budgets, InFlight
from gradserve_server.codec import RequestCodec, has_samples
from gradserve_server.config import ServerConfig
from gradserve_server.errors import from_chunk_error
from gradserve_server.planner import (
    WorkLog,
    check_shards,
    plan_chunks,
    record_check,
    request_elements,
)
from gradserve_server.pool import ActorPool, tenant_of
from gradserve_server.requests import CheckRequest, ComputeHeader, ComputeRequest
from gradserve_workers.report import CheckReport, merge_reports, merge_shards
from gradserve_workers.tasks import CheckSpec, ChunkResult, ComputeSpec

__all__ = ["ComputeService", "Computed"]


@dataclass
class Computed:
    """A finished computation: op -> key -> its chunks' arrays in point order (one
    array unless a batched call ran in several chunks), and how it ran."""

    outputs: dict[str, dict[str, list[np.ndarray]]]
    metadata: pb.ComputeMetadata
    # the results as the reply sends them when the outputs went into shared memory
    placed: list[pb.OpResult] | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for by_key in self.outputs.values() for p in by_key.values() for a in p)

    def joined(self) -> dict[str, dict[str, np.ndarray]]:
        """Each output as one array (one copy, into a bytes object a reply sends as is)."""
        return {
            op: {k: p[0] if len(p) == 1 else wire.join_arrays(p) for k, p in by_key.items()}
            for op, by_key in self.outputs.items()
        }


class ComputeService:
    def __init__(self, config: ServerConfig, pool: ActorPool) -> None:
        self.config = config
        self.pool = pool
        self.limits = dict(config.limits)
        self.budgets = Budgets.from_config(config)
        self.codec = RequestCodec(config, self.budgets)
        # bytes held for calls in progress, all callers together
        self.inflight = InFlight(self.budgets.inflight_bytes)
        # pieces of server streams written but not yet taken by their readers
        self.stream_pieces = InFlight(self.budgets.stream_bytes, "max_stream_bytes")
        # worker seconds of recent element-wise checks, by function and shapes
        self._check_log = WorkLog()
        # small compute calls in this process (see fastlane.py); main starts it
        self.fast_lane: fastlane.FastLane | None = None
        # shared-memory regions of clients on this host, by tenant
        self.shared = shm.Registry(config.shared_memory, config.max_shm_regions)

    # ------------------------------------------------------------- compute

    def admit_compute(self, msg: pb.ComputeRequest, unary: bool = False) -> ComputeHeader:
        """A compute request's header, admitted from its shapes alone (see
        :meth:`RequestCodec.compute_header`)."""
        return self.codec.compute_header(msg, unary)

    async def compute(
        self,
        msg: pb.ComputeRequest,
        tenant: str,
        blobs: Sequence[bytes] | None = None,
        header: ComputeHeader | None = None,
    ) -> Computed:
        """Run a compute request (``header``: its header, already admitted; without
        the unary message limit when the outputs go into shared memory)."""
        started = time.perf_counter()
        with self.shared.resolve(msg, tenant_of(tenant)) as shared:
            if shared is not None:
                # memoryviews of the regions: decoding reads any buffer, zero-copy
                blobs = cast("Sequence[bytes]", shared.blobs)
                if shared.output is not None:
                    header = header or self.admit_compute(msg)
                    estimate = header.estimate
                    shared.check_room(estimate.reply_bytes, estimate.out is not None)
            # inputs in shared memory are screened for NaN/Inf by the workers that read
            # them (ops.check_finite, each its own rows, in parallel): a pass less
            # over the caller's memory before the work starts (~2 ms at 16 MB)
            req = self.codec.compute(msg, blobs=blobs, header=header, screen=shared is None)
            spec = self.spec(req)
            if shared is not None:
                # the regions are read and written by workers on this host: Ray's lane
                if req.inputs.batched:
                    shared.plan_writes(req.ops, req.inputs.arrays, req.wrt, req.inputs.dtype)
                results = await self._dispatch(req, spec, tenant, "compute", shared)
                lane = "ray"
            else:
                # fast-lane hook (fastlane.py): a small call runs in this process, the rest on Ray
                results, lane = await fastlane.route(
                    self.fast_lane, req, spec, lambda: self._dispatch(req, spec, tenant, "compute")
                )
            meta = encoding.metadata(results, req.inputs, req.wrt, started)
            meta.lane = lane
            done = Computed(_assemble(results, req), meta)
            if shared is not None and shared.output is not None:
                done.placed = shared.place(done.outputs, [r.written for r in results])
                done.outputs = {}
            return done

    async def _dispatch(
        self,
        req: ComputeRequest | CheckRequest,
        spec: ComputeSpec | CheckSpec,
        tenant: str,
        method: str,
        shared: shm.SharedCall | None = None,
    ) -> list[ChunkResult]:
        payload = None
        if shared is not None:  # workers on this host read the caller's region in place
            here = shm.workers_on_this_host([w.name for w in self.pool.workers])
            payload = shared.payload(chunks.call_arrays(req), here)
        ranges = self.plan(req, per_worker=2 if payload is None else 1)
        if payload is None:
            payload = chunks.payload(req, len(ranges))
        return await dispatch.gather_or_cancel(
            self._run_range_or_raise(spec, tenant, method, payload, a, b) for a, b in ranges
        )

    async def _run_range_or_raise(
        self, spec: ComputeSpec | CheckSpec, tenant: str, method: str, payload: Any,
        start: int, stop: int,
    ) -> ChunkResult:  # fmt: skip
        # one chunk's user error fails the call: raising here makes gather cancel the rest
        result = await self.run_range(spec, tenant, method, payload, start, stop)
        if result.error is not None:
            raise from_chunk_error(result.error)
        return result

    # ------------------------------------------------------------- chunk-level API (jobs)

    def spec(self, req: ComputeRequest | CheckRequest) -> ComputeSpec | CheckSpec:
        """What the workers are told to do for ``req`` (its arrays travel apart)."""
        if isinstance(req, ComputeRequest):
            return chunks.compute_spec(req, self.limits)
        return chunks.check_spec(req, self.limits)

    def plan(
        self, req: ComputeRequest | CheckRequest, spread: int = 0, per_worker: int = 2
    ) -> list[tuple[int, int]]:
        """The chunk ranges of a request; ``spread`` asks for at least that many
        chunks' worth of balance (jobs use it to keep chunks small and durable);
        ``per_worker``: see :func:`~gradserve_server.planner.plan_chunks`."""
        if not req.inputs.batched:
            return [(0, 1)]
        workers = max(len(self.pool.workers), spread)
        return plan_chunks(req.inputs.points, request_elements(req), workers, per_worker)

    async def run_range(
        self,
        spec: ComputeSpec | CheckSpec,
        tenant: str,
        method: str,
        payload: Any,
        start: int,
        stop: int,
    ) -> ChunkResult:
        """One chunk ``[start, stop)`` on the pool, waiting its tenant's turn.

        A user error comes back in ``ChunkResult.error``; infrastructure failures
        (timeout, lost workers) raise ServiceError. ``payload`` is from
        :func:`chunks.payload`.
        """
        submit = chunks.chunk_submitter(spec, method, payload, start, stop)
        return await dispatch.run_chunk(self.pool, tenant, submit, self.config.chunk_timeout_s)

    # ------------------------------------------------------------- checks

    async def check(self, msg: pb.CheckRequest, tenant: str) -> tuple[CheckReport, Computed]:
        started = time.perf_counter()
        if has_samples(msg):
            # drawing points takes a while: off the event loop, which serves every call
            req = await asyncio.to_thread(self.codec.check, msg)
        else:
            req = self.codec.check(msg)
        spec = chunks.check_spec(req, self.limits)
        report, results, lane = await self._checked(req, spec, tenant)
        if req.claims is not None and req.claims.numeric:
            # and autograd against finite differences, to name the odd one out
            ref_spec = numeric.reference_spec(spec)
            reference, more, other_lane = await self._checked(req, ref_spec, tenant)
            report = numeric.three_way(report, reference, req.claims.values, req.inputs.batched)
            results += more
            lane = lane if other_lane == lane else fastlane.LANE_RAY  # a part ran on Ray
        no_unconnected = [replace(r, unconnected=()) for r in results]
        meta = encoding.metadata(no_unconnected, req.inputs, req.wrt, started)
        meta.lane = lane
        return report, Computed({}, meta)

    async def _checked(
        self, req: CheckRequest, spec: CheckSpec, tenant: str
    ) -> tuple[CheckReport, list[ChunkResult], str]:
        """One check's report, its chunks' results and its lane: split across the
        workers by input elements when that pays, else one check (by points in
        chunks on Ray, or in the fast lane when it is small)."""
        shards, key = check_shards(req.inputs, spec, self._check_log, self.pool.idle)
        if len(shards) > 1:
            payload = chunks.payload(req, len(shards))
            results = await dispatch.gather_or_cancel(
                self._run_range_or_raise(
                    replace(spec, columns=cols), tenant, "check", payload, 0, req.inputs.points
                )
                for cols in shards
            )
            report = merge_shards([r.report for r in results])
            lane = fastlane.LANE_RAY
        else:
            # fast-lane hook (fastlane.py): a small check runs in this process, the rest on Ray
            results, lane = await fastlane.route(
                self.fast_lane, req, spec, lambda: self._dispatch(req, spec, tenant, "check")
            )
            starts = np.cumsum([0] + [len(r.report.point_passed) for r in results[:-1]])
            report = merge_reports([r.report for r in results], [int(s) for s in starts])
        if key is not None:
            record_check(self._check_log, key, sum(r.seconds for r in results), len(shards) > 1)
        return report, results, lane


def _assemble(
    results: list[ChunkResult], req: ComputeRequest
) -> dict[str, dict[str, list[np.ndarray]]]:
    """Each op's outputs by key, as its chunks' arrays in point order."""
    outputs: dict[str, dict[str, list[np.ndarray]]] = {}
    for op in req.ops:
        keys = results[0].outputs[op].keys()
        if req.inputs.batched and len(results) > 1:
            outputs[op] = {k: [r.outputs[op][k] for r in results] for k in keys}
        else:
            outputs[op] = {k: [a] for k, a in results[0].outputs[op].items()}
    return outputs
