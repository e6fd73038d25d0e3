"""Job files are checked before anything is sent, with the key and task at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradserve import jobspec

TASK = 'tasks:\n  - function: "sum(x)"\n    inputs: {x: %s}\n    %s: [grad]\n'


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return jobspec.load(str(path))


def test_misspelt_key_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(jobspec.JobSpecError, match=r"task 0.*did you mean 'ops'"):
        _load(
            tmp_path, 'tasks:\n  - function: "sum(x)"\n    inputs: {x: [1, 2]}\n    opps: [grad]\n'
        )


def test_unknown_distribution_is_named(tmp_path: Path) -> None:
    text = TASK % ("{sample: {dist: gauss}}", "ops")
    with pytest.raises(jobspec.JobSpecError, match="uniform or normal, not 'gauss'"):
        _load(tmp_path, text)


def test_a_valid_file_becomes_one_task_per_entry(tmp_path: Path) -> None:
    req = _load(
        tmp_path, 'tasks:\n  - function: "sum(x)"\n    inputs: {x: [1, 2]}\n    ops: [grad]\n'
    )
    assert len(req.tasks) == 1 and req.tasks[0].function == "sum(x)"  # type: ignore[attr-defined]
