"""The function language: parse -> validate (torch-free) -> compile (torch).

    program = parse_and_validate("2 * dot(x, x)")      # SpecError / LimitExceededError
    fn = compile_program(program)                      # or compile_function(source)
    fn(torch.ones(3))                                  # tensor(6.)

Importing this package (or `.validate`, `.table`, `.errors`, `.limits`) does not
import torch: the gRPC server validates functions on its request path. The
compiler is loaded on first use of CompiledFunction, compile_program or
compile_function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    DataDependentControlFlow,
    FunctionRuntimeError,
    LangError,
    LimitExceededError,
    SpecError,
)
from .limits import Limits
from .table import CONSTANTS, CONSTRUCTS, FUNCTIONS, FunctionSpec, Param
from .validate import Program, parse_and_validate

if TYPE_CHECKING:
    from .compile import CompiledFunction, compile_function, compile_program

__all__ = [
    "CONSTANTS",
    "CONSTRUCTS",
    "FUNCTIONS",
    "CompiledFunction",
    "DataDependentControlFlow",
    "FunctionRuntimeError",
    "FunctionSpec",
    "LangError",
    "LimitExceededError",
    "Limits",
    "Param",
    "Program",
    "SpecError",
    "compile_function",
    "compile_program",
    "parse_and_validate",
]

_LAZY = frozenset({"CompiledFunction", "compile_function", "compile_program"})


def __getattr__(name: str) -> Any:
    # Import the torch half only when it is asked for.
    if name in _LAZY:
        from . import compile as _compile

        return getattr(_compile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
