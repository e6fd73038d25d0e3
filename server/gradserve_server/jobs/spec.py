"""A job's spec: what SubmitJob refuses outright, and how a task becomes requests.

Only the shape of the job is checked at submission (tasks present, ids unique,
known operations, every input given): a task whose function or inputs are bad
fails alone when it runs, with the same error a unary call would get.
"""

from __future__ import annotations

import hashlib

from gradserve.results import OP_BY_NUMBER
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.errors import exhausted, invalid
from gradserve_server.jobs.store import NewTask

MAX_TASKS = 100_000
MAX_NAME_CHARS = 200
MAX_TASK_ID_CHARS = 200


def spec_hash(req: pb.SubmitJobRequest) -> str:
    """What an idempotency key is bound to: everything in the request but the key."""
    copy = pb.SubmitJobRequest()
    copy.CopyFrom(req)
    copy.idempotency_key = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _where(index: int, task: pb.Task) -> str:
    return f"task {index}" + (f" ({task.id!r})" if task.id else "")


def task_points(task: pb.Task) -> int:
    """The points a task will run (its progress weight), from the spec alone."""
    counts = []
    for spec in task.inputs.values():
        if spec.WhichOneof("source") == "sample":
            counts.append(int(spec.sample.count))
        elif task.batched and spec.tensor.shape:
            counts.append(int(spec.tensor.shape[0]))
    return max([1, *counts]) if counts else 1


def validate(req: pb.SubmitJobRequest) -> list[NewTask]:
    """The job's tasks, ready to store; INVALID_ARGUMENT for a malformed job."""
    if not req.tasks:
        raise invalid("SubmitJob: the job has no tasks", "tasks")
    if len(req.tasks) > MAX_TASKS:
        raise exhausted(f"SubmitJob: {len(req.tasks)} tasks is over the limit of {MAX_TASKS}")
    if len(req.name) > MAX_NAME_CHARS:
        raise invalid(f"SubmitJob: the name is over {MAX_NAME_CHARS} characters", "name")
    seen: dict[str, int] = {}
    tasks = []
    for index, task in enumerate(req.tasks):
        where = f"SubmitJob: {_where(index, task)}"
        task_id = task.id or str(index)
        if len(task_id) > MAX_TASK_ID_CHARS:
            raise invalid(f"{where}: the id is over {MAX_TASK_ID_CHARS} characters", "id")
        if task_id in seen:
            raise invalid(
                f"{where}: the id {task_id!r} is already used by task {seen[task_id]}; "
                "task ids must be unique in a job",
                f"tasks[{index}].id",
            )
        seen[task_id] = index
        for op in task.ops:
            if op not in OP_BY_NUMBER:
                raise invalid(f"{where}: unknown operation number {op}", f"tasks[{index}].ops")
        if not task.ops and not task.HasField("check"):
            raise invalid(
                f"{where}: nothing to do; give ops (value, grad, ...) or a check",
                f"tasks[{index}].ops",
            )
        if not task.inputs:
            raise invalid(f"{where}: no inputs", f"tasks[{index}].inputs")
        for name, spec in task.inputs.items():
            if spec.WhichOneof("source") is None:
                raise invalid(
                    f"{where}: input {name!r} has neither a tensor nor a sample",
                    f"tasks[{index}].inputs",
                )
        stored = pb.Task()
        stored.CopyFrom(task)
        stored.id = task_id
        tasks.append(NewTask(task_id, stored.SerializeToString(), task_points(task)))
    return tasks


def has_sample(task: pb.Task) -> bool:
    return any(s.WhichOneof("source") == "sample" for s in task.inputs.values())


def compute_request(task: pb.Task) -> pb.ComputeRequest:
    """The unary request a task's ops amount to, less its sampled inputs (drawn apart)."""
    req = pb.ComputeRequest(
        function=task.function,
        ops=list(task.ops),
        wrt=list(task.wrt),
        batched=task.batched or has_sample(task),
        dtype=task.dtype,
        jacobian_mode=task.jacobian_mode,
        verify=task.verify,
    )
    for name, spec in task.inputs.items():
        if spec.WhichOneof("source") == "tensor":
            req.inputs[name].CopyFrom(spec.tensor)
    if task.HasField("cotangent"):
        req.cotangent.CopyFrom(task.cotangent)
    for name, tensor in task.tangents.items():
        req.tangents[name].CopyFrom(tensor)
    for name, tensor in task.vector.items():
        req.vector[name].CopyFrom(tensor)
    return req


def check_request(task: pb.Task) -> pb.CheckRequest:
    """The unary request a task's check amounts to."""
    req = pb.CheckRequest(
        function=task.function,
        wrt=list(task.wrt),
        batched=task.batched,
        dtype=task.dtype,
        kind=task.check.kind,
        claims=list(task.check.claims),
    )
    req.options.CopyFrom(task.check.options)
    for name, spec in task.inputs.items():
        req.inputs[name].CopyFrom(spec)
    return req
