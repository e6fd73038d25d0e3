"""Running one task of a job: bind, plan, dispatch its pending chunks, store, finish.

A task has up to two phases, ``compute`` (its ops) and ``check``, each planned into
chunks once and run through the same ComputeService machinery as the unary calls,
with the job's id as the pool tenant. A chunk's results go to disk as soon as it
finishes; the task's merged check report and output manifest are written when its
last chunk is stored. Any failure fails this task alone, with the status a unary
call would have had.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np

from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import binding, dispatch, sampling
from gradserve_server.errors import from_chunk_error, invalid, to_status
from gradserve_server.jobs import codec, files, spec
from gradserve_server.jobs.results import build_metadata, build_outputs
from gradserve_server.jobs.store import ChunkRow, JobStore, TaskRow
from gradserve_server.service import ComputeService, report_to_proto
from gradserve_workers.report import merge_reports
from gradserve_workers.tasks import CheckSpec, ChunkResult, ComputeSpec

log = logging.getLogger("gradserve.jobs")

# Chunks of a job stay below this many elements (inputs + outputs), smaller than
# unary calls' chunks: a crash loses less work and progress moves more often.
JOB_CHUNK_ELEMENTS = 1_000_000

PHASE_METHODS = {"compute": "compute", "check": "check"}


def phases(task: pb.Task) -> list[str]:
    return (["compute"] if task.ops else []) + (["check"] if task.HasField("check") else [])


class TaskRunner:
    """Runs the tasks of one job; ``slots`` bounds the job's chunks in flight."""

    def __init__(
        self,
        service: ComputeService,
        store: JobStore,
        job_id: str,
        slots: asyncio.Semaphore,
        on_progress: Callable[[], None],
    ) -> None:
        self.service = service
        self.store = store
        self.job_id = job_id
        self.slots = slots
        self.on_progress = on_progress

    async def run(self, idx: int) -> None:
        row = await asyncio.to_thread(self.store.task, self.job_id, idx)
        if row is None or row.state in ("succeeded", "failed"):
            return
        task = pb.Task.FromString(row.spec)
        names = phases(task)
        try:
            for phase in names:
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
            shutil.rmtree(self.store.task_dir(self.job_id, idx), ignore_errors=True)
        self.on_progress()

    # ------------------------------------------------------------- phases

    def _bind(self, task: pb.Task, phase: str) -> tuple[binding.Bound, ComputeSpec | CheckSpec]:
        if phase == "check":
            return self.service.bind_check(spec.check_request(task))
        sampled: dict[str, np.ndarray] = {}
        if spec.has_sample(task):
            if not all(s.WhichOneof("source") == "sample" for s in task.inputs.values()):
                raise invalid("compute(fn, inputs): sample every input or none", "inputs")
            limit = self.service.config.max_points * 16
            for name, s in task.inputs.items():
                where = f"compute(fn, inputs): input {name!r}"
                sampled[name] = sampling.draw(s.sample, where, limit)
        # the drawn arrays go in directly: no copy through a request's bytes
        return self.service.bind_compute(spec.compute_request(task), sampled)

    async def _run_phase(self, row: TaskRow, task: pb.Task, phase: str, units: int) -> None:
        stored = await asyncio.to_thread(self.store.chunks, self.job_id, row.idx, phase)
        if stored and all(c.state == "done" for c in stored):
            return  # finished before a restart: nothing to bind or run
        bound, chunk_spec = await asyncio.to_thread(self._bind, task, phase)
        per_point = self.service.per_point(bound, chunk_spec)
        spread = math.ceil(bound.points * per_point / (2 * JOB_CHUNK_ELEMENTS))
        ranges = self.service.plan(bound, per_point, spread)
        chunks = await asyncio.to_thread(
            self.store.start_task, self.job_id, row.idx, units, phase, ranges
        )
        covered = sum(c.stop - c.start for c in chunks)
        if covered != (bound.points if bound.batched else 1):
            raise RuntimeError(f"stored chunk plan covers {covered} points, not {bound.points}")
        pending = [c for c in chunks if c.state != "done"]
        payload = self.service.payload(bound, len(pending))
        del bound  # the payload holds what the chunks need
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
                chunk_spec, self.job_id, PHASE_METHODS[phase], payload, chunk.start, chunk.stop
            )
            if result.error is not None:
                raise from_chunk_error(result.error)
            await asyncio.to_thread(self._store_chunk, idx, phase, chunk, result)
        self.on_progress()

    def _store_chunk(self, idx: int, phase: str, chunk: ChunkRow, result: ChunkResult) -> None:
        manifest: list[dict[str, Any]] = []
        if result.outputs:
            manifest = files.write_chunk(
                self.store.task_dir(self.job_id, idx),
                f"{phase}-c{chunk.chunk_idx:05d}",
                result.outputs,
            )
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
        report = None
        if check:
            merged = merge_reports(
                [codec.report_from_json((c.info or {})["report"]) for c in check],
                [c.start for c in check],
            )
            report = report_to_proto(merged).SerializeToString()
        batched = task.batched or spec.has_sample(task)
        meta = build_metadata(compute or check, row, batched, keep_unconnected=bool(compute))
        await asyncio.to_thread(
            self.store.finish_task,
            self.job_id,
            row.idx,
            build_outputs(compute),
            report,
            meta.SerializeToString(),
        )
