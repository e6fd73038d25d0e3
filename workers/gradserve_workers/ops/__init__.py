"""Derivatives of a function of named tensor inputs, through ``torch.func``.

A function is any callable ``fn(*tensors) -> tensor`` taking its inputs positionally
in the order of ``input_names``; inputs are given as a dict. :func:`compute` answers
one :class:`OpsRequest` (several ops at once, sharing work) and returns an
:class:`OpsResult`. Shapes for one point (``batched=True`` adds a leading point
dimension to every input and every result):

=========  ====================================================================
value      ``out_shape``
grad       scalar ``f`` only; the shape of each ``wrt`` input
jacobian   ``out_shape + in_shape`` per ``wrt`` input (forward or reverse mode)
hessian    ``in_shape_a + in_shape_b`` for every ordered pair ``"a,b"``
vjp        per ``wrt`` input, given a ``cotangent`` of shape ``out_shape``
jvp        ``out_shape``, given ``tangents`` (one per ``wrt`` input)
hvp        per ``wrt`` input, given ``vector`` (one per ``wrt`` input)
=========  ====================================================================

Pure torch: no Ray, no gRPC.
"""

from __future__ import annotations

from .._vmap import is_data_dependent_error, vmap_or_loop
from ..transforms import choose_jacobian_mode
from .certify import CertificateError
from .computation import compute
from .plan import check_finite
from .request import JACOBIAN_MODES, OPS, NonFiniteInputError, OpsError, OpsRequest, OpsResult

# Present the public classes as this package's own (in tracebacks, reprs and pickles).
for _cls in (NonFiniteInputError, OpsError, OpsRequest, OpsResult):
    _cls.__module__ = __name__

__all__ = [
    "JACOBIAN_MODES",
    "OPS",
    "CertificateError",
    "NonFiniteInputError",
    "OpsError",
    "OpsRequest",
    "OpsResult",
    "check_finite",
    "choose_jacobian_mode",
    "compute",
    "is_data_dependent_error",
    "vmap_or_loop",
]
