"""Storage quotas: a job's stored bytes estimated from its spec before it runs, then
charged chunk by chunk as its results are written.

Four bounds (docs/jobs.md, docs/limits.md): ``--max-job-bytes`` per job,
``--max-tenant-stored-bytes`` for everything one tenant's jobs keep,
``--max-stored-bytes`` for everything the server keeps (a backstop), and
``--max-active-jobs-per-tenant`` queued or running jobs per tenant. A job's bytes are
its result files and its rows in the job store: each task's spec (inline tensors
and all) and an estimate of its check report. At submission the job's estimate must
fit all of them (and the data disk's free space); a total counts what ended jobs
wrote and, for active jobs, the larger of their estimate and what they wrote so far,
so an admitted job is not starved by one admitted after it. A refusal tells a tenant
about its own jobs only: the server's totals are other tenants' business.

The estimate is a lower bound where a shape is only known by running the function
(a Jacobian of a function with several outputs; taken as one output): writing is
charged as well, and a chunk that would go over a quota fails its task with
RESOURCE_EXHAUSTED instead of filling the disk.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gradserve.names import OP_BY_NUMBER
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.budgets import compute_itemsize
from gradserve_server.errors import ServiceError, exhausted
from gradserve_server.jobs.store import JobStore

log = logging.getLogger("gradserve.jobs")

# A .npy file's header: bytes on disk beyond the array's own.
NPY_HEADER_BYTES = 128
# A task's row and chunk rows beyond its spec (ids, states, metadata, manifest).
TASK_ROW_BYTES = 512
# A check's report (numbers, worst element, message) beyond its per-point flags, and
# per point: a flag in the report and one in its chunk's record (JSON).
CHECK_REPORT_BYTES = 1024
CHECK_POINT_BYTES = 8


def size_text(nbytes: int) -> str:
    """
    >>> size_text(1_600_000_000)
    '1.6 GB (1600000000 bytes)'
    >>> size_text(512)
    '512 bytes'
    """
    if nbytes < 1000:
        return f"{nbytes} bytes"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit} ({nbytes} bytes)"
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Shapes:
    """A task's sizes as its spec declares them."""

    points: int
    elements: dict[str, tuple[int, int]]  # input -> (rows, elements per point)
    itemsize: int


def shapes(task: pb.Task) -> Shapes:
    sampled = any(s.WhichOneof("source") == "sample" for s in task.inputs.values())
    elements: dict[str, tuple[int, int]] = {}
    dtypes = []
    for name, spec in task.inputs.items():
        if spec.WhichOneof("source") == "sample":
            dims = [int(d) for d in spec.sample.shape]
            elements[name] = (int(spec.sample.count), math.prod(dims))
            dtypes.append(spec.sample.dtype)
        else:
            dims = [int(d) for d in spec.tensor.shape]
            if (task.batched or sampled) and dims:
                elements[name] = (dims[0], math.prod(dims[1:]))
            else:
                elements[name] = (1, math.prod(dims))
            dtypes.append(spec.tensor.dtype)
    points = max([1, *(rows for rows, _ in elements.values())])
    return Shapes(points, elements, compute_itemsize(task.dtype, dtypes))


def task_input_bytes(task: pb.Task) -> int:
    """The bytes of a task's inputs once decoded or drawn on the server."""
    found = shapes(task)
    return sum(max(0, rows * each) for rows, each in found.elements.values()) * found.itemsize


def task_result_bytes(task: pb.Task) -> int:
    """The bytes a task's results will take on disk, from its shapes alone.

    Per point, with n the elements of the inputs differentiated: value 1, grad n,
    jacobian n, hessian n*n, vjp n, jvp 1, hvp n (a function's own output size is
    taken as 1). Checks store a report, not arrays. Python integers: a declared shape
    of any size gives its true, huge, estimate rather than a wrapped one.

    >>> t = pb.Task(ops=[pb.OP_HESSIAN], inputs={"x": pb.InputSpec(
    ...     sample=pb.SampleSpec(shape=[100], count=20_000))})
    >>> task_result_bytes(t)
    1600000128
    """
    if not task.ops:
        return 0
    found = shapes(task)
    per_input = {name: max(0, each) for name, (_, each) in found.elements.items()}
    wrt = [w for w in task.wrt if w in per_input] or list(per_input)
    n = sum(per_input[w] for w in wrt)
    weights = {"value": 1, "grad": n, "jacobian": n, "hessian": n * n, "vjp": n, "jvp": 1,
               "hvp": n}  # fmt: skip
    ops = set(task.ops)
    per_point = sum(weights.get(OP_BY_NUMBER.get(op, ""), n) for op in ops)
    return found.points * per_point * found.itemsize + NPY_HEADER_BYTES * len(ops)


def task_record_bytes(task: pb.Task) -> int:
    """The bytes a task's rows take in the job store: its spec as stored (inline
    tensors included), the bookkeeping of its row and chunks, and for a check the
    report (a fixed part and, per point, its pass flag in the report and in its
    chunks' records).

    >>> task_record_bytes(pb.Task(function="sum(x)", ops=[pb.OP_GRAD]))
    523
    >>> task_record_bytes(pb.Task(check=pb.CheckSpec(), inputs={"x": pb.InputSpec(
    ...     sample=pb.SampleSpec(shape=[3], count=1000))}))
    9553
    """
    nbytes = task.ByteSize() + TASK_ROW_BYTES
    if task.HasField("check"):
        nbytes += CHECK_REPORT_BYTES + CHECK_POINT_BYTES * shapes(task).points
    return nbytes


@dataclass(frozen=True)
class Estimate:
    total: int  # results and records
    largest: int  # the largest task's bytes
    largest_index: int
    records: int = 0  # the job's rows in the store: taken from the moment it is stored


def estimate(tasks: Sequence[pb.Task]) -> Estimate:
    total, largest, where, records = 0, 0, 0, 0
    for index, task in enumerate(tasks):
        rows = task_record_bytes(task)
        nbytes = task_result_bytes(task) + rows
        total += nbytes
        records += rows
        if nbytes > largest:
            largest, where = nbytes, index
    return Estimate(total, largest, where, records)


class Quotas:
    """The storage bounds, checked against the store; 0 turns one off."""

    def __init__(
        self,
        store: JobStore,
        per_job: int,
        per_server: int,
        per_tenant: int = 0,
        active_per_tenant: int = 0,
    ) -> None:
        self.store = store
        self.per_job = per_job
        self.per_server = per_server
        self.per_tenant = per_tenant
        self.active_per_tenant = active_per_tenant
        # admission and charging read the totals and then add to them
        self._lock = threading.Lock()

    def _free_disk(self) -> int:
        return shutil.disk_usage(self.store.results_dir).free

    def admit(
        self, job: Estimate, create: Callable[[], tuple[str, bool]], tenant: str = ""
    ) -> tuple[str, bool]:
        """Refuse a job that does not fit; else ``create()`` it and reserve its
        estimate, atomically with respect to other admissions and charges."""
        largest = f" (task {job.largest_index} alone: {size_text(job.largest)})"
        what = (
            f"SubmitJob: the job's results and spec are estimated at {size_text(job.total)}"
            f"{largest}"
        )
        if self.per_job and job.total > self.per_job:
            raise exhausted(
                f"{what}, over the per-job result quota of {size_text(self.per_job)} "
                "(--max-job-bytes); split the job or ask for fewer points",
                "tasks",
            )
        with self._lock:
            if self.active_per_tenant:
                active = self.store.active_count(tenant)
                if active >= self.active_per_tenant:
                    raise exhausted(
                        f"SubmitJob: you have {active} jobs queued or running, the limit of "
                        f"{self.active_per_tenant} per tenant (--max-active-jobs-per-tenant); "
                        "wait for one to end, or cancel one",
                    )
            if self.per_tenant:
                mine = self.store.claimed_bytes(tenant)
                if mine + job.total > self.per_tenant:
                    raise exhausted(
                        f"{what}, but your jobs already take {size_text(mine)} of your "
                        f"stored-results quota of {size_text(self.per_tenant)} "
                        "(--max-tenant-stored-bytes); delete ended jobs (gradserve jobs "
                        "delete ID)",
                        "tasks",
                    )
            if self.per_server and self.store.claimed_bytes() + job.total > self.per_server:
                log.warning("SubmitJob refused: the result store (--max-stored-bytes) is full")
                raise exhausted(
                    f"{what}, more than the server's result store has room for now "
                    "(--max-stored-bytes); try again later, or ask its operator",
                    "tasks",
                )
            free = self._free_disk()
            if job.total > free:
                log.warning("SubmitJob refused: %s free on the data disk", size_text(free))
                raise exhausted(
                    f"{what}, more than the server's data disk has free; try again later, "
                    "or ask its operator",
                    "tasks",
                )
            job_id, created = create()
            if created:
                self.store.reserve_usage(job_id, job.total, job.records)
            return job_id, created

    def charge(self, job_id: str, nbytes: int) -> None:
        """Count ``nbytes`` about to be written for ``job_id``, or refuse them."""
        with self._lock:
            estimate_bytes, written = self.store.usage(job_id)
            if self.per_job and written + nbytes > self.per_job:
                raise _over(
                    f"the job's results reached {size_text(written + nbytes)}, over the "
                    f"per-job result quota of {size_text(self.per_job)} (--max-job-bytes)"
                )
            # what this charge adds to the totals: an active job already claims its estimate
            grows = max(estimate_bytes, written + nbytes) - max(estimate_bytes, written)
            if self.per_tenant:
                mine = self.store.claimed_bytes(self.store.job_tenant(job_id) or "") + grows
                if mine > self.per_tenant:
                    raise _over(
                        f"your jobs' stored results would reach {size_text(mine)}, over your "
                        f"quota of {size_text(self.per_tenant)} (--max-tenant-stored-bytes)"
                    )
            if self.per_server and self.store.claimed_bytes() + grows > self.per_server:
                raise _over("the server's result store is full (--max-stored-bytes)")
            self.store.add_written(job_id, nbytes)

    def refund(self, job_id: str, nbytes: int) -> None:
        if nbytes:
            self.store.add_written(job_id, -nbytes)


def _over(message: str) -> ServiceError:
    return exhausted(message + "; its results were not stored", "tasks")


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:
            continue
    return total
