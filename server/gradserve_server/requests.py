"""The requests the server runs, as typed values: decoded from their protobuf
messages and validated once (codec.py, by the rules of rules.py), then read by
planning (planner.py), the workers' calls (chunks.py) and the replies (encoding.py).

Everything here is plain and frozen: a request that exists is a valid one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from gradserve_server.budgets import ComputeEstimate
from gradserve_workers import lang
from gradserve_workers.replies import ReplyBudget

__all__ = [
    "CheckOptions",
    "CheckRequest",
    "Claims",
    "ComputeHeader",
    "ComputeRequest",
    "Inputs",
]


@dataclass(frozen=True)
class Inputs:
    """A request's arrays bound to the function's inputs, and how they make points."""

    arrays: Mapping[str, np.ndarray]  # by input name, in the function's order
    batched: bool
    points: int  # 1 when not batched
    per_point_elements: int  # input elements of one point, all inputs together
    dtype: str  # "float32" | "float64": what the workers compute in

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())


@dataclass(frozen=True)
class ComputeHeader:
    """What a compute request says before any of its tensors is decoded: enough to
    admit it (its cost, estimated from shapes, is within the server's budgets)."""

    program: lang.Program
    ops: tuple[str, ...]
    wrt: tuple[str, ...]
    estimate: ComputeEstimate
    # what the worker must check once it knows the output's shape (None: nothing)
    reply_budget: ReplyBudget | None

    @property
    def call(self) -> str:
        """How error messages name the call: ``grad(fn, inputs)``, ``compute(fn, inputs)``."""
        return self.estimate.call


@dataclass(frozen=True)
class ComputeRequest:
    """Ops of a function at some points: values, derivatives, vector products."""

    header: ComputeHeader
    inputs: Inputs
    jacobian_mode: str = "auto"  # "auto" | "forward" | "reverse"
    chunk_size: int | None = None
    verify: bool | None = None  # certify the answer; None: the workers' default
    # vjp's cotangent; jvp's tangents and hvp's vectors by wrt input: each shaped as
    # the output (cotangent) or its input, with a leading points dimension if batched
    cotangent: np.ndarray | None = None
    tangents: Mapping[str, np.ndarray] = field(default_factory=dict)
    vector: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def program(self) -> lang.Program:
        return self.header.program

    @property
    def ops(self) -> tuple[str, ...]:
        return self.header.ops

    @property
    def wrt(self) -> tuple[str, ...]:
        return self.header.wrt


@dataclass(frozen=True)
class CheckOptions:
    """A check's order and tolerances: ``|analytic - reference| <= atol + rtol * |reference|``."""

    order: int = 1
    atol: float = 1e-5
    rtol: float = 1e-3
    eps: float = 1e-6  # the finite differences' step
    fast: bool | None = None  # random projections; None: by size
    seed: int = 0


@dataclass(frozen=True)
class Claims:
    """The derivative a claimed check holds autograd to, by input ("x") or, for a
    Hessian, by pair ("a,b"): as source text, or as numbers computed elsewhere."""

    kind: str  # "grad" | "jacobian" | "hessian"
    sources: Mapping[str, str]  # key -> source ("" for a claim given as numbers)
    values: Mapping[str, np.ndarray] = field(default_factory=dict)  # key -> float64

    @property
    def numeric(self) -> bool:
        return bool(self.values)


@dataclass(frozen=True)
class CheckRequest:
    """A function's derivatives checked at some points: against finite differences,
    or (``claims``) against a claimed derivative."""

    program: lang.Program
    wrt: tuple[str, ...]
    inputs: Inputs
    options: CheckOptions
    claims: Claims | None = None  # None: a finite-difference check

    @property
    def kind(self) -> str:
        return self.claims.kind if self.claims is not None else "finite_difference"
