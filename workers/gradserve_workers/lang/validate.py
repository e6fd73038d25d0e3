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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import scalars, sizes
from .errors import FunctionRuntimeError, LimitExceededError, SourceLines, SpecError
from .hints import ALIASES, KEYWORD_ALIASES, MODULE_NAMES, suggest
from .limits import Limits
from .parse import check_size, parse_source
from .table import (
    BINARY_OPERATORS,
    COMPARE_OPERATORS,
    CONSTANTS,
    EXPRESSION_NODES,
    FUNCTIONS,
    REFUSED_NODES,
    REFUSED_OPERATORS,
    STATEMENT_NODES,
    UNARY_OPERATORS,
)

__all__ = ["Program", "parse_and_validate"]

Kind = Literal["expression", "function"]


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


class _Unknown:
    """A value the validator cannot fold (depends on inputs)."""


UNKNOWN = _Unknown()

# Every accepted operator type -> its symbol, for messages and for constant folding.
_SYMBOLS: dict[type[ast.AST], str] = {}
for _table in (BINARY_OPERATORS, UNARY_OPERATORS, COMPARE_OPERATORS):
    _SYMBOLS.update((op, symbol) for op, symbol in _table.items())


def _dotted(node: ast.expr) -> str | None:
    """`np.linalg` -> "np.linalg"; None when the chain does not start at a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _assigned_names(stmts: Iterable[ast.stmt]) -> set[str]:
    """Every name a block may assign (targets of =, op=, and for loop variables)."""
    names: set[str] = set()
    for stmt in stmts:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def _always_returns(stmts: Sequence[ast.stmt]) -> bool:
    for stmt in stmts:
        if isinstance(stmt, ast.Return):
            return True
        if isinstance(stmt, ast.If) and _always_returns(stmt.body) and _always_returns(stmt.orelse):
            return True
    return False


class _Validator:
    """One validation run: position helpers, the node handlers, and name resolution."""

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
        self.expr_handlers: dict[type[ast.AST], Callable[[Any], object]] = {
            ast.Constant: self._constant,
            ast.Name: self._name,
            ast.BinOp: self._binop,
            ast.UnaryOp: self._unaryop,
            ast.BoolOp: self._boolop,
            ast.Compare: self._compare,
            ast.IfExp: self._ifexp,
            ast.Call: self._call,
            ast.Attribute: self._attribute,
            ast.Subscript: self._subscript,
            ast.Tuple: self._tuple,
        }
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

    # -- program forms --------------------------------------------------------------

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
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body = body[1:]  # a docstring: allowed, and ignored
        self.possible = set(params)
        self.assigned_anywhere = _assigned_names(body) | set(params)
        self.block(body)
        if not _always_returns(body):
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
        self.possible |= _assigned_names(node.body)
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
        self.possible |= _assigned_names(node.body)
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

    def expr(self, node: ast.expr) -> object:
        """Check an expression; return its folded value, or UNKNOWN."""
        handler = self.expr_handlers.get(type(node))
        if handler is None:
            if isinstance(node, ast.Slice):
                raise self.error(node, "a slice is only allowed inside [ ]")
            raise self.refuse(node)
        return handler(node)

    def _constant(self, node: ast.Constant) -> object:
        value = node.value
        if isinstance(value, bool | int | float):
            if isinstance(value, int) and not isinstance(value, bool):
                try:
                    scalars.check_int(value, self.limits.max_int)
                except LimitExceededError as exc:
                    exc.locate(*self.lines.position(node))
                    raise
            return value
        if isinstance(value, str):
            raise self.error(
                node, "strings are not allowed: the language has numbers and tensors only"
            )
        if isinstance(value, bytes):
            raise self.error(
                node, "bytes are not allowed: the language has numbers and tensors only"
            )
        if isinstance(value, complex):
            raise self.error(node, "complex numbers are not allowed")
        if value is None:
            raise self.error(node, "None is not allowed", "use a number, e.g. 0")
        if value is Ellipsis:
            raise self.error(node, "`...` is not allowed", "write the slices out: A[:, 0]")
        raise self.error(node, f"the literal {value!r} is not allowed")

    def _name(self, node: ast.Name) -> object:
        if not isinstance(node.ctx, ast.Load):
            raise self.error(node, "this name cannot be assigned here")
        return self._load_name(node)

    def _load_name(self, node: ast.Name) -> object:
        name = node.id
        if name.startswith("_"):
            raise self.error(
                node,
                f"names starting with `_` are not allowed (`{name}`)",
                "the language has no access to Python internals",
            )
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in FUNCTIONS:
            raise self.error(
                node,
                f"`{name}` is a function; call it",
                f"write {FUNCTIONS[name].signature}",
            )
        if name == "range":
            raise self.error(node, "range can only be used as `for i in range(n):`")
        if self.kind == "expression":
            if self.known is not None and name not in self.known:
                raise self.error(
                    node,
                    f"undefined name `{name}`: it is not one of the inputs "
                    f"({', '.join(self.known) or 'none'})",
                    suggest(name, (*self.known, *FUNCTIONS, *CONSTANTS)),
                )
            position = (node.lineno, node.col_offset)
            if name not in self.free or position < self.free[name]:
                self.free[name] = position
            return UNKNOWN
        if name in self.possible:
            return UNKNOWN
        if name == self.def_name:
            raise self.error(
                node,
                f"`{name}` is the function being defined; it cannot be used inside itself",
                "recursion is not allowed; write a loop",
            )
        if name in self.assigned_anywhere:
            raise self.error(
                node,
                f"`{name}` is used before it is assigned",
                f"assign `{name} = ...` before this line",
            )
        raise self.error(
            node,
            f"undefined name `{name}`",
            suggest(name, (*self.possible, *FUNCTIONS, *CONSTANTS))
            or "inputs are the parameters of the def; assign other names before using them",
        )

    def _operator(self, node: ast.AST, op: ast.AST) -> str:
        refused = REFUSED_OPERATORS.get(type(op))
        if refused is not None:
            raise self.error(node, refused[1])
        symbol = _SYMBOLS.get(type(op))
        if symbol is not None:
            return symbol
        raise self.error(node, f"the operator {type(op).__name__} is not allowed")

    def _fold(self, node: ast.AST, compute: Callable[[], scalars.Number]) -> object:
        try:
            return compute()
        except LimitExceededError as exc:
            exc.locate(*self.lines.position(node))
            raise
        except FunctionRuntimeError:
            return UNKNOWN  # e.g. 1 / 0: reported when it runs, with its position

    def _binop(self, node: ast.BinOp) -> object:
        symbol = self._operator(node, node.op)
        left = self.expr(node.left)
        right = self.expr(node.right)
        if scalars.is_number(left) and scalars.is_number(right):
            assert isinstance(left, int | float) and isinstance(right, int | float)
            return self._fold(
                node, lambda: scalars.binary(symbol, left, right, self.limits.max_int)
            )
        return UNKNOWN

    def _unaryop(self, node: ast.UnaryOp) -> object:
        symbol = self._operator(node, node.op)
        operand = self.expr(node.operand)
        if isinstance(operand, int | float):
            return self._fold(node, lambda: scalars.unary(symbol, operand, self.limits.max_int))
        return UNKNOWN

    def _boolop(self, node: ast.BoolOp) -> object:
        for value in node.values:
            self.expr(value)
        return UNKNOWN

    def _compare(self, node: ast.Compare) -> object:
        for op in node.ops:
            self._operator(node, op)
        self.expr(node.left)
        for comparator in node.comparators:
            self.expr(comparator)
        return UNKNOWN

    def _ifexp(self, node: ast.IfExp) -> object:
        self.expr(node.test)
        self.expr(node.body)
        self.expr(node.orelse)
        return UNKNOWN

    def _tuple(self, node: ast.Tuple) -> object:
        if not isinstance(node.ctx, ast.Load):
            raise self.error(node, "this tuple cannot be assigned here")
        values = [self.expr(element) for element in node.elts]
        if any(v is UNKNOWN for v in values):
            return UNKNOWN
        return tuple(values)

    def _subscript(self, node: ast.Subscript) -> object:
        if not isinstance(node.ctx, ast.Load):
            raise self.error(
                node,
                "item assignment is not allowed: tensors cannot be changed in place",
                "build a new tensor, e.g. with where(...), cat(...) or stack(...)",
            )
        self.expr(node.value)
        index = node.slice
        elements = index.elts if isinstance(index, ast.Tuple) else [index]
        for element in elements:
            if isinstance(element, ast.Constant) and element.value is None:
                continue  # x[:, None] inserts a dim of size 1, as in NumPy
            if isinstance(element, ast.Slice):
                for part in (element.lower, element.upper, element.step):
                    if part is not None:
                        self.expr(part)
            else:
                self.expr(element)
        return UNKNOWN

    def _attribute(self, node: ast.Attribute) -> object:
        if node.attr == "T" and isinstance(node.ctx, ast.Load):
            self.expr(node.value)
            return UNKNOWN
        raise self._attribute_error(node, is_call=False)

    def _attribute_error(self, node: ast.Attribute, is_call: bool) -> SpecError:
        attr = node.attr
        end_line = node.end_lineno or node.lineno
        end_col = node.end_col_offset if node.end_col_offset is not None else node.col_offset
        line, col_offset = end_line, max(end_col - len(attr.encode("utf-8")), 0)
        dotted = _dotted(node.value)
        root = dotted.split(".")[0] if dotted else None
        if attr.startswith("_"):
            return self.error_at(
                line,
                col_offset,
                f"attribute access is not allowed (`.{attr}`); the only attribute is x.T",
                "the language has no access to Python internals",
            )
        if root is not None and (root in MODULE_NAMES) and root not in self.possible:
            if attr in FUNCTIONS:
                return self.error_at(
                    node.lineno,
                    node.col_offset,
                    f"`{dotted}.{attr}` is not available: functions are built in",
                    f"write {attr}(...), e.g. {FUNCTIONS[attr].example}",
                )
            if attr in CONSTANTS:
                return self.error_at(
                    node.lineno,
                    node.col_offset,
                    f"`{dotted}.{attr}` is not available: constants are built in",
                    f"write {attr}",
                )
            alias = ALIASES.get(attr)
            return self.error_at(
                node.lineno,
                node.col_offset,
                f"attribute access is not allowed (`{dotted}.{attr}`); functions are built in",
                f"write {alias}" if alias else suggest(attr, FUNCTIONS),
            )
        value_text = self.text(node.value, 30)
        if attr in FUNCTIONS:
            hint = (
                f"write {attr}({value_text})"
                if is_call
                else f"write {attr}({value_text}) as a function call"
            )
            return self.error_at(
                line, col_offset, f"methods and attributes are not allowed (`.{attr}`)", hint
            )
        alias = ALIASES.get(attr)
        hint = f"write {alias}" if alias else "the only attribute is x.T (transpose)"
        return self.error_at(line, col_offset, f"attribute access is not allowed (`.{attr}`)", hint)

    def _call(self, node: ast.Call) -> object:
        func = node.func
        if isinstance(func, ast.Attribute):
            raise self._attribute_error(func, is_call=True)
        if not isinstance(func, ast.Name):
            raise self.error(
                func,
                "only built-in functions can be called, by name",
                "write e.g. sin(x)",
            )
        name = func.id
        if name.startswith("_"):
            raise self.error(
                func,
                f"names starting with `_` are not allowed (`{name}`)",
                "the language has no access to Python internals",
            )
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error(arg, "*args is not allowed; pass the arguments one by one")
        for kw in node.keywords:
            if kw.arg is None:
                raise self.error(kw, "**kwargs is not allowed; write keyword=value")
        if name == self.def_name:
            raise self.error(
                func,
                f"recursion is not allowed: `{name}` calls itself",
                "write a while or for loop instead",
            )
        if name == "range":
            raise self.error(func, "range can only be used as `for i in range(n):`")
        spec = FUNCTIONS.get(name)
        if spec is None:
            raise self._unknown_function(func)
        given = {p.name for p in spec.params[: len(node.args)]}
        for kw in node.keywords:
            assert kw.arg is not None
            if kw.arg not in spec.keywords:
                if kw.arg in given or any(p.name == kw.arg for p in spec.params):
                    hint = f"pass `{kw.arg}` by position; the signature is {spec.signature}"
                elif kw.arg in KEYWORD_ALIASES and KEYWORD_ALIASES[kw.arg] in spec.keywords:
                    hint = f"write {KEYWORD_ALIASES[kw.arg]}=...; the signature is {spec.signature}"
                else:
                    hint = f"the signature is {spec.signature}"
                raise self.error(kw, f"{name}() has no keyword argument `{kw.arg}`", hint)
            if kw.arg in given:
                raise self.error(
                    kw,
                    f"{name}() got `{kw.arg}` twice (by position and by keyword)",
                    f"the signature is {spec.signature}",
                )
            given.add(kw.arg)
        if len(node.args) < spec.min_args:
            missing = spec.params[len(node.args)].name
            raise self.error(
                node,
                f"{name}() is missing the argument `{missing}`",
                f"the signature is {spec.signature}; e.g. {spec.example}",
            )
        if len(node.args) > spec.max_args:
            raise self.error(
                node.args[spec.max_args],
                f"{name}() takes at most {spec.max_args} argument"
                f"{'s' if spec.max_args != 1 else ''}, got {len(node.args)}",
                f"the signature is {spec.signature}",
            )
        values = [self.expr(arg) for arg in node.args]
        keyword_values = {kw.arg: self.expr(kw.value) for kw in node.keywords}
        self._static_size(node, spec.name, values, keyword_values)
        return UNKNOWN

    def _static_size(
        self,
        node: ast.Call,
        name: str,
        values: list[object],
        keyword_values: dict[str | None, object],
    ) -> None:
        spec = FUNCTIONS[name]
        args: list[object] = []
        for i, param in enumerate(spec.params):
            if i < len(values):
                args.append(values[i])
            elif param.name in keyword_values:
                args.append(keyword_values[param.name])
            else:
                args.append(None if param.required else param.default)
        if any(a is UNKNOWN for a in args):
            return
        try:
            numel = sizes.creation_numel(name, args)
        except sizes.SizeError as exc:
            raise self.error(node, f"{self.text(node)}: {exc}") from None
        if numel is not None and numel > self.limits.max_tensor_elements:
            line, column, text = self.lines.position(node)
            raise LimitExceededError(
                f"{self.text(node)} would create a tensor of {sizes.count_text(numel)} elements, "
                f"more than the "
                f"limit of {self.limits.max_tensor_elements}",
                limit="max_tensor_elements",
                line=line,
                column=column,
                source_line=text,
            )

    def _unknown_function(self, func: ast.Name) -> SpecError:
        name = func.id
        if self.kind == "function" and name in self.possible:
            return self.error(
                func,
                f"`{name}` is a value, not a function; only built-in functions can be called",
                "to multiply, write the operator: 2 * (x + 1)",
            )
        alias = ALIASES.get(name)
        if alias is not None:
            return self.error(func, f"unknown function `{name}`", f"write {alias}")
        return self.error(
            func,
            f"unknown function `{name}`",
            suggest(name, FUNCTIONS) or "the functions you can call are listed in docs/language.md",
        )


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
