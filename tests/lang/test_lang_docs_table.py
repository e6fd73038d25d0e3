"""docs/language.md lists exactly the language's constructs, functions and limits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gradserve_workers.lang import (
    CONSTANTS,
    CONSTRUCTS,
    FUNCTIONS,
    Limits,
    compile_function,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "language.md"

SAMPLES = {
    "x": torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64),
    "y": torch.tensor([1.5, 0.7, -0.4], dtype=torch.float64),
    "a": torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64),
    "A": torch.tensor([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]], dtype=torch.float64),
    "B": torch.tensor(
        [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.5]], dtype=torch.float64
    ),
}


def section(title: str) -> list[str]:
    """The lines of one `## title` section."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def table_rows(title: str) -> list[list[str]]:
    rows = []
    for line in section(title):
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def code(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), cell
    return cell[1:-1]


def test_functions_listed_are_exactly_the_table() -> None:
    rows = table_rows("Functions")
    names = [code(row[0]) for row in rows]
    assert len(names) == len(set(names)), "a function is listed twice"
    assert set(names) == set(FUNCTIONS)
    for row in rows:
        spec = FUNCTIONS[code(row[0])]
        assert code(row[1]) == spec.signature
        assert code(row[2]) == spec.example


def test_constructs_listed_are_exactly_the_table() -> None:
    names = [code(row[0]) for row in table_rows("Constructs")]
    assert len(names) == len(set(names))
    assert set(names) == set(CONSTRUCTS)


def test_constants_are_documented() -> None:
    row = next(r for r in table_rows("Constructs") if code(r[0]) == "constants")
    for name in CONSTANTS:
        assert f"`{name}`" in row[1]


def test_limits_listed_are_exactly_the_limits() -> None:
    names = {code(row[0]) for row in table_rows("Limits")}
    assert names == {f.name for f in dataclasses.fields(Limits)}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_examples_run(name: str) -> None:
    fn = compile_function(FUNCTIONS[name].example)
    result = fn(*(SAMPLES[n] for n in fn.inputs))
    assert isinstance(result, torch.Tensor)


def code_blocks() -> list[str]:
    blocks: list[str] = []
    current: list[str] = []
    inside = False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```python"):
            inside, current = True, []
        elif line.startswith("```") and inside:
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_doc_has_code_examples() -> None:
    assert len(code_blocks()) >= 2


@pytest.mark.parametrize("source", code_blocks())
def test_code_examples_run(source: str) -> None:
    fn = compile_function(source)
    result = fn(*(SAMPLES[n] for n in fn.inputs))
    assert torch.isfinite(result).all()
