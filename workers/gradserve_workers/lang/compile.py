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
from dataclasses import replace
from typing import Any

import torch

from .compile_statements import StatementCompiler
from .evaluate import Evaluator, Frame
from .layout import Positions, syntax_key
from .limits import Limits
from .routes import functions_called
from .runtime import Context
from .table import EXPRESSION_NODES, STATEMENT_NODES
from .validate import Program, parse_and_validate

__all__ = ["CompiledFunction", "compile_function", "compile_program"]


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
    compiler = StatementCompiler(program, limits)
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
    probe = StatementCompiler(Program("", (), "expression", "", empty, None, Limits()), Limits())
    assert set(probe.expr_handlers) | {ast.Slice} == set(EXPRESSION_NODES)
    assert set(probe.stmt_handlers) | {ast.FunctionDef, ast.Expr} == set(STATEMENT_NODES)


_check_tables()
