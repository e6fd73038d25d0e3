"""Job specs: a dict, or a YAML or JSON file, turned into a SubmitJob request.

The format (see docs/jobs.md)::

    name: week-3-grading            # optional
    tasks:
      - id: alice                   # optional, unique in the job; default its index
        function: "2 * dot(x, x)"
        inputs:
          x: {sample: {dist: normal, mean: 0, std: 1, shape: [4], count: 1000, seed: 7}}
        ops: [grad, hessian]        # any of value grad jacobian hessian vjp jvp hvp
        check: {grad: "4 * x", atol: 1e-6}
      - function: "sum(sin(x))"
        inputs: {x: [0.0, 0.5, 1.0]}   # literal nested lists, or {npy: path}
        ops: [grad]

``{npy: path}`` is relative to the job file (to the working directory for a dict).
Errors name the task (index and id) and the key at fault. Files are read within
fixed bounds on size, nesting and YAML aliases (see :mod:`gradserve._safeload`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradserve import _safeload, wire
from gradserve._claims import VALUES, claims_for, numeric_claims_in_job
from gradserve._suggest import unknown_key
from gradserve.errors import InvalidArgumentError
from gradserve.names import CHECK_KINDS, CLAIM_KINDS, DTYPES, JACOBIAN_MODES, OPS
from gradserve.sampling import sample_from_mapping
from gradserve.v1 import gradserve_pb2 as pb

JobSpec = Mapping[str, Any] | str | os.PathLike[str]

_JOB_KEYS = {"name", "tasks"}
_TASK_KEYS = {
    "id", "function", "inputs", "batched", "ops", "check", "wrt", "dtype", "mode",
    "cotangent", "tangents", "vector", "verify",
}  # fmt: skip
_CHECK_OPTIONS = {"atol", "rtol", "eps", "order", "fast", "seed"}


class JobSpecError(InvalidArgumentError):
    """A job spec that cannot be submitted; the message names the task and key."""


def load(
    job: JobSpec, *, name: str | None = None, idempotency_key: str | None = None
) -> pb.SubmitJobRequest:
    """A SubmitJobRequest from a dict, or from the path of a ``.yaml``/``.yml``/``.json`` file."""
    req = _load(job, name)
    req.idempotency_key = idempotency_key or ""
    return req


def _load(job: JobSpec, name: str | None) -> pb.SubmitJobRequest:
    if isinstance(job, Mapping):
        return _parse(job, Path.cwd(), "job", name)
    if not isinstance(job, str | os.PathLike):
        raise JobSpecError("job: give a dict, or the path of a YAML or JSON job file")
    path = Path(job)
    where = f"job file {str(path)!r}"
    if not path.is_file():
        raise JobSpecError(f"{where}: no such file")
    try:
        data = _safeload.load_file(path)
    except _safeload.LoadError as exc:
        raise JobSpecError(f"{where}: {exc}") from None
    except OSError as exc:
        raise JobSpecError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    if not isinstance(data, Mapping):
        raise JobSpecError(f"{where}: the top level must be a mapping with 'tasks'")
    return _parse(data, path.parent, where, name)


def _parse(
    data: Mapping[str, Any], base: Path, where: str, name: str | None
) -> pb.SubmitJobRequest:
    unknown = sorted(set(data) - _JOB_KEYS)
    if unknown:
        raise JobSpecError(f"{where}: {unknown_key(unknown[0], _JOB_KEYS)}")
    tasks = data.get("tasks")
    if not isinstance(tasks, Sequence) or isinstance(tasks, str) or not tasks:
        raise JobSpecError(f"{where}: 'tasks' must be a non-empty list")
    req = pb.SubmitJobRequest(name=str(name if name is not None else data.get("name") or ""))
    for index, task in enumerate(tasks):
        req.tasks.append(_task(task, index, base, where))
    return req


def _task(task: Any, index: int, base: Path, where: str) -> pb.Task:
    if not isinstance(task, Mapping):
        raise JobSpecError(f"{where}: task {index}: must be a mapping with 'function'")
    label = f"{where}: task {index}" + (f" ({task['id']!r})" if "id" in task else "")

    def fail(key: str, message: str) -> JobSpecError:
        return JobSpecError(f"{label}: {key}: {message}")

    unknown = sorted(set(task) - _TASK_KEYS)
    if unknown:
        raise fail(unknown[0], unknown_key(unknown[0], _TASK_KEYS))
    function = task.get("function")
    if not isinstance(function, str) or not function.strip():
        raise fail("function", "give the function's source, e.g. 'sum(sin(x))'")
    dtype = task.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise fail("dtype", f"must be one of {list(DTYPES)}, not {dtype!r}")
    msg = pb.Task(
        id=str(task.get("id", "")),
        function=function,
        batched=bool(task.get("batched", False)),
        dtype=DTYPES[dtype] if dtype else pb.DTYPE_UNSPECIFIED,
    )
    ops = task.get("ops", [])
    ops = [ops] if isinstance(ops, str) else ops
    if not isinstance(ops, Sequence):
        raise fail("ops", "a list of operations, e.g. [grad, hessian]")
    for op in ops:
        if op not in OPS:
            raise fail("ops", f"unknown operation {op!r}; use any of {list(OPS)}")
        msg.ops.append(OPS[op])
    wrt = task.get("wrt", [])
    wrt = [wrt] if isinstance(wrt, str) else wrt
    if not isinstance(wrt, Sequence) or not all(isinstance(w, str) for w in wrt):
        raise fail("wrt", "an input name or a list of them")
    msg.wrt.extend(wrt)
    mode = task.get("mode", "auto")
    if mode not in JACOBIAN_MODES:
        raise fail("mode", f"must be one of {list(JACOBIAN_MODES)}, not {mode!r}")
    msg.jacobian_mode = JACOBIAN_MODES[mode]
    verify = task.get("verify")
    if verify not in (None, True, False):
        raise fail(
            "verify", f"must be true, false or absent (the server's default), not {verify!r}"
        )
    msg.verify = pb.VERIFY_DEFAULT if verify is None else pb.VERIFY_ON if verify else pb.VERIFY_OFF
    inputs = task.get("inputs")
    if not isinstance(inputs, Mapping) or not inputs:
        raise fail("inputs", "a mapping from input name to values, {npy: path} or {sample: ...}")
    for input_name, value in inputs.items():
        key = f"inputs.{input_name}"
        spec = _input(value, base, dtype, lambda m, k=key: fail(k, m))
        msg.inputs[str(input_name)].CopyFrom(spec)
    if "cotangent" in task:
        msg.cotangent.CopyFrom(_tensor(task["cotangent"], base, dtype, "cotangent", fail))
    for field in ("tangents", "vector"):
        given = task.get(field, {})
        if not isinstance(given, Mapping):
            raise fail(field, "a mapping from input name to values")
        for input_name, value in given.items():
            key = f"{field}.{input_name}"
            getattr(msg, field)[str(input_name)].CopyFrom(_tensor(value, base, dtype, key, fail))
    if "check" in task and task["check"] is not False:
        msg.check.CopyFrom(_check(task["check"], list(wrt), fail, base))
    if not msg.ops and not msg.HasField("check"):
        raise fail("ops", "nothing to do: give ops, a check, or both")
    return msg


def _input(value: Any, base: Path, dtype: str | None, fail: Any) -> pb.InputSpec:
    if isinstance(value, Mapping) and "sample" in value:
        if set(value) != {"sample"} or not isinstance(value["sample"], Mapping):
            raise fail("write {sample: {dist: ..., shape: ..., count: ..., seed: ...}}")
        try:
            spec = sample_from_mapping(value["sample"], "sample")
        except (ValueError, TypeError) as exc:
            raise fail(str(exc)) from None
        if spec.dtype is None and dtype is not None:
            spec = type(spec)(spec.dist, spec.params, spec.shape, spec.count, spec.seed, dtype)
        try:
            return pb.InputSpec(sample=spec._to_proto())
        except ValueError as exc:
            raise fail(str(exc)) from None
    return pb.InputSpec(tensor=_tensor(value, base, dtype, "", lambda _k, m: fail(m)))


def _tensor(value: Any, base: Path, dtype: str | None, key: str, fail: Any) -> pb.Tensor:
    if isinstance(value, Mapping):
        if set(value) != {"npy"}:
            raise fail(key, "give numbers, nested lists, {npy: path} or {sample: ...}")
        path = base / str(value["npy"])
        if not path.is_file():
            raise fail(key, f"no such .npy file: {path}")
        try:
            value = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise fail(key, f"cannot read {path}: {exc}") from None
    if isinstance(value, str | list):
        # YAML 1.1 reads 1e-3 (no dot) as a string: accept numbers written that way
        try:
            value = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise fail(key, "give numbers or nested lists of numbers") from None
    try:
        return wire.encode(wire.as_float_array(value, dtype=dtype, where="value"))
    except wire.WireError as exc:
        raise fail(key, str(exc)) from None


def _check(check: Any, wrt: list[str], fail: Any, base: Path = Path(".")) -> pb.CheckSpec:
    if check is True or check is None:
        check = {}
    if not isinstance(check, Mapping):
        raise fail("check", "true, or a mapping like {grad: '4 * x', atol: 1e-6}")
    allowed = set(CLAIM_KINDS) | _CHECK_OPTIONS | {k + VALUES for k in CLAIM_KINDS}
    unknown = sorted(set(check) - allowed)
    if unknown:
        raise fail(f"check.{unknown[0]}", unknown_key(unknown[0], allowed))
    # numeric claims (grad_values: file.npy, inline numbers, or a dict by input)
    check = numeric_claims_in_job(check, base, fail)
    claimed = [k for k in CLAIM_KINDS if k in check]
    if len(claimed) > 1:
        raise fail("check", f"give one claim kind, not {claimed}")
    spec = pb.CheckSpec(kind=CHECK_KINDS["finite_difference"])
    if claimed:
        kind = claimed[0]
        spec.kind = CLAIM_KINDS[kind]
        try:
            spec.claims.extend(claims_for(check[kind], wrt, f"check.{kind}"))
        except InvalidArgumentError as exc:
            raise fail(f"check.{kind}", exc.message) from None
    options = spec.options
    try:
        options.order = int(check.get("order", 1))
        options.seed = int(check.get("seed", 0))
        for key in ("atol", "rtol", "eps"):
            if key in check:
                setattr(options, key, float(check[key]))
    except (TypeError, ValueError) as exc:
        raise fail("check", f"options must be numbers ({exc})") from None
    if options.order not in (1, 2):
        raise fail("check.order", f"must be 1 or 2, not {options.order}")
    if "fast" in check:
        if not isinstance(check["fast"], bool):
            raise fail("check.fast", "must be true or false")
        options.fast = check["fast"]
    return spec
