"""``torch.autograd.functional``'s signatures, answered by :mod:`support.reference`.

For tests written against ``AF.jacobian(fn, inputs)`` and friends: the same call
shapes and result structure (a tensor for one input, tuples for several), but every
derivative comes from Richardson-extrapolated central differences in float64 of
``fn`` evaluated under ``no_grad``, never from torch's autograd. Results are float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from support import reference as R

Tensor = torch.Tensor


def _packed(fn: Callable[..., Tensor], inputs: Tensor | tuple[Tensor, ...]) -> R.Packed:
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    named = {f"a{i}": a.detach().double().numpy() for i, a in enumerate(args)}
    return R.Packed(R.from_torch(fn), named)


def _shaped(p: R.Packed, arr: np.ndarray, single: bool, axis: int = -1) -> Any:
    parts = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in p.split(arr, axis).values())
    return parts[0] if single else parts


def _out(p: R.Packed) -> np.ndarray:
    return np.asarray(p.f(p.x), dtype=np.float64)


def jacobian(fn: Callable[..., Tensor], inputs: Tensor | tuple[Tensor, ...]) -> Any:
    p = _packed(fn, inputs)
    return _shaped(p, R.jacobian(p.f, p.x), not isinstance(inputs, tuple))


def hessian(fn: Callable[..., Tensor], inputs: Tensor | tuple[Tensor, ...]) -> Any:
    p = _packed(fn, inputs)
    hess = R.hessian(p.f, p.x)
    single = not isinstance(inputs, tuple)
    rows = p.split(hess, axis=0)
    blocks = tuple(_shaped(p, row, single) for row in rows.values())
    return blocks[0] if single else blocks


def vjp(fn: Callable[..., Tensor], inputs: Tensor | tuple[Tensor, ...], v: Tensor) -> Any:
    p = _packed(fn, inputs)
    jac = R.jacobian(p.f, p.x)
    c = v.detach().double().numpy().reshape(-1)
    out = _out(p)
    return torch.from_numpy(out), _shaped(p, c @ jac.reshape(c.size, -1), False)


def jvp(
    fn: Callable[..., Tensor], inputs: Tensor | tuple[Tensor, ...], v: Tensor | tuple[Tensor, ...]
) -> Any:
    p = _packed(fn, inputs)
    tangents = v if isinstance(v, tuple) else (v,)
    t = np.concatenate([a.detach().double().numpy().reshape(-1) for a in tangents])
    return torch.from_numpy(_out(p)), torch.from_numpy(np.asarray(R.jvp(p.f, p.x, t)))


def hvp(
    fn: Callable[..., Tensor], inputs: Tensor | tuple[Tensor, ...], v: Tensor | tuple[Tensor, ...]
) -> Any:
    p = _packed(fn, inputs)
    vectors = v if isinstance(v, tuple) else (v,)
    t = np.concatenate([a.detach().double().numpy().reshape(-1) for a in vectors])
    hv = R.hvp(p.f, p.x, t)
    return torch.from_numpy(_out(p)), _shaped(p, hv, not isinstance(inputs, tuple))
