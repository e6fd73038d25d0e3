"""The checks of expression nodes: names, constants and their folding with bounded
integers, operators, indexing, attributes, and calls against the function table
(arity, keywords, and the sizes of tensors built from constants)."""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from typing import Any

from . import scalars, sizes
from .checker import UNKNOWN, Checker, dotted
from .errors import FunctionRuntimeError, LimitExceededError, SourceLines, SpecError
from .hints import ALIASES, KEYWORD_ALIASES, MODULE_NAMES, suggest
from .limits import Limits
from .table import (
    BINARY_OPERATORS,
    COMPARE_OPERATORS,
    CONSTANTS,
    FUNCTIONS,
    REFUSED_OPERATORS,
    UNARY_OPERATORS,
)

# Every accepted operator type -> its symbol, for messages and for constant folding.
_SYMBOLS: dict[type[ast.AST], str] = {}
for _table in (BINARY_OPERATORS, UNARY_OPERATORS, COMPARE_OPERATORS):
    _SYMBOLS.update((op, symbol) for op, symbol in _table.items())


class ExpressionChecks(Checker):
    """The expression handlers, one per allowed node type (``expr_handlers``); a node
    type without one is refused."""

    def __init__(
        self, source: str, lines: SourceLines, limits: Limits, known: Sequence[str] | None
    ) -> None:
        super().__init__(source, lines, limits, known)
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
            raise self._private_name(node, name)
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

    def _private_name(self, node: ast.AST, name: str) -> SpecError:
        return self.error(
            node,
            f"names starting with `_` are not allowed (`{name}`)",
            "the language has no access to Python internals",
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
        dotted_name = dotted(node.value)
        root = dotted_name.split(".")[0] if dotted_name else None
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
                    f"`{dotted_name}.{attr}` is not available: functions are built in",
                    f"write {attr}(...), e.g. {FUNCTIONS[attr].example}",
                )
            if attr in CONSTANTS:
                return self.error_at(
                    node.lineno,
                    node.col_offset,
                    f"`{dotted_name}.{attr}` is not available: constants are built in",
                    f"write {attr}",
                )
            alias = ALIASES.get(attr)
            return self.error_at(
                node.lineno,
                node.col_offset,
                f"attribute access is not allowed (`{dotted_name}.{attr}`); functions are built in",
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
            raise self._private_name(func, name)
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
