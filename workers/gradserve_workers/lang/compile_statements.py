"""The compiler of statement nodes and of the program's body: assignments and
unpacking, if, while and for with the loop budget, return, break and continue; one
closure per node, returning None to go on or a signal to leave a loop or the def."""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .checker import without_docstring
from .compile_expressions import ExpressionCompiler
from .errors import FunctionRuntimeError, LangError
from .evaluate import BREAK, CONTINUE, Evaluator, Executor, Frame, Return, binary, guard
from .limits import Limits
from .runtime import shape_text, to_int
from .table import BINARY_OPERATORS
from .validate import Program


class StatementCompiler(ExpressionCompiler):
    """The statement handlers (``stmt_handlers``) and the program's body."""

    def __init__(self, program: Program, limits: Limits) -> None:
        super().__init__(program, limits)
        self.stmt_handlers: dict[type[ast.AST], Callable[[Any], Executor]] = {
            ast.Assign: self._assign,
            ast.AugAssign: self._augassign,
            ast.If: self._if,
            ast.While: self._while,
            ast.For: self._for,
            ast.Return: self._return,
            ast.Pass: self._pass,
            ast.Break: self._break,
            ast.Continue: self._continue,
        }

    # -- program --------------------------------------------------------------------

    def body(self) -> Evaluator:
        node = self.program.node
        if isinstance(node, ast.FunctionDef):
            block = self.block(without_docstring(node.body))
            where = self.where(node)

            def run_def(frame: Frame) -> Any:
                result = block(frame)
                if isinstance(result, Return):
                    return result.value
                raise FunctionRuntimeError(
                    "the function ended without return",
                    where.line,
                    where.column,
                    where.source_line,
                )

            return run_def
        return self._result(node, self.expr(node))

    def _result(self, node: ast.AST, evaluate: Evaluator) -> Evaluator:
        where = self.where(node)

        def checked(frame: Frame) -> Any:
            value = evaluate(frame)
            if isinstance(value, tuple):
                raise FunctionRuntimeError(
                    "the function must return one tensor, not a tuple",
                    where.line,
                    where.column,
                    where.source_line,
                    "stack the parts into one tensor: stack((a, b)) or cat((a, b))",
                )
            return value

        return checked

    # -- statements -----------------------------------------------------------------

    def block(self, stmts: Sequence[ast.stmt]) -> Executor:
        executors = [self.stmt(s) for s in stmts]

        def run(frame: Frame) -> object:
            for execute in executors:
                signal = execute(frame)
                if signal is not None:
                    return signal
            return None

        return run

    def stmt(self, node: ast.stmt) -> Executor:
        handler = self.stmt_handlers.get(type(node))
        if handler is None:
            raise self.unsupported(node)
        return handler(node)

    def _binder(self, target: ast.expr) -> Callable[[Frame, Any], None]:
        if isinstance(target, ast.Name):
            name = target.id

            def bind(frame: Frame, value: Any) -> None:
                frame.env[name] = value

            return bind
        if isinstance(target, ast.Tuple):
            binders = [self._binder(t) for t in target.elts]
            count = len(binders)

            def unpack(frame: Frame, value: Any) -> None:
                items: Sequence[Any]
                if isinstance(value, tuple):
                    items = value
                elif isinstance(value, torch.Tensor) and value.dim() > 0:
                    if value.shape[0] != count:
                        raise FunctionRuntimeError(
                            f"cannot unpack a tensor of shape {shape_text(value.shape)} "
                            f"into {count} names"
                        )
                    items = value.unbind(0)
                else:
                    raise FunctionRuntimeError(f"cannot unpack a single value into {count} names")
                if len(items) != count:
                    raise FunctionRuntimeError(
                        f"cannot unpack {len(items)} values into {count} names"
                    )
                for bind, item in zip(binders, items, strict=True):
                    bind(frame, item)

            return unpack
        raise self.unsupported(target)

    def _assign(self, node: ast.Assign) -> Executor:
        evaluate = self.expr(node.value)
        binders = [self._binder(t) for t in node.targets]

        def run(frame: Frame) -> None:
            value = evaluate(frame)
            for bind in binders:
                bind(frame, value)

        return guard(self.where(node), run)

    def _augassign(self, node: ast.AugAssign) -> Executor:
        if not isinstance(node.target, ast.Name):
            raise self.unsupported(node.target)
        load = self._name(node.target)
        name = node.target.id
        symbol = BINARY_OPERATORS[type(node.op)]
        evaluate = self.expr(node.value)
        where = self.where(node)

        def run(frame: Frame) -> None:
            # Rebinds the name: `y += x` never changes a tensor in place (it may be an input).
            frame.env[name] = binary(frame.ctx, symbol, load(frame), evaluate(frame), where.text)

        return guard(where, run, account=True)

    def _if(self, node: ast.If) -> Executor:
        test = self.expr(node.test)
        body = self.block(node.body)
        orelse = self.block(node.orelse)
        where = self.where(node.test)

        def run(frame: Frame) -> object:
            if frame.ctx.truth(test(frame), where.quoted):
                return body(frame)
            return orelse(frame)

        return guard(where, run)

    def _while(self, node: ast.While) -> Executor:
        test = self.expr(node.test)
        body = self.block(node.body)
        test_where = self.where(node.test)
        where = self.where(node)

        def run(frame: Frame) -> object:
            ctx = frame.ctx
            count = 0
            while True:
                try:
                    go_on = ctx.truth(test(frame), test_where.quoted)
                    if go_on:
                        count += 1
                        ctx.spend_iteration("while", count)
                except LangError as exc:
                    exc.locate(where.line, where.column, where.source_line)
                    raise
                if not go_on:
                    return None
                signal = body(frame)
                if signal is BREAK:
                    return None
                if signal is not None and signal is not CONTINUE:
                    return signal

        return guard(where, run)

    def _for(self, node: ast.For) -> Executor:
        assert isinstance(node.iter, ast.Call) and isinstance(node.target, ast.Name)
        bounds = [self.expr(a) for a in node.iter.args]
        name = node.target.id
        body = self.block(node.body)
        where = self.where(node)

        def run(frame: Frame) -> object:
            ctx = frame.ctx
            try:
                values = [to_int(b(frame), "range() argument") for b in bounds]
                steps = range(*values)
            except LangError as exc:
                exc.locate(where.line, where.column, where.source_line)
                raise
            for count, i in enumerate(steps, start=1):
                try:
                    ctx.spend_iteration("for", count)
                except LangError as exc:
                    exc.locate(where.line, where.column, where.source_line)
                    raise
                frame.env[name] = i
                signal = body(frame)
                if signal is BREAK:
                    return None
                if signal is not None and signal is not CONTINUE:
                    return signal
            return None

        return guard(where, run)

    def _return(self, node: ast.Return) -> Executor:
        assert node.value is not None
        evaluate = self._result(node.value, self.expr(node.value))

        def run(frame: Frame) -> object:
            return Return(evaluate(frame))

        return run

    def _pass(self, node: ast.Pass) -> Executor:
        return lambda frame: None

    def _break(self, node: ast.Break) -> Executor:
        return lambda frame: BREAK

    def _continue(self, node: ast.Continue) -> Executor:
        return lambda frame: CONTINUE
