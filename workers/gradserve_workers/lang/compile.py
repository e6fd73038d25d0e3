"""Compile a validated program into a tree of Python closures that run torch ops.

Each AST node becomes one closure, built once per program; a call walks the
closures with a fresh Frame (variables + Context). Nothing is ever turned back
into source text and executed: the only code that runs is the code in this
package, chosen by node type from a fixed table, so anything the validator let
through without a handler here fails closed with a SpecError.

The closures use only functional torch ops, so a CompiledFunction works inside
torch.func.vmap / grad / jacrev / jacfwd / hessian / jvp / vjp. Where a value is
needed to decide control flow and vmap cannot give it, DataDependentControlFlow
is raised so the caller can fall back to evaluating point by point.
"""

from __future__ import annotations

import ast
import hashlib
import operator
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from .._vmap import is_data_dependent_error
from . import scalars
from .errors import (
    DataDependentControlFlow,
    FunctionRuntimeError,
    LangError,
    SourceLines,
    SpecError,
)
from .functions import IMPLEMENTATIONS
from .layout import Layout, Positions, Where, syntax_key
from .limits import Limits
from .routes import functions_called
from .runtime import Context, shape_text, to_int, transpose_last
from .table import (
    BINARY_OPERATORS,
    COMPARE_OPERATORS,
    CONSTANTS,
    EXPRESSION_NODES,
    FUNCTIONS,
    REQUIRED,
    STATEMENT_NODES,
    UNARY_OPERATORS,
)
from .validate import Program, parse_and_validate

__all__ = ["CompiledFunction", "compile_function", "compile_program"]


class Frame:
    """The state of one call: variables and the Context."""

    __slots__ = ("ctx", "env")

    def __init__(self, env: dict[str, Any], ctx: Context) -> None:
        self.env = env
        self.ctx = ctx


class _Return:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


# Statement closures return None to go on, or one of these to leave a loop or the def.
_BREAK = object()
_CONTINUE = object()

Evaluator = Callable[[Frame], Any]
Executor = Callable[[Frame], object]

_TENSOR_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}

_COMPARE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def _translate(exc: Exception, where: Where) -> LangError:
    """A torch/Python exception as one of ours, positioned at the failing node."""
    if is_data_dependent_error(exc):
        return DataDependentControlFlow(
            f"{where.text}: needs the value of a tensor, which vmap cannot provide "
            "(data-dependent control flow)",
            where.line,
            where.column,
            where.source_line,
        )
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = lines[0] if lines else type(exc).__name__
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return FunctionRuntimeError(
        f"{where.text}: {detail}", where.line, where.column, where.source_line
    )


def _guard(where: Where, run: Evaluator, account: bool = False) -> Evaluator:
    """Give every error raised while running `run` the position of its node.

    With ``account``, the node makes new tensors (an operator, a call, an index): its
    result goes through Context.account, which checks the deadline, the cancel flag
    and the memory budget between operations.
    """

    def guarded(frame: Frame) -> Any:
        try:
            value = run(frame)
            if account:
                frame.ctx.account(value, where.quoted)
            return value
        except LangError as exc:
            if exc.line is None:
                # Raised by a helper that does not know where it is: name the expression.
                if isinstance(exc, FunctionRuntimeError) and where.text not in exc.message:
                    exc.message = f"{where.text}: {exc.message}"
                exc.locate(where.line, where.column, where.source_line)
            raise
        except Exception as exc:  # torch and Python errors: report, never crash
            raise _translate(exc, where) from None

    return guarded


def binary(ctx: Context, symbol: str, left: Any, right: Any, what: str) -> Any:
    """One arithmetic operator on numbers and tensors."""
    if isinstance(left, tuple) or isinstance(right, tuple):
        raise FunctionRuntimeError(
            f"tuples cannot be used with `{symbol}`; use tensor((...)) or stack((...))"
        )
    if not isinstance(left, torch.Tensor) and not isinstance(right, torch.Tensor):
        return scalars.binary(symbol, left, right, ctx.limits.max_int)
    if symbol == "@":
        return ctx.matmul(left, right, what)
    a, b = _zero_dim_float(ctx.arith(left), right), _zero_dim_float(ctx.arith(right), left)
    ctx.broadcast((a, b), what)
    return _TENSOR_OPS[symbol](a, b)


def _zero_dim_float(value: Any, other: Any) -> Any:
    """A Python float meeting a 0-d floating tensor, as a tensor of that dtype: torch
    2.13's forward AD gives ``0.5 * t`` a float64 tangent for a 0-d float32 ``t`` (the
    primal stays float32), which later ops refuse or carry into float64 results."""
    if (
        isinstance(value, float)
        and isinstance(other, torch.Tensor)
        and other.ndim == 0
        and other.is_floating_point()
    ):
        return torch.tensor(value, dtype=other.dtype, device=other.device)
    return value


def _compare(ctx: Context, symbol: str, left: Any, right: Any, what: str) -> Any:
    if isinstance(left, tuple) or isinstance(right, tuple):
        raise FunctionRuntimeError(f"tuples cannot be compared with `{symbol}`")
    if not isinstance(left, torch.Tensor) and not isinstance(right, torch.Tensor):
        return scalars.compare(symbol, left, right)
    ctx.broadcast((left, right), what)
    return _COMPARE_OPS[symbol](left, right)


def _index_part(value: Any) -> Any:
    if isinstance(value, bool):
        raise FunctionRuntimeError("an index must be an integer, not True/False")
    if isinstance(value, int | torch.Tensor):
        return value
    if isinstance(value, float):
        raise FunctionRuntimeError(f"an index must be an integer, got {value}")
    raise FunctionRuntimeError(
        f"an index must be an integer or a slice, got {type(value).__name__}"
    )


def _slice_part(value: Any, what: str) -> int | None:
    return None if value is None else to_int(value, what)


def _check_index_size(
    ctx: Context, target: torch.Tensor, index: tuple[Any, ...], what: str
) -> None:
    """Indexing with integer tensors can produce more elements than the indexed tensor."""
    index_shapes: list[tuple[int, ...]] = []
    consumed = 1
    dim = 0
    for part in index:
        if part is None:
            continue  # a new dim: consumes none of the target's dims
        if isinstance(part, torch.Tensor):
            if part.dtype == torch.bool:
                dim += max(part.dim(), 1)
                continue
            index_shapes.append(tuple(part.shape))
            if dim < target.dim():
                consumed *= max(int(target.shape[dim]), 1)
        dim += 1
    if not index_shapes:
        return
    try:
        shape = torch.broadcast_shapes(*index_shapes)
    except RuntimeError:
        raise FunctionRuntimeError("index tensors cannot be broadcast together") from None
    rest = target.numel() // consumed
    ctx.check_numel(int(torch.Size(shape).numel()) * rest, f"the result of {what}")


def _constant(value: object) -> Evaluator:
    return lambda frame: value


class _Compiler:
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

    def where(self, node: ast.AST) -> Where:
        return self.positions.add(self.layout, node)

    def unsupported(self, node: ast.AST) -> SpecError:
        # Unreachable for validated programs; kept so that a gap fails closed.
        line, column, source_line = self.lines.position(node)
        return SpecError(f"`{type(node).__name__}` is not supported", line, column, source_line)

    # -- program --------------------------------------------------------------------

    def body(self) -> Evaluator:
        node = self.program.node
        if isinstance(node, ast.FunctionDef):
            stmts = node.body
            if (
                stmts
                and isinstance(stmts[0], ast.Expr)
                and isinstance(stmts[0].value, ast.Constant)
                and isinstance(stmts[0].value.value, str)
            ):
                stmts = stmts[1:]  # docstring
            block = self.block(stmts)
            where = self.where(node)

            def run_def(frame: Frame) -> Any:
                result = block(frame)
                if isinstance(result, _Return):
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

        return _guard(self.where(node), run)

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

        return _guard(where, run, account=True)

    def _if(self, node: ast.If) -> Executor:
        test = self.expr(node.test)
        body = self.block(node.body)
        orelse = self.block(node.orelse)
        where = self.where(node.test)

        def run(frame: Frame) -> object:
            if frame.ctx.truth(test(frame), where.quoted):
                return body(frame)
            return orelse(frame)

        return _guard(where, run)

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
                if signal is _BREAK:
                    return None
                if signal is not None and signal is not _CONTINUE:
                    return signal

        return _guard(where, run)

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
                if signal is _BREAK:
                    return None
                if signal is not None and signal is not _CONTINUE:
                    return signal
            return None

        return _guard(where, run)

    def _return(self, node: ast.Return) -> Executor:
        assert node.value is not None
        evaluate = self._result(node.value, self.expr(node.value))

        def run(frame: Frame) -> object:
            return _Return(evaluate(frame))

        return run

    def _pass(self, node: ast.Pass) -> Executor:
        return lambda frame: None

    def _break(self, node: ast.Break) -> Executor:
        return lambda frame: _BREAK

    def _continue(self, node: ast.Continue) -> Executor:
        return lambda frame: _CONTINUE

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
        return _constant(value)

    def _name(self, node: ast.Name) -> Evaluator:
        name = node.id
        if name in CONSTANTS:
            return _constant(CONSTANTS[name])
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

        return _guard(where, run, account=True)

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

        return _guard(where, run, account=True)

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

        return _guard(self.where(node), run)

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
                part = _compare(frame.ctx, symbol, left, right, what)
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

        return _guard(where, run, account=True)

    def _ifexp(self, node: ast.IfExp) -> Evaluator:
        test, body, orelse = self.expr(node.test), self.expr(node.body), self.expr(node.orelse)
        test_where = self.where(node.test)

        def run(frame: Frame) -> Any:
            return body(frame) if frame.ctx.truth(test(frame), test_where.quoted) else orelse(frame)

        return _guard(self.where(node), run)

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
                evaluators.append(_constant(param.default))
            else:
                evaluators.append(slot)
        where = self.where(node)

        def run(frame: Frame) -> Any:
            values = [evaluate(frame) for evaluate in evaluators]
            return frame.ctx.check_result(impl(frame.ctx, *values), where.text)

        return _guard(where, run, account=True)

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

        return _guard(self.where(node), run)

    def _index_evaluator(self, node: ast.expr) -> Evaluator:
        if isinstance(node, ast.Constant) and node.value is None:
            return _constant(None)  # a new dim of size 1
        if isinstance(node, ast.Slice):
            parts = [
                None if p is None else self.expr(p) for p in (node.lower, node.upper, node.step)
            ]

            def make_slice(frame: Frame) -> slice:
                lower, upper, step = (
                    None if p is None else _slice_part(p(frame), "a slice bound") for p in parts
                )
                return slice(lower, upper, step)

            return make_slice
        evaluate = self.expr(node)
        return lambda frame: _index_part(evaluate(frame))

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
                _check_index_size(frame.ctx, target, key, where.text)
                return target[key if is_tuple else key[0]]
            if isinstance(target, tuple):
                if is_tuple or isinstance(key[0], torch.Tensor):
                    raise FunctionRuntimeError("a tuple takes one integer index")
                return target[key[0]]
            raise FunctionRuntimeError("a number cannot be indexed")

        return _guard(where, run, account=True)

    def _tuple(self, node: ast.Tuple) -> Evaluator:
        elements = [self.expr(e) for e in node.elts]
        return lambda frame: tuple(e(frame) for e in elements)


class CompiledFunction:
    """A validated program compiled to run on tensors.

    Call it with one tensor per input, positionally, in `.inputs` order. It is a
    pure function of its inputs and can be used inside torch.func transforms. The
    working dtype (for numbers and created tensors) is the dtype of the first
    floating-point input (torch's default dtype if there is none); created tensors
    live on the device of the first tensor input.
    """

    def __init__(
        self,
        program: Program,
        limits: Limits,
        body: Evaluator,
        positions: Positions,
        functions: frozenset[str] | None = None,
    ) -> None:
        self.program = program
        self.limits = limits
        # the table functions the program calls, which decide the routes its
        # transforms take (see lang.routes): walked once, here
        self.functions = functions_called(program.tree) if functions is None else functions
        self._body = body
        self._positions = positions
        self._table = positions.current() if positions.installed is None else None

    @property
    def syntax_key(self) -> str:
        """Equal for functions whose sources differ only in layout (see relocated)."""
        return syntax_key(self.program.tree)

    def relocated(self, source: str, tree: ast.Module | None = None) -> CompiledFunction:
        """This function for ``source``, which differs only in layout (whitespace,
        comments, parentheses): the same compiled body, with ``source``'s positions in
        its errors. Linear in the source's length; no validating or compiling.

        ``tree``: ``source`` parsed, if the caller has it. Raises ValueError if the
        syntax trees differ.
        """
        tree = ast.parse(source) if tree is None else tree
        if syntax_key(tree) != self.syntax_key:
            raise ValueError("CompiledFunction.relocated: the syntax trees differ")
        program = replace(
            self.program,
            source=source,
            source_hash=hashlib.sha256(source.encode("utf-8")).hexdigest(),
            tree=tree,
        )
        twin = CompiledFunction(program, self.limits, self._body, self._positions, self.functions)
        twin._table = self._positions.table_for(source, tree)
        return twin

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.program.inputs

    def __repr__(self) -> str:
        digest = self.program.source_hash[:12]
        return f"CompiledFunction(inputs={self.inputs!r}, source_hash={digest!r})"

    def __call__(self, *args: Any) -> torch.Tensor:
        return self.measure(*args)[0]

    def measure(self, *args: Any) -> tuple[torch.Tensor, int]:
        """The result and the most elements of any tensor the call made or checked
        (per point when called under ``vmap``): what one more point costs in memory."""
        if len(args) != len(self.inputs):
            raise TypeError(
                f"the function takes {len(self.inputs)} input(s) {self.inputs}, got {len(args)}"
            )
        dtype: torch.dtype | None = None
        device: torch.device | None = None
        for arg in args:
            if isinstance(arg, torch.Tensor):
                device = device or arg.device
                if dtype is None and arg.is_floating_point():
                    dtype = arg.dtype
            elif not isinstance(arg, int | float):
                raise TypeError(f"inputs must be tensors or numbers, got {type(arg).__name__}")
        ctx = Context(
            dtype or torch.get_default_dtype(), device or torch.device("cpu"), self.limits
        )
        ctx.add_inputs(args)
        if self._table is not None:  # None: no twin has ever run, ours are in place
            self._positions.install(self._table)
        result = self._body(Frame(dict(zip(self.inputs, args, strict=True)), ctx))
        if isinstance(result, torch.Tensor):
            if not result.is_floating_point():
                result = result.to(ctx.dtype)
            return result, max(ctx.peak, result.numel())
        return torch.as_tensor(result, dtype=ctx.dtype, device=ctx.device), ctx.peak


def compile_program(
    program: Program,
    limits: Limits = Limits(),  # frozen: sharing the default is safe
) -> CompiledFunction:
    """Compile a validated program; `limits` bound what each call may cost."""
    from .. import registry

    if registry.is_registered(program):  # "@NAME": the operator's own Python code
        return registry.compiled(program.source[1:])  # type: ignore[no-any-return]
    compiler = _Compiler(program, limits)
    return CompiledFunction(program, limits, compiler.body(), compiler.positions)


def compile_function(
    source: str,
    limits: Limits = Limits(),  # frozen: sharing the default is safe
) -> CompiledFunction:
    """Validate and compile source text in one step."""
    return compile_program(parse_and_validate(source, limits), limits)


def _check_tables() -> None:
    """The compiler must handle every node type the validator accepts (checked at import)."""
    empty = ast.Module(body=[], type_ignores=[])
    probe = _Compiler(Program("", (), "expression", "", empty, None, Limits()), Limits())
    assert set(probe.expr_handlers) | {ast.Slice} == set(EXPRESSION_NODES)
    assert set(probe.stmt_handlers) | {ast.FunctionDef, ast.Expr} == set(STATEMENT_NODES)


_check_tables()
