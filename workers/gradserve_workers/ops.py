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

from collections.abc import Mapping, Sequence

import torch

from ._ops_impl import (
    JACOBIAN_MODES,
    OPS,
    Fn,
    NonFiniteInputError,
    OpsError,
    OpsRequest,
    OpsResult,
    compute_impl,
)
from ._vmap import is_data_dependent_error, vmap_or_loop
from .certify import certify, default_verify, describe
from .transforms import choose_jacobian_mode

# The classes live in the private module; present them as this module's own (in
# tracebacks, reprs and pickles).
for _cls in (NonFiniteInputError, OpsError, OpsRequest, OpsResult):
    _cls.__module__ = __name__

__all__ = [
    "JACOBIAN_MODES",
    "OPS",
    "NonFiniteInputError",
    "OpsError",
    "OpsRequest",
    "OpsResult",
    "choose_jacobian_mode",
    "compute",
    "is_data_dependent_error",
    "vmap_or_loop",
]


def compute(
    fn: Fn,
    input_names: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    request: OpsRequest,
) -> OpsResult:
    """Compute the ops of ``request`` for ``fn`` at ``inputs``.

    Inputs not in ``request.wrt`` are held constant. Computations run in the inputs'
    dtype. A function with data-dependent control flow is run point by point when
    ``vmap`` refuses it (``result.vmapped`` is then ``False``; the caller may cache
    that and pass ``allow_vmap=False`` next time).

    With ``request.verify`` (``None``: where that is cheap, see
    :func:`~gradserve_workers.certify.default_verify`) the answer is checked by a
    second route before it is returned (``result.certificate``; see
    :mod:`gradserve_workers.certify`), and a disagreement raises
    :class:`~gradserve_workers.certify.CertificateError`.

    Raises :class:`OpsError` (a ``ValueError``) for a request that cannot be answered,
    e.g. ``grad`` of a non-scalar function, and :class:`NonFiniteInputError` when an
    input holds NaN or Inf. Exceptions raised by ``fn`` itself propagate unchanged.

    The gradient of ``2 * dot(x, x)`` is ``4 * x``; ``value`` comes from the same pass:

    >>> x = torch.tensor([1.0, 2.0, 3.0])
    >>> r = compute(lambda x: 2 * torch.dot(x, x), ["x"], {"x": x},
    ...             OpsRequest(ops=("value", "grad")))
    >>> r.outputs["value"][""].item(), r.outputs["grad"]["x"].tolist()
    (28.0, [4.0, 8.0, 12.0])

    The Jacobian of ``x * x`` is ``diag(2x)``; its Hessian-free cousin, the vjp with
    ones, is the gradient of ``sum(x * x)``:

    >>> r = compute(lambda x: x * x, ["x"], {"x": x},
    ...             OpsRequest(ops=("jacobian", "vjp"), cotangent=torch.ones(3)))
    >>> torch.equal(r.outputs["jacobian"]["x"], torch.diag(2 * x)), r.jacobian_mode
    (True, 'reverse')
    >>> r.outputs["vjp"]["x"].tolist()
    [2.0, 4.0, 6.0]

    Hessians come per ordered pair of inputs; ``y`` below is unconnected:

    >>> r = compute(lambda x, y: (x ** 3).sum() + 0 * y.sum(), ["x", "y"],
    ...             {"x": x, "y": torch.tensor(1.0)}, OpsRequest(ops=("hessian",)))
    >>> r.outputs["hessian"]["x,x"].tolist()
    [[6.0, 0.0, 0.0], [0.0, 12.0, 0.0], [0.0, 0.0, 18.0]]
    >>> r.outputs["hessian"]["x,y"].shape, r.unconnected
    (torch.Size([3]), ('y',))

    Batched, with data-dependent control flow (falls back to a per-point loop):

    >>> def f(a):
    ...     return a * 2 if a.sum() > 0 else a * 3
    >>> r = compute(f, ["a"], {"a": torch.tensor([[1.0], [-1.0]])},
    ...             OpsRequest(ops=("jacobian",), batched=True))
    >>> r.outputs["jacobian"]["a"].reshape(2).tolist(), r.vmapped
    ([2.0, 3.0], False)

    A vector-valued function has no gradient:

    >>> compute(lambda x: x * x, ["x"], {"x": x}, OpsRequest(ops=("grad",)))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gradserve_workers.ops.OpsError: grad(f): f returns shape (3,), not a scalar. ...
    """
    result = compute_impl(fn, input_names, inputs, request)
    _materialize_zeros(result)
    verify = request.verify
    if verify is None:
        verify = default_verify(request, result, inputs)
    if verify:
        result.certificate = certify(fn, input_names, inputs, request, result, name=describe(fn))
    return result


def _materialize_zeros(result: OpsResult) -> None:
    """Replace torch's lazy ``ZeroTensor`` results (a batched hvp of a function whose
    second derivative vanishes, e.g. ``sum(abs(x))``) by real zeros: nothing
    downstream (numpy, the wire) can read them."""
    for by_key in result.outputs.values():
        for key, t in by_key.items():
            if t._is_zerotensor():
                by_key[key] = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
