"""Resource limits of the function language (configurable on the server)."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["MAX_DEPTH_CEILING", "Limits"]

# The validator and the compiler recurse once per nesting level, and CPython's own
# parser refuses more than 200 nested brackets; a higher depth limit could only turn
# a clean LimitExceededError into a RecursionError.
MAX_DEPTH_CEILING = 200


@dataclass(frozen=True)
class Limits:
    """Bounds on what one function may cost.

    max_source_chars: characters of source text.
    max_nodes: AST nodes (not counting operator and load/store marker nodes).
    max_depth: nesting depth of the AST.
    max_loop_iterations: iterations of all loops of one call together (so it also
        bounds nested loops); one loop alone hits it too.
    max_tensor_elements: elements of any tensor the function creates or an operation
        produces, checked before allocating where the size is known in advance.
    max_input_elements: elements of all inputs of one point (checked by the caller).
    max_int: bound on the magnitude of Python integers (literals and results).
    max_call_bytes: memory one call may hold at once: the tensors its operations made
        that are still alive, including those autograd saves for a derivative (checked
        between operations; the worker's per-call memory budget).
    max_call_seconds: wall-clock seconds one worker call (a chunk: every evaluation
        of the function in it) may run; checked between operations, so it also stops
        a call cooperatively, without ending the worker's process.
    """

    max_source_chars: int = 20_000
    max_nodes: int = 5_000
    max_depth: int = 40
    max_loop_iterations: int = 10_000
    max_tensor_elements: int = 10_000_000
    max_input_elements: int = 1_000_000
    max_int: int = 2**63
    max_call_bytes: int = 2 * 1024**3
    max_call_seconds: int = 30

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{field.name} must be a positive integer, got {value!r}")
        if self.max_depth > MAX_DEPTH_CEILING:
            raise ValueError(f"Limits.max_depth must be at most {MAX_DEPTH_CEILING}")
