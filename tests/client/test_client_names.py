"""The names of the wire's enums: every value of the proto's enums has exactly one
name, and each table is defined once (gradserve.names) across the SDK, the server
and the workers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gradserve import names
from gradserve.v1 import gradserve_pb2 as pb

ROOT = Path(names.__file__).resolve().parents[2]
SOURCES = [ROOT / "client/gradserve", ROOT / "server/gradserve_server", ROOT / "workers"]
TABLES = {
    "DType": (names.DTYPES, names.DTYPE_BY_NUMBER),
    "Op": (names.OPS, names.OP_BY_NUMBER),
    "CheckKind": (names.CHECK_KINDS, names.CHECK_KIND_BY_NUMBER),
    "JacobianMode": (names.JACOBIAN_MODES, names.JACOBIAN_MODE_BY_NUMBER),
    "ExecutionPath": (names.EXECUTION_PATHS, names.EXECUTION_PATH_BY_NUMBER),
    "JobState": (names.JOB_STATES, names.JOB_STATE_BY_NUMBER),
}
ENUM_PREFIXES = ("DTYPE_", "OP_", "CHECK_KIND_", "JACOBIAN_MODE_", "EXECUTION_PATH_", "JOB_STATE_")


@pytest.mark.parametrize("enum", sorted(TABLES))
def test_every_value_of_the_enum_has_one_name(enum: str) -> None:
    by_name, by_number = TABLES[enum]
    values = {
        v.number
        for v in pb.DESCRIPTOR.enum_types_by_name[enum].values
        if not v.name.endswith("_UNSPECIFIED")
    }
    assert set(by_name.values()) == values, f"{enum}: a value has no name (or two)"
    assert len(by_name) == len(values)
    assert {by_number[n]: n for n in by_number} == dict(by_name)


def test_claim_arguments_name_the_claimed_kinds() -> None:
    assert names.CLAIM_KINDS == {
        "grad": pb.CHECK_KIND_CLAIMED_GRAD,
        "jacobian": pb.CHECK_KIND_CLAIMED_JACOBIAN,
        "hessian": pb.CHECK_KIND_CLAIMED_HESSIAN,
    }
    assert set(names.JOB_STATES) > names.TERMINAL_STATES


def enum_refs(node: ast.AST) -> int:
    """How many ``pb.<ENUM>_<VALUE>`` constants (not UNSPECIFIED) a literal holds."""
    return sum(
        isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "pb"
        and n.attr.startswith(ENUM_PREFIXES)
        and not n.attr.endswith("_UNSPECIFIED")
        for n in ast.walk(node)
    )


def repeated_tables(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict | ast.Set | ast.Tuple | ast.List) and enum_refs(node) > 1:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_each_table_is_defined_once() -> None:
    """No literal mapping of several enum values outside gradserve.names (and wire.py's
    numpy dtypes, which the tensor codec needs)."""
    allowed = {"names.py", "wire.py"}
    found = [
        where
        for source in SOURCES
        for path in source.rglob("*.py")
        if path.name not in allowed and "_pb2" not in path.name
        for where in repeated_tables(path)
    ]
    assert not found, f"enum tables outside gradserve.names: {found}"
    assert repeated_tables(ROOT / "client/gradserve/names.py"), "the scan sees no table"


def test_the_retry_stream_key_is_defined_once() -> None:
    spelled = [
        path.relative_to(ROOT)
        for source in SOURCES
        for path in source.rglob("*.py")
        if '"gradserve-retry-stream"' in path.read_text()
    ]
    assert spelled == [Path("client/gradserve/errors.py")], spelled
