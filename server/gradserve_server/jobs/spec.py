"""A job's spec: what SubmitJob refuses outright, and how a task becomes requests.

The shape of the job is checked at submission (tasks present, ids unique, known
operations, every input given), and its sizes, from the numbers in the spec before
anything is drawn or stored (task count first, then each task's names, source
length, points and sampled elements): a job over a size bound is refused whole.
A task whose function or inputs are otherwise bad fails alone when it runs, with
the same error a unary call would get.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gradserve.names import OP_BY_NUMBER
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.budgets import (
    SAMPLE_ELEMENTS_PER_POINT,
    Budgets,
    max_sample_elements,
    sample_cost,
)
from gradserve_server.config import ServerConfig
from gradserve_server.errors import exhausted, invalid
from gradserve_server.jobs import bounded, quota
from gradserve_server.jobs.rows import NewTask

MAX_TASKS = 100_000
MAX_NAME_CHARS = 200
MAX_TASK_ID_CHARS = bounded.MAX_ECHO_CHARS
MAX_KEY_CHARS = bounded.MAX_ECHO_CHARS
MAX_INPUT_NAME_CHARS = bounded.MAX_ECHO_CHARS


def spec_hash(req: pb.SubmitJobRequest) -> str:
    """What an idempotency key is bound to: everything in the request but the key."""
    copy = pb.SubmitJobRequest()
    copy.CopyFrom(req)
    copy.idempotency_key = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _where(index: int, task: pb.Task) -> str:
    return f"task {index}" + (f" ({bounded.clip(task.id, 40)!r})" if task.id else "")


def task_points(task: pb.Task) -> int:
    """The points a task will run (its progress weight), from the spec alone."""
    counts = []
    for spec in task.inputs.values():
        if spec.WhichOneof("source") == "sample":
            counts.append(int(spec.sample.count))
        elif task.batched and spec.tensor.shape:
            counts.append(int(spec.tensor.shape[0]))
    return max([1, *counts]) if counts else 1


@dataclass(frozen=True)
class SizeBounds:
    """What SubmitJob checks of each task's sizes before storing anything (0: no bound)."""

    max_points: int = 10_000_000
    max_sample_elements: int = 160_000_000  # per task, all sampled inputs together
    max_source_chars: int = 20_000
    max_task_input_bytes: int = 0  # a task's inputs in server memory, like a call's

    @classmethod
    def of(cls, config: ServerConfig, budgets: Budgets) -> SizeBounds:
        return cls(
            max_points=config.max_points,
            max_sample_elements=max_sample_elements(config.max_points),
            max_source_chars=config.limits.get("max_source_chars", cls.max_source_chars),
            max_task_input_bytes=budgets.request_bytes,
        )


def check_counts(req: pb.SubmitJobRequest) -> None:
    """The checks that cost nothing, made before any per-task work."""
    if not req.tasks:
        raise invalid("SubmitJob: the job has no tasks", "tasks")
    if len(req.tasks) > MAX_TASKS:
        raise exhausted(
            f"SubmitJob: {len(req.tasks)} tasks is over the limit of {MAX_TASKS} (max tasks "
            "per job); split the job",
            "tasks",
        )
    if len(req.name) > MAX_NAME_CHARS:
        raise invalid(f"SubmitJob: the name is over {MAX_NAME_CHARS} characters", "name")
    if len(req.idempotency_key) > MAX_KEY_CHARS:
        raise invalid(
            f"SubmitJob: the idempotency key is over {MAX_KEY_CHARS} characters",
            "idempotency_key",
        )
    _no_control(req.name, "SubmitJob: the name", "name")
    _no_control(req.idempotency_key, "SubmitJob: the idempotency key", "idempotency_key")


def _no_control(text: str, what: str, field: str) -> None:
    at = bounded.control_char(text)
    if at is not None:
        raise invalid(
            f"{what} has a control character ({text[at]!r}) at position {at}; names, ids "
            "and keys are printable text",
            field,
        )


def _check_sizes(task: pb.Task, index: int, where: str, bounds: SizeBounds) -> None:
    """Names, source length, points and sampled elements: from the spec's numbers alone
    (Python integers, so a declared shape of 2^62 is refused, not wrapped)."""
    field = f"tasks[{index}]"
    if len(task.function) > bounds.max_source_chars:
        raise exhausted(
            f"{where}: the function is {len(task.function)} characters, over the limit of "
            f"{bounds.max_source_chars} (max_source_chars)",
            f"{field}.function",
        )
    names = [*task.inputs, *task.wrt, *task.tangents, *task.vector]
    for name in names:
        if len(name) > MAX_INPUT_NAME_CHARS:
            raise invalid(
                f"{where}: an input name of {len(name)} characters "
                f"({bounded.clip(name, 40)!r}) is over the limit of {MAX_INPUT_NAME_CHARS}",
                f"{field}.inputs",
            )
    sampled = 0
    for name, spec in task.inputs.items():
        if spec.WhichOneof("source") != "sample":
            continue
        sampled += sample_cost(spec.sample, f"{where}: input {name!r}", f"{field}.inputs").elements
    points = task_points(task)
    if points > bounds.max_points:
        raise exhausted(
            f"{where}: {points} points is over the server's limit of {bounds.max_points} "
            "(--max-points)",
            f"{field}.inputs",
        )
    if sampled > bounds.max_sample_elements:
        raise exhausted(
            f"{where}: {sampled} sampled elements is over the limit of "
            f"{bounds.max_sample_elements} per task "
            f"({SAMPLE_ELEMENTS_PER_POINT} x --max-points)",
            f"{field}.inputs",
        )
    held = quota.task_input_bytes(task)
    if bounds.max_task_input_bytes and held > bounds.max_task_input_bytes:
        raise exhausted(
            f"{where}: its inputs take {quota.size_text(held)} in the server's memory, over "
            f"the budget of {quota.size_text(bounds.max_task_input_bytes)} per call or task "
            "(--max-request-bytes)",
            f"{field}.inputs",
        )


def validate(req: pb.SubmitJobRequest, bounds: SizeBounds | None = None) -> list[NewTask]:
    """The job's tasks, ready to store; INVALID_ARGUMENT for a malformed job,
    RESOURCE_EXHAUSTED for one over a size bound. CPU-bound for a big job: call it
    off the event loop."""
    bounds = bounds or SizeBounds()
    check_counts(req)
    seen: dict[str, int] = {}
    tasks = []
    for index, task in enumerate(req.tasks):
        where = f"SubmitJob: {_where(index, task)}"
        task_id = task.id or str(index)
        if len(task_id) > MAX_TASK_ID_CHARS:
            raise invalid(
                f"{where}: the id is over {MAX_TASK_ID_CHARS} characters", f"tasks[{index}].id"
            )
        _no_control(task_id, f"{where}: the id", f"tasks[{index}].id")
        if task_id in seen:
            raise invalid(
                f"{where}: the id {task_id!r} is already used by task {seen[task_id]}; "
                "task ids must be unique in a job",
                f"tasks[{index}].id",
            )
        seen[task_id] = index
        _check_sizes(task, index, where, bounds)
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
