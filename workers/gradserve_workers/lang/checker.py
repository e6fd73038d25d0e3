"""One validation run's state, positions and refusals, and the helpers on syntax trees
that the node checks share (torch-free, like all of validation)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from typing import Literal

from .errors import SourceLines, SpecError
from .limits import Limits
from .table import REFUSED_NODES

Kind = Literal["expression", "function"]


class _Unknown:
    """A value the validator cannot fold (depends on inputs)."""


UNKNOWN = _Unknown()


def dotted(node: ast.expr) -> str | None:
    """`np.linalg` -> "np.linalg"; None when the chain does not start at a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def assigned_names(stmts: Iterable[ast.stmt]) -> set[str]:
    """Every name a block may assign (targets of =, op=, and for loop variables)."""
    names: set[str] = set()
    for stmt in stmts:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def always_returns(stmts: Sequence[ast.stmt]) -> bool:
    for stmt in stmts:
        if isinstance(stmt, ast.Return):
            return True
        if isinstance(stmt, ast.If) and always_returns(stmt.body) and always_returns(stmt.orelse):
            return True
    return False


def without_docstring(stmts: list[ast.stmt]) -> list[ast.stmt]:
    """A def's body less its docstring, which is allowed and ignored."""
    if (
        stmts
        and isinstance(stmts[0], ast.Expr)
        and isinstance(stmts[0].value, ast.Constant)
        and isinstance(stmts[0].value.value, str)
    ):
        return stmts[1:]
    return stmts


class Checker:
    """The state of one validation run and its error helpers; the node checks are in
    :mod:`.check_expressions` and :mod:`.check_statements`."""

    def __init__(
        self, source: str, lines: SourceLines, limits: Limits, known: Sequence[str] | None
    ) -> None:
        self.source = source
        self.lines = lines
        self.limits = limits
        self.known = tuple(known) if known is not None else None
        self.kind: Kind = "expression"
        self.def_name: str | None = None
        # Function form: names that may hold a value at the current point.
        self.possible: set[str] = set()
        self.assigned_anywhere: set[str] = set()
        # Expression form: free names with the position of their first appearance.
        self.free: dict[str, tuple[int, int]] = {}
        self.loop_depth = 0

    # -- errors ---------------------------------------------------------------------

    def error(self, node: ast.AST, message: str, hint: str = "") -> SpecError:
        line, column, text = self.lines.position(node)
        return SpecError(message, line, column, text, hint)

    def error_at(self, line: int, col_offset: int, message: str, hint: str = "") -> SpecError:
        return SpecError(
            message, line, self.lines.column(line, col_offset), self.lines.line(line), hint
        )

    def text(self, node: ast.AST, limit: int = 60) -> str:
        segment = ast.get_source_segment(self.source, node) or ast.unparse(node)
        segment = " ".join(segment.split())
        return segment if len(segment) <= limit else segment[: limit - 3] + "..."

    def refuse(self, node: ast.AST) -> SpecError:
        message = REFUSED_NODES.get(type(node))
        if message is not None:
            return self.error(node, message)
        return self.error(node, f"`{type(node).__name__}` is not allowed in the language")
