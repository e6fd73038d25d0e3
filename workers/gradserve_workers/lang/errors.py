"""The errors of the function language.

Every error carries a human message and, where one is known, the 1-based line and
column of the offending source, so that the server can show the line with a caret
under the column. The classes map one to one onto gRPC codes in the server:
SpecError -> INVALID_ARGUMENT, LimitExceededError -> RESOURCE_EXHAUSTED,
FunctionRuntimeError -> INVALID_ARGUMENT (the function failed on the given inputs).
DataDependentControlFlow is not meant for users: the worker catches it and falls
back from vmap to a per-point loop.
"""

from __future__ import annotations

import ast

__all__ = [
    "DataDependentControlFlow",
    "FunctionRuntimeError",
    "LangError",
    "LimitExceededError",
    "SourceLines",
    "SpecError",
]


class SourceLines:
    """The lines of a source text, and ast positions converted to 1-based columns.

    `ast` reports col_offset in UTF-8 bytes; people count characters, so every
    column shown to a user goes through `column()`.
    """

    def __init__(self, source: str) -> None:
        # Split only on the newlines the tokenizer knows: str.splitlines() also
        # splits on form feeds and U+2028, which would shift every later line.
        self.lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    def line(self, lineno: int) -> str:
        if 1 <= lineno <= len(self.lines):
            return self.lines[lineno - 1]
        return ""

    def column(self, lineno: int, col_offset: int) -> int:
        text = self.line(lineno).encode("utf-8")[:col_offset]
        return len(text.decode("utf-8", errors="ignore")) + 1

    def position(self, node: ast.AST) -> tuple[int, int, str]:
        """(line, column, source line) of a node; (1, 1, first line) if it has none."""
        lineno = getattr(node, "lineno", None)
        col_offset = getattr(node, "col_offset", None)
        if not isinstance(lineno, int) or not isinstance(col_offset, int):
            return 1, 1, self.line(1)
        return lineno, self.column(lineno, col_offset), self.line(lineno)


_WINDOW = 100


def _window(source_line: str, column: int) -> tuple[str, int]:
    """A long line cut to the part around the column (sources can be one 20,000-char line)."""
    if len(source_line) <= _WINDOW:
        return source_line, column
    start = max(0, min(column - 1 - _WINDOW // 2, len(source_line) - _WINDOW))
    text = source_line[start : start + _WINDOW]
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + _WINDOW < len(source_line) else ""
    return prefix + text + suffix, column - start + len(prefix)


def _caret_line(source_line: str, column: int) -> str:
    # Keep tabs from the source so the caret lines up under the same character.
    prefix = "".join("\t" if ch == "\t" else " " for ch in source_line[: max(column - 1, 0)])
    return prefix + "^"


class LangError(Exception):
    """Base class of all errors of the function language."""

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        source_line: str = "",
        hint: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.source_line = source_line
        self.hint = hint

    def locate(self, line: int, column: int, source_line: str) -> None:
        """Fill in a position if the error does not know one yet (raised deep in a helper)."""
        if self.line is None:
            self.line = line
            self.column = column
            self.source_line = source_line

    def __str__(self) -> str:
        parts: list[str] = []
        if self.line is not None and self.column is not None:
            parts.append(f"line {self.line}, column {self.column}: {self.message}")
            if self.source_line.strip():
                shown, column = _window(self.source_line, self.column)
                parts.append("    " + shown)
                parts.append("    " + _caret_line(shown, column))
        else:
            parts.append(self.message)
        if self.hint:
            parts.append(self.hint)
        return "\n".join(parts)

    def __reduce__(self) -> tuple[object, ...]:
        # Keep all attributes when the error crosses a process boundary (Ray pickles it).
        return (_rebuild, (type(self), dict(self.__dict__)))


def _rebuild(cls: type[LangError], state: dict[str, object]) -> LangError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class SpecError(LangError):
    """The function is not a valid program of the language (INVALID_ARGUMENT).

    Always has a position: line and column are 1-based; (1, 1) when nothing better is known.
    """

    line: int
    column: int

    def __init__(
        self,
        message: str,
        line: int = 1,
        column: int = 1,
        source_line: str = "",
        hint: str = "",
    ) -> None:
        super().__init__(message, line, column, source_line, hint)


class LimitExceededError(LangError):
    """A limit was hit, statically or while running (RESOURCE_EXHAUSTED).

    `limit` names the field of `Limits` that was exceeded.
    """

    def __init__(
        self,
        message: str,
        limit: str,
        line: int | None = None,
        column: int | None = None,
        source_line: str = "",
        hint: str = "",
    ) -> None:
        super().__init__(message, line, column, source_line, hint)
        self.limit = limit


class FunctionRuntimeError(LangError):
    """Evaluating the function failed on the given inputs (shape mismatch, singular matrix...).

    The message names the failing expression, e.g.
    "matmul(A, x): shapes (3, 4) and (5,) cannot be multiplied".
    """


class DataDependentControlFlow(LangError):
    """A condition needs the value of a tensor while running under torch.func.vmap.

    Not a user error: the caller catches it and evaluates the points one by one.
    """
