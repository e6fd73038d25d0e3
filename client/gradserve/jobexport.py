"""Writing a job's results to a directory: one ``.npz`` per task, one ``summary.json``.

Array names in a task's ``.npz``: the operation (``grad``), or ``op.input`` when the
operation has one array per input (``grad.x``), or ``hessian.a.b`` for Hessian blocks.
``summary.json`` holds the job's final status and, per task, its file, error, check
report and metadata.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradserve.results import JobStatus, TaskResult

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def flatten(outputs: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """``{"grad": {"x": a}}`` -> ``{"grad.x": a}``."""
    flat: dict[str, np.ndarray] = {}
    for key, value in outputs.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = np.asarray(value)
    return flat


def task_file_name(result: TaskResult) -> str:
    safe = _UNSAFE.sub("_", result.task_id).strip("._") or "task"
    return f"{result.task_index:05d}-{safe[:80]}.npz"


def write_results(status: JobStatus, results: Iterable[TaskResult], directory: str | Path) -> Path:
    """Write every task's arrays and the summary; returns the summary's path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for result in results:
        arrays = flatten(result.outputs)
        name = None
        if arrays:
            name = task_file_name(result)
            np.savez(out / name, **arrays)  # type: ignore[arg-type]
        tasks.append(
            {
                "index": result.task_index,
                "id": result.task_id,
                "ok": result.error is None,
                "error_code": result.error_code,
                "error": result.error,
                "file": name,
                "arrays": sorted(arrays),
                "check": dataclasses.asdict(result.check) if result.check else None,
                "metadata": dataclasses.asdict(result.metadata),
            }
        )
    summary = {"job": dataclasses.asdict(status), "tasks": tasks}
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
