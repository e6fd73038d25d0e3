"""Parse source text with `ast`, and bound its size before anything walks it (torch-free).

Python's own errors become SpecError with the position Python reports and a hint;
sources too deep for the parser, too big or too deeply nested become
LimitExceededError. Size and depth are measured without recursion, so that the
validator and the compiler, which do recurse, only ever see bounded trees.
"""

from __future__ import annotations

import ast
import warnings

from .errors import LimitExceededError, SourceLines, SpecError
from .limits import Limits

__all__ = ["check_size", "parse_source"]

# Operator and load/store marker nodes carry no code of their own; counting them
# would make the node limit depend on how Python happens to model operators.
_MARKER_NODES = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)

# Fragments of CPython's messages for unbalanced brackets, which get a hint.
_BRACKET_MESSAGES = ("never closed", "unmatched", "does not match")


def parse_source(source: str, lines: SourceLines, limits: Limits) -> ast.Module:
    try:
        with warnings.catch_warnings():
            # The parser warns about things like `1if` on stderr; the language
            # reports what matters itself, and server logs need no noise.
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.parse(source, mode="exec")
    except SyntaxError as exc:
        line = exc.lineno or 1
        column = max(exc.offset or 1, 1)
        source_line = lines.line(line)
        msg = exc.msg or "invalid syntax"
        if "too many nested" in msg or "too many statically nested" in msg:
            raise LimitExceededError(
                f"the source is nested too deeply ({msg})",
                limit="max_depth",
                line=line,
                column=column,
                source_line=source_line,
                hint="split the expression into several assignments",
            ) from None
        if "Exceeds the limit" in msg:
            raise LimitExceededError(
                "integer literal is too long",
                limit="max_int",
                line=line,
                column=column,
                source_line=source_line,
                hint="write large numbers as floats, e.g. 1e30",
            ) from None
        if "indent" in msg and "unexpected indent" not in msg and "expected an indented" not in msg:
            hint = "indent this line like the lines of the block it belongs to"
        elif any(m in msg for m in _BRACKET_MESSAGES):
            hint = "check that every ( and [ is closed by the matching ) or ], in the right order"
        elif "unexpected indent" in msg:
            hint = "remove the extra indentation at the start of this line"
        elif "expected an indented block" in msg:
            hint = "indent the body of the def, if, while or for by 4 spaces"
        else:
            hint = "the language is a small subset of Python; see docs/language.md"
        raise SpecError(f"syntax error: {msg}", line, column, source_line, hint) from None
    except (RecursionError, MemoryError):
        # CPython's parser gives up on very deep nesting like -(-(-(...))) this way.
        raise LimitExceededError(
            "the source is nested too deeply to parse",
            limit="max_depth",
            line=1,
            column=1,
            source_line=lines.line(1),
            hint="split the expression into several assignments",
        ) from None
    except ValueError as exc:
        raise SpecError(f"the source cannot be parsed: {exc}", 1, 1, lines.line(1)) from None


def check_size(tree: ast.Module, lines: SourceLines, limits: Limits) -> None:
    """Bound node count and nesting depth without recursion (the tree may be deep)."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, _MARKER_NODES):
            continue
        count += 1
        if count > limits.max_nodes:
            line, column, text = lines.position(node)
            raise LimitExceededError(
                f"the function has more than {limits.max_nodes} syntax nodes",
                limit="max_nodes",
                line=line,
                column=column,
                source_line=text,
                hint="write it shorter, e.g. with vectorised functions or loops",
            )
        if depth > limits.max_depth:
            line, column, text = lines.position(node)
            raise LimitExceededError(
                f"the function is nested more than {limits.max_depth} levels deep",
                limit="max_depth",
                line=line,
                column=column,
                source_line=text,
                hint="split the expression into several assignments",
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
