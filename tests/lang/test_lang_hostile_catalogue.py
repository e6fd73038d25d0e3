"""Every hostile input fails with exactly the expected error class, fast and harmlessly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
import torch
from hostile_catalogue import CATALOGUE

from gradserve_workers.lang import (
    LangError,
    compile_program,
    parse_and_validate,
)

CLASSES = {"SpecError", "LimitExceededError", "FunctionRuntimeError"}


def outcome(source: str) -> tuple[LangError | None, str]:
    """The error of validating, or else of calling with (3,) float64 inputs."""
    try:
        program = parse_and_validate(source)
    except LangError as exc:
        return exc, "validate"
    fn = compile_program(program)
    inputs = [torch.linspace(0.5, 1.5, 3, dtype=torch.float64) for _ in program.inputs]
    try:
        fn(*inputs)
    except LangError as exc:
        return exc, "run"
    return None, "run"


def test_catalogue_is_large_and_well_formed() -> None:
    assert len(CATALOGUE) >= 100
    ids = [entry[0] for entry in CATALOGUE]
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert {entry[2] for entry in CATALOGUE} <= CLASSES


@pytest.mark.parametrize(
    ("source", "expected"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE]
)
def test_hostile_input_fails_cleanly(
    source: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    start = time.perf_counter()
    error, stage = outcome(source)
    elapsed = time.perf_counter() - start
    assert error is not None, "the hostile input ran without an error"
    assert type(error).__name__ == expected, f"{stage}: {type(error).__name__}: {error}"
    assert elapsed < 3.0, f"took {elapsed:.2f} s"
    # The error can be shown to a user: a message, and a position for spec errors.
    assert error.message
    str(error)
    if expected == "SpecError":
        assert stage == "validate"
        assert error.line is not None and error.line >= 1
        assert error.column is not None and error.column >= 1
    assert os.listdir(tmp_path) == [], "a file was created"
    children_after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert children_after <= children_before, "a process was started"


def test_power_tower_is_instant() -> None:
    start = time.perf_counter()
    error, stage = outcome("9**9**9")
    assert type(error).__name__ == "LimitExceededError" and stage == "validate"
    assert time.perf_counter() - start < 0.5
