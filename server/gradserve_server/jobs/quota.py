"""Result quotas: a job's stored bytes estimated from shapes before it runs, then
charged chunk by chunk as its results are written.

Two budgets (docs/jobs.md, docs/limits.md): ``--max-job-bytes`` per job and
``--max-stored-bytes`` for everything the server keeps. At submission the job's
estimate must fit both (and the data directory's free space); the server's total
counts what ended jobs wrote and, for active jobs, the larger of their estimate and
what they wrote so far, so an admitted job is not starved by one admitted after it.

The estimate is a lower bound where a shape is only known by running the function
(a Jacobian of a function with several outputs; taken as one output): writing is
charged as well, and a chunk that would go over a quota fails its task with
RESOURCE_EXHAUSTED instead of filling the disk.
"""

from __future__ import annotations

import math
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gradserve.results import OP_BY_NUMBER
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.errors import ServiceError, exhausted
from gradserve_server.jobs.store import JobStore

# A .npy file's header: bytes on disk beyond the array's own.
NPY_HEADER_BYTES = 128


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
    float32 = []
    for name, spec in task.inputs.items():
        if spec.WhichOneof("source") == "sample":
            dims = [int(d) for d in spec.sample.shape]
            elements[name] = (int(spec.sample.count), math.prod(dims))
            float32.append(spec.sample.dtype == pb.DTYPE_FLOAT32)
        else:
            dims = [int(d) for d in spec.tensor.shape]
            if (task.batched or sampled) and dims:
                elements[name] = (dims[0], math.prod(dims[1:]))
            else:
                elements[name] = (1, math.prod(dims))
            float32.append(spec.tensor.dtype == pb.DTYPE_FLOAT32)
    points = max([1, *(rows for rows, _ in elements.values())])
    if task.dtype:
        itemsize = 4 if task.dtype == pb.DTYPE_FLOAT32 else 8
    else:
        itemsize = 4 if float32 and all(float32) else 8
    return Shapes(points, elements, itemsize)


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


@dataclass(frozen=True)
class Estimate:
    total: int
    largest: int  # the largest task's bytes
    largest_index: int


def estimate(tasks: Sequence[pb.Task]) -> Estimate:
    total, largest, where = 0, 0, 0
    for index, task in enumerate(tasks):
        nbytes = task_result_bytes(task)
        total += nbytes
        if nbytes > largest:
            largest, where = nbytes, index
    return Estimate(total, largest, where)


class Quotas:
    """The two result budgets, checked against the store; 0 turns one off."""

    def __init__(self, store: JobStore, per_job: int, per_server: int) -> None:
        self.store = store
        self.per_job = per_job
        self.per_server = per_server
        # admission and charging read the totals and then add to them
        self._lock = threading.Lock()

    def _free_disk(self) -> int:
        return shutil.disk_usage(self.store.results_dir).free

    def admit(self, job: Estimate, create: Callable[[], tuple[str, bool]]) -> tuple[str, bool]:
        """Refuse a job whose estimate does not fit; else ``create()`` it and reserve
        its estimate, atomically with respect to other admissions and charges."""
        largest = f" (task {job.largest_index} alone: {size_text(job.largest)})"
        what = f"SubmitJob: the job's results are estimated at {size_text(job.total)}{largest}"
        if self.per_job and job.total > self.per_job:
            raise exhausted(
                f"{what}, over the per-job result quota of {size_text(self.per_job)} "
                "(--max-job-bytes); split the job or ask for fewer points",
                "tasks",
            )
        with self._lock:
            if self.per_server:
                claimed = self.store.claimed_bytes()
                if claimed + job.total > self.per_server:
                    raise exhausted(
                        f"{what}, but the server's result store quota of "
                        f"{size_text(self.per_server)} (--max-stored-bytes) has "
                        f"{size_text(max(0, self.per_server - claimed))} left; delete ended "
                        "jobs (gradserve jobs delete ID) or wait for --job-ttl to remove them",
                        "tasks",
                    )
            free = self._free_disk()
            if job.total > free:
                raise exhausted(
                    f"{what}, more than the {size_text(free)} free on the server's data disk",
                    "tasks",
                )
            job_id, created = create()
            if created:
                self.store.reserve_usage(job_id, job.total)
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
            if self.per_server:
                claimed = self.store.claimed_bytes()
                claimed += max(estimate_bytes, written + nbytes) - max(estimate_bytes, written)
                if claimed > self.per_server:
                    raise _over(
                        f"the server's stored results would reach {size_text(claimed)}, over "
                        f"its quota of {size_text(self.per_server)} (--max-stored-bytes)"
                    )
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
