"""The compiler of expression nodes: one closure per node (names, constants,
operators, calls through the function table, attributes, indexing, tuples), built
once per program; a node type without a handler fails closed."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import torch

from . import scalars
from .errors import FunctionRuntimeError, SourceLines, SpecError
from .evaluate import (
    Evaluator,
    Frame,
    binary,
    check_index_size,
    compare,
    constant,
    guard,
    index_part,
    slice_part,
)
from .functions import IMPLEMENTATIONS
from .layout import Layout, Positions, Where
from .limits import Limits
from .runtime import transpose_last
from .table import (
    BINARY_OPERATORS,
    COMPARE_OPERATORS,
    CONSTANTS,
    FUNCTIONS,
    REQUIRED,
    UNARY_OPERATORS,
)
from .validate import Program


class ExpressionCompiler:
    """The state of compiling one program, and the expression handlers
    (``expr_handlers``); statements are in :mod:`.compile_statements`."""

    def __init__(self, program: Program, limits: Limits) -> None:
        self.program = program
        self.source = program.source
        self.lines = SourceLines(program.source)
        self.layout = Layout(self.lines)
        self.positions = Positions(program.tree)
        self.limits = limits
        self.expr_handlers: dict[type[ast.AST], Callable[[Any], Evaluator]] = {
            ast.Constant: self._constant,
            ast.Name: self._name,
            ast.BinOp: self._binop,
            ast.UnaryOp: self._unaryop,
            ast.BoolOp: self._boolop,
            ast.Compare: self._comparison,
            ast.IfExp: self._ifexp,
            ast.Call: self._call,
            ast.Attribute: self._attribute,
            ast.Subscript: self._subscript,
            ast.Tuple: self._tuple,
        }

    def where(self, node: ast.AST) -> Where:
        return self.positions.add(self.layout, node)

    def unsupported(self, node: ast.AST) -> SpecError:
        # Unreachable for validated programs; kept so that a gap fails closed.
        line, column, source_line = self.lines.position(node)
        return SpecError(f"`{type(node).__name__}` is not supported", line, column, source_line)

    # -- expressions ----------------------------------------------------------------

    def expr(self, node: ast.expr) -> Evaluator:
        handler = self.expr_handlers.get(type(node))
        if handler is None:
            raise self.unsupported(node)
        return handler(node)

    def _constant(self, node: ast.Constant) -> Evaluator:
        value = node.value
        if not isinstance(value, int | float):
            raise self.unsupported(node)
        scalars.check_int(value, self.limits.max_int)
        return constant(value)

    def _name(self, node: ast.Name) -> Evaluator:
        name = node.id
        if name in CONSTANTS:
            return constant(CONSTANTS[name])
        where = self.where(node)

        def load(frame: Frame) -> Any:
            try:
                return frame.env[name]
            except KeyError:
                raise FunctionRuntimeError(
                    f"`{name}` is used before it is assigned (the branch or loop that "
                    "assigns it did not run)",
                    where.line,
                    where.column,
                    where.source_line,
                ) from None

        return load

    def _binop(self, node: ast.BinOp) -> Evaluator:
        symbol = BINARY_OPERATORS[type(node.op)]
        left, right = self.expr(node.left), self.expr(node.right)
        where = self.where(node)

        def run(frame: Frame) -> Any:
            return binary(frame.ctx, symbol, left(frame), right(frame), where.text)

        return guard(where, run, account=True)

    def _unaryop(self, node: ast.UnaryOp) -> Evaluator:
        symbol = UNARY_OPERATORS[type(node.op)]
        operand = self.expr(node.operand)
        where = self.where(node)

        def run(frame: Frame) -> Any:
            value = operand(frame)
            ctx = frame.ctx
            if symbol == "not":
                return not ctx.truth(value, where.quoted)
            if isinstance(value, tuple):
                raise FunctionRuntimeError("a tuple cannot be negated")
            if isinstance(value, torch.Tensor):
                value = ctx.arith(value)
                return -value if symbol == "-" else value
            return scalars.unary(symbol, value, ctx.limits.max_int)

        return guard(where, run, account=True)

    def _boolop(self, node: ast.BoolOp) -> Evaluator:
        values = [self.expr(v) for v in node.values]
        is_and = isinstance(node.op, ast.And)
        wheres = [self.where(v) for v in node.values]

        def run(frame: Frame) -> Any:
            # Python semantics: the first operand that decides, unconverted.
            result: Any = None
            for evaluate, value_where in zip(values, wheres, strict=True):
                result = evaluate(frame)
                if frame.ctx.truth(result, value_where.quoted) != is_and:
                    return result
            return result

        return guard(self.where(node), run)

    def _comparison(self, node: ast.Compare) -> Evaluator:
        symbols = [COMPARE_OPERATORS[type(op)] for op in node.ops]
        operands = [self.expr(node.left), *(self.expr(c) for c in node.comparators)]
        where = self.where(node)

        def run(frame: Frame) -> Any:
            what = where.text
            # Chains are elementwise for tensors: 0 < x < 1 is (0 < x) & (x < 1).
            left = operands[0](frame)
            result: Any = True
            for symbol, evaluate in zip(symbols, operands[1:], strict=True):
                right = evaluate(frame)
                part = compare(frame.ctx, symbol, left, right, what)
                if result is True:
                    result = part
                elif isinstance(result, torch.Tensor) or isinstance(part, torch.Tensor):
                    # the parts can broadcast to more than either: size it before combining
                    frame.ctx.broadcast((result, part), what)
                    result = torch.logical_and(torch.as_tensor(result), torch.as_tensor(part))
                else:
                    result = result and part
                left = right
            return result

        return guard(where, run, account=True)

    def _ifexp(self, node: ast.IfExp) -> Evaluator:
        test, body, orelse = self.expr(node.test), self.expr(node.body), self.expr(node.orelse)
        test_where = self.where(node.test)

        def run(frame: Frame) -> Any:
            return body(frame) if frame.ctx.truth(test(frame), test_where.quoted) else orelse(frame)

        return guard(self.where(node), run)

    def _call(self, node: ast.Call) -> Evaluator:
        assert isinstance(node.func, ast.Name)
        name = node.func.id
        spec = FUNCTIONS.get(name)
        impl = IMPLEMENTATIONS.get(name)
        if spec is None or impl is None:
            raise self.unsupported(node)
        slots: list[Evaluator | None] = [None] * len(spec.params)
        for i, arg in enumerate(node.args):
            slots[i] = self.expr(arg)
        positions = {p.name: i for i, p in enumerate(spec.params)}
        for kw in node.keywords:
            assert kw.arg is not None
            slots[positions[kw.arg]] = self.expr(kw.value)
        evaluators: list[Evaluator] = []
        for slot, param in zip(slots, spec.params, strict=True):
            if slot is None:
                if param.default is REQUIRED:
                    raise self.unsupported(node)
                evaluators.append(constant(param.default))
            else:
                evaluators.append(slot)
        where = self.where(node)

        def run(frame: Frame) -> Any:
            values = [evaluate(frame) for evaluate in evaluators]
            return frame.ctx.check_result(impl(frame.ctx, *values), where.text)

        return guard(where, run, account=True)

    def _attribute(self, node: ast.Attribute) -> Evaluator:
        if node.attr != "T":
            raise self.unsupported(node)
        value = self.expr(node.value)

        def run(frame: Frame) -> Any:
            v = value(frame)
            if isinstance(v, torch.Tensor):
                return transpose_last(v)
            if isinstance(v, int | float):
                return v
            raise FunctionRuntimeError(".T needs a tensor")

        return guard(self.where(node), run)

    def _index_evaluator(self, node: ast.expr) -> Evaluator:
        if isinstance(node, ast.Constant) and node.value is None:
            return constant(None)  # a new dim of size 1
        if isinstance(node, ast.Slice):
            parts = [
                None if p is None else self.expr(p) for p in (node.lower, node.upper, node.step)
            ]

            def make_slice(frame: Frame) -> slice:
                lower, upper, step = (
                    None if p is None else slice_part(p(frame), "a slice bound") for p in parts
                )
                return slice(lower, upper, step)

            return make_slice
        evaluate = self.expr(node)
        return lambda frame: index_part(evaluate(frame))

    def _subscript(self, node: ast.Subscript) -> Evaluator:
        value = self.expr(node.value)
        index = node.slice
        is_tuple = isinstance(index, ast.Tuple)
        elements = index.elts if isinstance(index, ast.Tuple) else [index]
        parts = [self._index_evaluator(e) for e in elements]
        where = self.where(node)

        def run(frame: Frame) -> Any:
            target = value(frame)
            key = tuple(p(frame) for p in parts)
            if isinstance(target, torch.Tensor):
                check_index_size(frame.ctx, target, key, where.text)
                return target[key if is_tuple else key[0]]
            if isinstance(target, tuple):
                if is_tuple or isinstance(key[0], torch.Tensor):
                    raise FunctionRuntimeError("a tuple takes one integer index")
                return target[key[0]]
            raise FunctionRuntimeError("a number cannot be indexed")

        return guard(where, run, account=True)

    def _tuple(self, node: ast.Tuple) -> Evaluator:
        elements = [self.expr(e) for e in node.elts]
        return lambda frame: tuple(e(frame) for e in elements)
