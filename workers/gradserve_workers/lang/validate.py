"""Parse and validate a function of the language (torch-free).

The gRPC server calls `parse_and_validate` on the request path to refuse bad
functions before any work is scheduled, so this module must never import torch.

Validation is an allow-list: the source is parsed with `ast`, its size and depth
are bounded, and then every node is checked by the handler registered for its
type; a node type without a handler is refused (fail closed). Names are resolved
statically (inputs, locals assigned on some path before the use, constants,
functions), calls are checked against the function table (arity, keywords), and
constant sub-expressions are folded with bounded integers so that `9**9**9` or
`zeros(10**10)` is refused here, before it reaches a worker.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from .check_statements import StatementChecks
from .checker import Kind, always_returns, assigned_names, without_docstring
from .errors import LimitExceededError, SourceLines, SpecError
from .limits import Limits
from .parse import check_size, parse_source
from .table import CONSTANTS, EXPRESSION_NODES, FUNCTIONS, REFUSED_NODES, STATEMENT_NODES

__all__ = ["Program", "parse_and_validate"]


@dataclass(frozen=True, eq=False)
class Program:
    """A validated function: what the compiler needs, and what the server reports.

    inputs: the def's parameters in order, or the free names of an expression in
    order of first appearance (or `known_inputs` when given for an expression).
    tree: the parsed module; `node` is its expression or its FunctionDef.
    """

    source: str
    inputs: tuple[str, ...]
    kind: Kind
    source_hash: str
    tree: ast.Module
    name: str | None
    limits: Limits

    @property
    def node(self) -> ast.expr | ast.FunctionDef:
        stmt = self.tree.body[0]
        if isinstance(stmt, ast.Expr):
            return stmt.value
        assert isinstance(stmt, ast.FunctionDef)
        return stmt


class _Validator(StatementChecks):
    """One validation run: the program's form (one expression, or one def and its
    parameters) over the statement and expression checks."""

    def program(self, tree: ast.Module) -> tuple[Kind, tuple[str, ...], str | None]:
        body = tree.body
        if not body:
            raise SpecError(
                "the function is empty",
                1,
                1,
                self.lines.line(1),
                "write an expression such as sum(x ** 2), or a def f(x): ... with a return",
            )
        first = body[0]
        for stmt in body:
            if type(stmt) in REFUSED_NODES:
                raise self.refuse(stmt)
        if len(body) == 1 and isinstance(first, ast.Expr):
            self.kind = "expression"
            self.expr(first.value)
            return "expression", self._expression_inputs(), None
        if len(body) == 1 and isinstance(first, ast.FunctionDef):
            self.kind = "function"
            return "function", self._function(first), first.name
        if not isinstance(first, ast.FunctionDef | ast.Expr):
            raise self.error(
                first,
                "only one expression or one `def` can stand at the top level",
                "put statements inside def f(x): ... and end it with return",
            )
        raise self.error(
            body[1],
            "write either one expression or one `def`: this line is outside of it",
            "put assignments and other statements inside the def, before its return",
        )

    def _expression_inputs(self) -> tuple[str, ...]:
        order = tuple(sorted(self.free, key=lambda n: self.free[n]))
        if self.known is None:
            return order
        return self.known

    def _check_known(self) -> None:
        for name in self.known or ():
            if not name.isidentifier() or name.startswith("_"):
                raise SpecError(f"`{name}` is not a valid input name", 1, 1, self.lines.line(1))
            if name in FUNCTIONS or name in CONSTANTS:
                raise SpecError(
                    f"the input name `{name}` is taken by a built-in {self._what(name)}",
                    1,
                    1,
                    self.lines.line(1),
                    "rename the input",
                )

    @staticmethod
    def _what(name: str) -> str:
        return "function" if name in FUNCTIONS else "constant"

    def _function(self, node: ast.FunctionDef) -> tuple[str, ...]:
        self.def_name = node.name
        if node.decorator_list:
            raise self.error(node.decorator_list[0], "decorators are not allowed; remove the @...")
        if node.returns is not None:
            raise self.error(
                node.returns, "type annotations are not allowed", "write def f(x): without -> ..."
            )
        args = node.args
        if args.posonlyargs or args.kwonlyargs:
            bad = (args.posonlyargs or args.kwonlyargs)[0]
            raise self.error(bad, "only plain parameters are allowed", "write def f(x, y):")
        if args.vararg is not None or args.kwarg is not None:
            bad_arg = args.vararg or args.kwarg
            assert bad_arg is not None
            raise self.error(
                bad_arg,
                "*args and **kwargs are not allowed; list the inputs",
                "write def f(x, y):",
            )
        if args.defaults:
            raise self.error(
                args.defaults[0],
                "default values are not allowed: every parameter is an input",
                "remove `= ...`; write a constant inside the function instead",
            )
        params: list[str] = []
        for arg in args.args:
            if arg.annotation is not None:
                raise self.error(
                    arg.annotation,
                    "type annotations are not allowed",
                    f"write `{arg.arg}` without `: ...`",
                )
            self._check_assignable(arg, arg.arg, what="parameter")
            if arg.arg in params:
                raise self.error(arg, f"parameter `{arg.arg}` appears twice")
            params.append(arg.arg)
        if self.known is not None and set(self.known) != set(params):
            raise self.error(
                node,
                f"the function's parameters ({', '.join(params)}) do not match the declared "
                f"inputs ({', '.join(self.known)})",
                "name the parameters like the inputs",
            )
        body = without_docstring(node.body)
        self.possible = set(params)
        self.assigned_anywhere = assigned_names(body) | set(params)
        self.block(body)
        if not always_returns(body):
            has_return = any(isinstance(n, ast.Return) for n in ast.walk(node))
            last = node.body[-1]
            end_line = node.end_lineno or last.lineno
            message = (
                f"function `{node.name}` can reach its end without returning a value"
                if has_return
                else f"function `{node.name}` never returns a value"
            )
            raise SpecError(
                message,
                end_line,
                self.lines.column(node.body[0].lineno, node.body[0].col_offset),
                self.lines.line(end_line),
                "add `return <value>` as the last line; every path through if/else must "
                "end with a return",
            )
        return tuple(params)

    # -- statements -----------------------------------------------------------------


def parse_and_validate(
    source: str,
    limits: Limits = Limits(),  # frozen: sharing the default is safe
    *,
    known_inputs: Sequence[str] | None = None,
) -> Program:
    """Parse and check a function; raise SpecError or LimitExceededError if it is refused.

    known_inputs: the input names a request declares. For an expression they become
    the inputs (in that order; a free name outside them is an error); for a def they
    must be its parameters (the inputs stay in parameter order).
    """
    if not isinstance(source, str):
        raise SpecError("the function must be given as source text (a string)")
    from .. import registry

    if registry.reference(source) is not None:  # "@NAME": a registered function
        return registry.program(source, limits, known_inputs)  # type: ignore[no-any-return]
    lines = SourceLines(source)
    if len(source) > limits.max_source_chars:
        raise LimitExceededError(
            f"the function has {len(source)} characters, more than the limit of "
            f"{limits.max_source_chars}",
            limit="max_source_chars",
        )
    if not source.strip():
        raise SpecError(
            "the function is empty",
            hint="write an expression such as sum(x ** 2), or a def f(x): ... with a return",
        )
    tree = parse_source(source, lines, limits)
    check_size(tree, lines, limits)
    validator = _Validator(source, lines, limits, known_inputs)
    validator._check_known()
    kind, inputs, name = validator.program(tree)
    return Program(
        source=source,
        inputs=inputs,
        kind=kind,
        source_hash=hashlib.sha256(source.encode("utf-8")).hexdigest(),
        tree=tree,
        name=name,
        limits=limits,
    )


def _check_tables() -> None:
    """The node handlers must cover exactly the allow-list of table.py.

    Checked at import, so that adding a node type in one place and not the other
    fails loudly instead of silently refusing (or accepting) something.
    """
    probe = _Validator("", SourceLines(""), Limits(), None)
    assert set(probe.expr_handlers) | {ast.Slice} == set(EXPRESSION_NODES)
    assert set(probe.stmt_handlers) | {ast.FunctionDef} == set(STATEMENT_NODES)


_check_tables()
