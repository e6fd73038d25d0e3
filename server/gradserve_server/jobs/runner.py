"""Running one task of a job: bind, plan, dispatch its pending chunks, store, finish.

A task has up to two phases, ``compute`` (its ops) and ``check``, each planned into
chunks once and run through the same ComputeService machinery as the unary calls,
waiting in the pool under the job's tenant and id. A chunk's results go to disk as soon as it
finishes; the task's merged check report and output manifest are written when its
last chunk is stored. Any failure fails this task alone, with the status a unary
call would have had.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import chunks, dispatch, numeric
from gradserve_server.encoding import report_to_proto
from gradserve_server.errors import (
    ServiceError,
    exhausted,
    from_chunk_error,
    to_status,
)
from gradserve_server.jobs import codec, files, quota, spec
from gradserve_server.jobs.quota import Quotas
from gradserve_server.jobs.results import build_metadata, build_outputs
from gradserve_server.jobs.rows import ChunkRow, TaskRow
from gradserve_server.jobs.store import JobStore
from gradserve_server.planner import request_elements
from gradserve_server.requests import CheckRequest, ComputeRequest
from gradserve_server.service import ComputeService
from gradserve_workers.report import merge_reports
from gradserve_workers.tasks import CheckSpec, ChunkResult, ComputeSpec

log = logging.getLogger("gradserve.jobs")

# Chunks of a job stay below this many elements (inputs + outputs), smaller than
# unary calls' chunks: a crash loses less work and progress moves more often.
JOB_CHUNK_ELEMENTS = 1_000_000

# A task waiting for room in the in-flight budget checks again this often.
INPUT_WAIT_S = 30.0


# "reference": autograd against finite differences beside a numeric claim
PHASE_METHODS = {"compute": "compute", "check": "check", "reference": "check"}


def phases(task: pb.Task) -> list[str]:
    numeric_claims = any(c.HasField("values") for c in task.check.claims)
    return (
        (["compute"] if task.ops else [])
        + (["check"] if task.HasField("check") else [])
        + (["reference"] if task.HasField("check") and numeric_claims else [])
    )


class TaskRunner:
    """Runs the tasks of one job; ``slots`` bounds the job's chunks in flight."""

    def __init__(
        self,
        service: ComputeService,
        store: JobStore,
        job_id: str,
        slots: asyncio.Semaphore,
        on_progress: Callable[[], None],
        quotas: Quotas | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.job_id = job_id
        self.slots = slots
        self.on_progress = on_progress
        self.quotas = quotas
        # what the job's chunks wait under in the pool (the manager sets its tenant's)
        self.pool_key = job_id

    async def run(self, idx: int) -> None:
        row = await asyncio.to_thread(self.store.task, self.job_id, idx)
        if row is None or row.state in ("succeeded", "failed"):
            return
        task = pb.Task.FromString(row.spec)
        names = phases(task)
        try:
            held = quota.task_input_bytes(task)
            for phase in names:
                async with self._holding(held):
                    await self._run_phase(row, task, phase, row.points * len(names))
            await self._finish(row, task)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            status = to_status(error)
            log.info("job %s task %d failed: %s", self.job_id, idx, status.code.name)
            await asyncio.to_thread(
                self.store.fail_task, self.job_id, idx, status.code.name, status.message
            )
            # its partial results are of no use to anyone
            await asyncio.to_thread(self._discard, idx)
        self.on_progress()

    # ------------------------------------------------------------- phases

    @contextlib.asynccontextmanager
    async def _holding(self, nbytes: int) -> AsyncIterator[None]:
        """Hold a task's input bytes (drawn or decoded, and their copy for the workers)
        in the server's in-flight budget, shared with the calls, while its phase runs.
        A job waits for room rather than failing: it is not in a hurry."""
        while True:
            try:
                held = await self.service.inflight.wait(
                    nbytes, f"job {self.job_id}: a task's inputs", timeout=INPUT_WAIT_S
                )
                break
            except ServiceError:
                continue
        with held:
            yield

    def _bind(
        self, task: pb.Task, phase: str
    ) -> tuple[ComputeRequest | CheckRequest, ComputeSpec | CheckSpec]:
        codec = self.service.codec
        if phase in ("check", "reference"):
            check = codec.check(spec.check_request(task))
            check_spec = chunks.check_spec(check, self.service.limits)
            return check, numeric.reference_spec(check_spec) if phase == "reference" else check_spec
        # the drawn arrays go in directly: no copy through a request's bytes
        sampled = codec.draw(task.inputs, "compute(fn, inputs)") if spec.has_sample(task) else {}
        compute = codec.compute(spec.compute_request(task), sampled)
        return compute, chunks.compute_spec(compute, self.service.limits)

    async def _run_phase(self, row: TaskRow, task: pb.Task, phase: str, units: int) -> None:
        stored = await asyncio.to_thread(self.store.chunks, self.job_id, row.idx, phase)
        if stored and all(c.state == "done" for c in stored):
            return  # finished before a restart: nothing to bind or run
        req, chunk_spec = await asyncio.to_thread(self._bind, task, phase)
        points = req.inputs.points
        spread = math.ceil(points * request_elements(req) / (2 * JOB_CHUNK_ELEMENTS))
        ranges = self.service.plan(req, spread)
        chunk_rows = await asyncio.to_thread(
            self.store.start_task, self.job_id, row.idx, units, phase, ranges
        )
        covered = sum(c.stop - c.start for c in chunk_rows)
        if covered != (points if req.inputs.batched else 1):
            raise RuntimeError(f"stored chunk plan covers {covered} points, not {points}")
        pending = [c for c in chunk_rows if c.state != "done"]
        payload = chunks.payload(req, len(pending))
        del req  # the payload holds what the chunks need
        await dispatch.gather_or_cancel(
            [self._run_chunk(row.idx, phase, chunk_spec, payload, c) for c in pending]
        )

    async def _run_chunk(
        self, idx: int, phase: str, chunk_spec: ComputeSpec | CheckSpec, payload: Any,
        chunk: ChunkRow,
    ) -> None:  # fmt: skip
        # the slot is held until the chunk is stored: it bounds the memory of results
        # waiting for the disk as well as the work in flight
        async with self.slots:
            await asyncio.to_thread(
                self.store.begin_chunk, self.job_id, idx, phase, chunk.chunk_idx
            )
            result = await self.service.run_range(
                chunk_spec, self.pool_key, PHASE_METHODS[phase], payload, chunk.start, chunk.stop
            )
            if result.error is not None:
                raise from_chunk_error(result.error)
            await asyncio.to_thread(self._store_chunk, idx, phase, chunk, result)
        self.on_progress()

    def _discard(self, idx: int) -> None:
        task_dir = self.store.task_dir(self.job_id, idx)
        freed = quota.tree_bytes(task_dir)
        shutil.rmtree(task_dir, ignore_errors=True)
        if self.quotas is not None:
            self.quotas.refund(self.job_id, freed)

    def _store_chunk(self, idx: int, phase: str, chunk: ChunkRow, result: ChunkResult) -> None:
        manifest: list[dict[str, Any]] = []
        if result.outputs:
            nbytes = sum(
                int(arr.nbytes) + quota.NPY_HEADER_BYTES
                for by_key in result.outputs.values()
                for arr in by_key.values()
            )
            if self.quotas is not None:
                self.quotas.charge(self.job_id, nbytes)  # refuses before a byte is written
            try:
                manifest = files.write_chunk(
                    self.store.task_dir(self.job_id, idx),
                    f"{phase}-c{chunk.chunk_idx:05d}",
                    result.outputs,
                )
            except OSError as error:
                if self.quotas is not None:
                    self.quotas.refund(self.job_id, nbytes)
                if error.errno == errno.ENOSPC:
                    raise exhausted(
                        "the server's data disk is full; this task's results were not stored"
                    ) from None
                raise
        info = {
            "vmapped": result.vmapped,
            "unconnected": list(result.unconnected),
            "jacobian_mode": result.jacobian_mode,
            "out_shape": list(result.out_shape),
            "certificate": result.certificate,
            "routes": list(result.routes),
            "seconds": result.seconds,
            "actor": result.actor,
            "report": codec.report_to_json(result.report) if result.report is not None else None,
        }
        self.store.finish_chunk(
            self.job_id, idx, phase, chunk.chunk_idx, manifest, info, chunk.stop - chunk.start
        )

    # ------------------------------------------------------------- finish

    async def _finish(self, row: TaskRow, task: pb.Task) -> None:
        chunks = await asyncio.to_thread(self.store.chunks, self.job_id, row.idx)
        fresh = await asyncio.to_thread(self.store.task, self.job_id, row.idx)
        row = fresh or row  # now with its started_at
        compute = [c for c in chunks if c.phase == "compute"]
        check = [c for c in chunks if c.phase == "check"]
        reference = [c for c in chunks if c.phase == "reference"]
        batched = task.batched or spec.has_sample(task)
        meta = build_metadata(compute or check, row, batched, keep_unconnected=bool(compute))
        report = None
        if check:
            merged = merge_reports(
                [codec.report_from_json((c.info or {})["report"]) for c in check],
                [c.start for c in check],
            )
            if reference:  # a numeric claim: which of claim, autograd, differences disagree
                claims, batched_claims = await self._claims(task)
                merged = numeric.three_way(
                    merged,
                    merge_reports(
                        [codec.report_from_json((c.info or {})["report"]) for c in reference],
                        [c.start for c in reference],
                    ),
                    claims,
                    batched_claims,
                )
            report = report_to_proto(merged, meta.execution_path).SerializeToString()
        await asyncio.to_thread(
            self.store.finish_task,
            self.job_id,
            row.idx,
            build_outputs(compute),
            report,
            meta.SerializeToString(),
        )

    async def _claims(self, task: pb.Task) -> tuple[dict[str, np.ndarray], bool]:
        """The task's numeric claims, read back from its stored spec (the chunks keep
        only reports) by binding its check again: the three-way verdict reads the claim
        where autograd and finite differences part, as a unary call does. Should that
        fail, the verdict goes without (the claim's own check already ran)."""
        try:
            async with self._holding(quota.task_input_bytes(task)):
                check = await asyncio.to_thread(self.service.codec.check, spec.check_request(task))
        except ServiceError as error:
            log.info("job %s: claims not read back for the three-way verdict: %s",
                     self.job_id, error)  # fmt: skip
            return {}, False
        values = check.claims.values if check.claims is not None else {}
        return dict(values), check.inputs.batched
