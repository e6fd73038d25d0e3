"""The checks of statement nodes (in a def): assignments and their targets, if,
while, for over range(), return, break/continue; and the names each path may have
assigned, so that a use before assignment is refused."""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from typing import Any

from .check_expressions import ExpressionChecks
from .checker import assigned_names
from .errors import SourceLines
from .limits import Limits
from .table import CONSTANTS, FUNCTIONS


class StatementChecks(ExpressionChecks):
    """The statement handlers, one per allowed node type (``stmt_handlers``); a node
    type without one is refused."""

    def __init__(
        self, source: str, lines: SourceLines, limits: Limits, known: Sequence[str] | None
    ) -> None:
        super().__init__(source, lines, limits, known)
        self.stmt_handlers: dict[type[ast.AST], Callable[[Any], None]] = {
            ast.Assign: self._assign,
            ast.AugAssign: self._augassign,
            ast.If: self._if,
            ast.While: self._while,
            ast.For: self._for,
            ast.Return: self._return,
            ast.Pass: self._pass,
            ast.Break: self._loop_jump,
            ast.Continue: self._loop_jump,
            ast.Expr: self._expr_stmt,
        }

    def block(self, stmts: Sequence[ast.stmt]) -> None:
        for stmt in stmts:
            handler = self.stmt_handlers.get(type(stmt))
            if handler is None:
                if isinstance(stmt, ast.FunctionDef):
                    raise self.error(
                        stmt,
                        "nested functions are not allowed",
                        "write the helper's code inline in the one def",
                    )
                raise self.refuse(stmt)
            handler(stmt)

    def _assign(self, node: ast.Assign) -> None:
        self.expr(node.value)
        for target in node.targets:
            self._target(target)

    def _target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self._check_assignable(target, target.id, what="variable")
            self.possible.add(target.id)
        elif isinstance(target, ast.Tuple):
            for element in target.elts:
                self._target(element)
        elif isinstance(target, ast.List):
            raise self.error(target, "write a tuple on the left: a, b = ...")
        elif isinstance(target, ast.Subscript):
            raise self.error(
                target,
                "item assignment is not allowed: tensors cannot be changed in place",
                "build a new tensor, e.g. with where(...), cat(...) or stack(...)",
            )
        elif isinstance(target, ast.Attribute):
            raise self._attribute_error(target, is_call=False)
        elif isinstance(target, ast.Starred):
            raise self.refuse(target)
        else:
            raise self.error(target, "this cannot be assigned to; assign to a name: y = ...")

    def _check_assignable(self, node: ast.AST, name: str, what: str) -> None:
        if name.startswith("_"):
            raise self.error(
                node, f"names starting with `_` are not allowed (`{name}`)", "rename it"
            )
        if name in FUNCTIONS or name in CONSTANTS or name == "range":
            kind = "constant" if name in CONSTANTS else "function"
            raise self.error(
                node,
                f"`{name}` is a built-in {kind} and cannot be used as a {what} name",
                "choose another name",
            )

    def _augassign(self, node: ast.AugAssign) -> None:
        self._operator(node, node.op)
        if not isinstance(node.target, ast.Name):
            self._target(node.target)  # raises the right refusal
            raise self.error(node.target, "augmented assignment needs a name: y += ...")
        self._load_name(node.target)
        self.expr(node.value)
        self._check_assignable(node.target, node.target.id, what="variable")

    def _if(self, node: ast.If) -> None:
        self.expr(node.test)
        before = set(self.possible)
        self.block(node.body)
        after_body = self.possible
        self.possible = before
        self.block(node.orelse)
        self.possible |= after_body

    def _loop_body(self, body: Sequence[ast.stmt]) -> None:
        self.loop_depth += 1
        self.block(body)
        self.loop_depth -= 1

    def _while(self, node: ast.While) -> None:
        if node.orelse:
            raise self.error(node.orelse[0], "while ... else is not allowed")
        # A later iteration can see what an earlier one assigned.
        self.possible |= assigned_names(node.body)
        self.expr(node.test)
        self._loop_body(node.body)

    def _for(self, node: ast.For) -> None:
        if node.orelse:
            raise self.error(node.orelse[0], "for ... else is not allowed")
        if node.type_comment:
            raise self.error(node, "type comments are not allowed")
        iterator = node.iter
        if not (
            isinstance(iterator, ast.Call)
            and isinstance(iterator.func, ast.Name)
            and iterator.func.id == "range"
        ):
            raise self.error(
                iterator,
                "only `for i in range(n)` loops are allowed",
                "loop over indexes: for i in range(len(x)): ... x[i] ...",
            )
        if iterator.keywords or not 1 <= len(iterator.args) <= 3:
            raise self.error(
                iterator,
                "range() takes 1 to 3 positional arguments: range(n), range(a, b), "
                "range(a, b, step)",
            )
        for arg in iterator.args:
            if isinstance(arg, ast.Starred):
                raise self.refuse(arg)
            self.expr(arg)
        if not isinstance(node.target, ast.Name):
            raise self.error(
                node.target, "the loop variable must be a single name: for i in range(n)"
            )
        self._target(node.target)
        self.possible |= assigned_names(node.body)
        self._loop_body(node.body)

    def _return(self, node: ast.Return) -> None:
        if node.value is None:
            raise self.error(node, "return needs a value: return y")
        self.expr(node.value)

    def _pass(self, node: ast.Pass) -> None:
        return None

    def _loop_jump(self, node: ast.Break | ast.Continue) -> None:
        if self.loop_depth == 0:
            word = "break" if isinstance(node, ast.Break) else "continue"
            raise self.error(node, f"`{word}` outside of a loop")

    def _expr_stmt(self, node: ast.Expr) -> None:
        self.expr(node.value)
        raise self.error(
            node,
            "this expression is computed and then thrown away",
            "assign it (y = ...) or return it (return ...)",
        )

    # -- expressions ----------------------------------------------------------------
