"""Where each node of a compiled function is in its source, kept apart from the code.

The compiler makes one `Where` per node it may report on, and its closures read the
fields when they run. A compiled body therefore serves every source with the same
syntax tree: whitespace, comments and parentheses change positions, never the
code. `Positions` records the nodes in `ast.walk` order, computes a source's own
positions in one linear pass, and installs them before a call (torch-free).
"""

from __future__ import annotations

import ast
import hashlib

from .errors import SourceLines

__all__ = ["Layout", "Positions", "Where", "syntax_key"]


def syntax_key(tree: ast.AST) -> str:
    """The same for two sources that differ only in layout (ast.dump omits positions)."""
    return hashlib.sha256(ast.dump(tree).encode("utf-8")).hexdigest()


class Where:
    """Position and source text of a node, computed once per source layout.

    Closures read these fields when they run (never copies of them): a compiled body
    serves every source with the same syntax tree (whitespace, comments and
    parentheses aside), and CompiledFunction installs its own source's positions
    here before it runs (see Positions).
    """

    __slots__ = ("column", "line", "quoted", "source_line", "text")

    def __init__(self, line: int, column: int, source_line: str, text: str) -> None:
        self.set(line, column, source_line, text)

    def set(self, line: int, column: int, source_line: str, text: str) -> None:
        self.line = line
        self.column = column
        self.source_line = source_line
        self.text = text
        self.quoted = f"`{text}`"


# Characters of a node's source text shown in messages.
TEXT_CHARS = 60


class Layout:
    """Positions and source text of nodes, each in time independent of the source's size.

    ast.get_source_segment splits the whole source on every call and
    SourceLines.column encodes the whole line: once per node, that made compiling
    a 20,000-character one-line function quadratic (12 s). Lines are encoded once
    here, and a node's text is read only as far as a message shows it.
    """

    def __init__(self, lines: SourceLines) -> None:
        self.lines = lines
        self._encoded: dict[int, bytes] = {}
        # lines with non-ASCII characters: byte offset -> 0-based character offset
        self._chars: dict[int, list[int]] = {}

    def _bytes(self, lineno: int) -> bytes:
        data = self._encoded.get(lineno)
        if data is None:
            text = self.lines.line(lineno)
            data = self._encoded[lineno] = text.encode("utf-8")
            if len(data) != len(text):
                chars: list[int] = []
                for index, char in enumerate(text):
                    chars.extend([index] * len(char.encode("utf-8")))
                chars.append(len(text))
                self._chars[lineno] = chars
        return data

    def position(self, node: ast.AST) -> tuple[int, int, str]:
        lineno = getattr(node, "lineno", None)
        col_offset = getattr(node, "col_offset", None)
        if not isinstance(lineno, int) or not isinstance(col_offset, int):
            return 1, 1, self.lines.line(1)
        data = self._bytes(lineno)
        chars = self._chars.get(lineno)
        column = col_offset if chars is None else chars[min(col_offset, len(data))]
        return lineno, column + 1, self.lines.line(lineno)

    def text(self, node: ast.AST) -> str:
        """The node's source, whitespace collapsed, cut to TEXT_CHARS characters."""
        lineno, end_lineno = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        start, end = getattr(node, "col_offset", None), getattr(node, "end_col_offset", None)
        if not all(isinstance(v, int) for v in (lineno, end_lineno, start, end)):
            raw, more = ast.unparse(node), False
        else:
            assert isinstance(lineno, int) and isinstance(end_lineno, int)
            assert isinstance(start, int) and isinstance(end, int)
            wanted = 4 * TEXT_CHARS  # bytes: enough for 60 characters after collapsing
            pieces: list[bytes] = []
            taken = 0
            more = False
            for number in range(lineno, end_lineno + 1):
                data = self._bytes(number)
                lo = start if number == lineno else 0
                hi = end if number == end_lineno else len(data)
                if taken + hi - lo > wanted:
                    pieces.append(data[lo : lo + wanted - taken])
                    more = True
                    break
                pieces.append(data[lo:hi])
                taken += hi - lo
            raw = b"\n".join(pieces).decode("utf-8", errors="ignore")
        text = " ".join(raw.split())
        if len(text) > TEXT_CHARS or more:
            text = text[: TEXT_CHARS - 3] + "..."
        return text


Table = list[tuple[int, int, str, str]]


class Positions:
    """The Where objects of one compiled body, and which layout they hold now."""

    def __init__(self, tree: ast.AST) -> None:
        nodes = list(ast.walk(tree))
        # (the context markers, ast.Load and ast.Store, are shared objects: counted
        # as walked, never recorded)
        self._order = {id(node): i for i, node in enumerate(nodes)}
        self._nodes = len(nodes)
        self.wheres: list[Where] = []
        self._indices: list[int] = []
        self.installed: Table | None = None

    def add(self, layout: Layout, node: ast.AST) -> Where:
        line, column, source_line = layout.position(node)
        where = Where(line, column, source_line, layout.text(node))
        self.wheres.append(where)
        self._indices.append(self._order[id(node)])
        return where

    def current(self) -> Table:
        """The positions the Where objects hold (the compiled source's, after compiling)."""
        table = [(w.line, w.column, w.source_line, w.text) for w in self.wheres]
        self.installed = table
        return table

    def table_for(self, source: str, tree: ast.AST) -> Table:
        """Positions of the same nodes in another source with the same syntax tree."""
        nodes = list(ast.walk(tree))
        if len(nodes) != self._nodes:
            raise ValueError("Positions.table_for: the syntax trees differ")
        layout = Layout(SourceLines(source))
        table = []
        for index in self._indices:
            node = nodes[index]
            table.append((*layout.position(node), layout.text(node)))
        return table

    def install(self, table: Table) -> None:
        if self.installed is table:
            return
        for where, row in zip(self.wheres, table, strict=True):
            where.set(*row)
        self.installed = table
