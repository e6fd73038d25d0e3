"""What an ops request asks and what it gets back: the op names, the request and result
dataclasses, and the errors a request that cannot be answered raises."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..replies import ReplyBudget

OPS = ("value", "grad", "jacobian", "hessian", "vjp", "jvp", "hvp")
JACOBIAN_MODES = ("auto", "forward", "reverse")
DERIVATIVE_OPS = frozenset(OPS) - {"value"}


class OpsError(ValueError):
    """A request that cannot be computed as asked; the message starts with the call form."""


class NonFiniteInputError(OpsError):
    """An input holds NaN or Inf; the message names the input and the first bad element."""


@dataclass(frozen=True)
class OpsRequest:
    """Which derivatives to compute, with respect to which inputs, and how.

    ``cotangent`` (vjp) has the output's shape; ``tangents`` (jvp) and ``vector`` (hvp)
    map each ``wrt`` input to a tensor of that input's shape. With ``batched=True``
    every one of them has the leading batch dimension too.
    """

    ops: tuple[str, ...]
    wrt: tuple[str, ...] | None = None
    batched: bool = False
    jacobian_mode: str = "auto"
    chunk_size: int | None = None
    cotangent: torch.Tensor | None = None
    tangents: dict[str, torch.Tensor] | None = None
    vector: dict[str, torch.Tensor] | None = None
    allow_vmap: bool = True
    # checked once the output's shape is known, before any derivative is computed
    reply_budget: ReplyBudget | None = None
    # check the answer by a second route (gradserve_workers.ops.certify) before returning
    # it; None: where that is cheap (certify.default_verify)
    verify: bool | None = False
    # the index of the first point, where the points are one chunk of a larger batch:
    # messages name a point by its index in the whole batch
    first_point: int = 0


@dataclass
class OpsResult:
    """What :func:`compute` returns.

    ``outputs[op][key]``: ``value`` and ``jvp`` use the key ``""``; ``grad``,
    ``jacobian``, ``vjp`` and ``hvp`` use the input name; ``hessian`` uses ``"a,b"``
    for every ordered pair of ``wrt`` inputs. Batched results have a leading point
    dimension. ``vmapped`` is ``False`` when the per-point loop ran (the function has
    data-dependent control flow, or ``allow_vmap=False``). ``unconnected`` lists the
    ``wrt`` inputs the output does not depend on (their derivatives are zeros).
    ``routes`` says which operations ran by a safe strategy instead of the direct
    transform, because the function calls a function for which that transform is
    wrong under this torch (see ``lang.routes.ROUTES``): one ``"op: strategy (direct
    transform is unsafe for f, g)"`` per rerouted operation; empty when everything ran
    directly.
    """

    outputs: dict[str, dict[str, torch.Tensor]]
    vmapped: bool
    unconnected: tuple[str, ...]
    jacobian_mode: str | None
    out_shape: tuple[int, ...]
    routes: tuple[str, ...] = ()
    # a gradserve_workers.ops.certify.Certificate when the request asked to verify
    certificate: Any = None

    @property
    def strategy(self) -> str:
        """``"direct"``, or ``"rerouted"`` when some operation took a safe route."""
        return "rerouted" if self.routes else "direct"


def call_form(ops: Sequence[str]) -> str:
    """``grad(f)`` for one op, ``value+grad(f)`` for several."""
    return f"{'+'.join(ops) if ops else 'compute'}(f)"
