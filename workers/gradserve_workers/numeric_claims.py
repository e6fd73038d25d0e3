"""Claims that are numbers: a derivative computed elsewhere, checked against autograd.

The claim's values ride along as extra inputs that the function ignores, and the
claim "function" hands back each point's slice of them; the claimed check then
treats them as it treats a claim written in the function language (one value
per point, vectorised over points, sharded by input elements). The check of
autograd against finite differences runs beside it (the server asks for both)
and :mod:`gradserve_server.numeric` says which of the three disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .check import claimed_check
from .report import CheckReport
from .tasks import CLAIM
from .transforms import Fn

__all__ = ["CLAIM", "numeric_claimed_check"]

# the names the claims' values take as hidden inputs (not names the language allows)
_HIDDEN = "__claim_{}"


def numeric_claimed_check(
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    values: Mapping[str, torch.Tensor],
    *,
    kind: str,
    batched: bool,
    atol: float,
    rtol: float,
    allow_vmap: bool = True,
    columns: tuple[int, int] | None = None,
) -> CheckReport:
    """:func:`~gradserve_workers.check.claimed_check` with the claims' values.

    ``values`` maps a claim key (``"x"``, or ``"a,b"`` for a Hessian block) to the
    claimed derivative: ``(points, *shape)`` when ``batched``, else ``shape``.

    >>> x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    >>> f = lambda x: (x * x).sum()
    >>> r = numeric_claimed_check(f, ["x"], {"x": x}, {"x": 2 * x}, kind="grad",
    ...                           batched=True, atol=1e-5, rtol=1e-3)
    >>> r.passed
    True
    >>> r = numeric_claimed_check(f, ["x"], {"x": x}, {"x": x}, kind="grad",
    ...                           batched=True, atol=1e-5, rtol=1e-3)
    >>> r.passed, r.worst.point, r.worst.numeric, r.worst.analytic
    (False, 1, 3.0, 6.0)
    """
    names = list(input_names)
    keys = list(values)
    hidden = [_HIDDEN.format(i) for i in range(len(keys))]
    k = len(names)

    def ignoring_claims(*args: Any) -> Any:
        return fn(*args[:k])

    def claim_at(j: int) -> Any:
        return lambda *args: args[k + j]

    return claimed_check(
        ignoring_claims,
        {key: claim_at(j) for j, key in enumerate(keys)},
        [*names, *hidden],
        {**inputs, **dict(zip(hidden, (values[key] for key in keys), strict=True))},
        kind=kind,
        batched=batched,
        atol=atol,
        rtol=rtol,
        allow_vmap=allow_vmap,
        columns=columns,
    )
