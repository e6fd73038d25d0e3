"""Private: run a per-point function over a batch with ``torch.func.vmap``, or loop.

A function whose Python control flow depends on tensor values (``if x.sum() > 0``,
``while``, ``.item()``) cannot run under ``vmap``. :func:`vmap_or_loop` tries ``vmap``
first and, when that fails for this reason, runs the same function once per point
and stacks the results; it says which way it ran. Any other exception propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

__all__ = ["is_data_dependent_error", "loop_map", "vmap_or_loop"]

# Lower-case fragments of torch's refusals to run a function under vmap because it
# needs a value: a tensor in ``if``/``while`` ("data-dependent control flow"),
# ``.item()``, in-place writes into an unbatched tensor, random ops, an
# ``autograd.Function`` without ``generate_vmap_rule`` ("does not have vmap support").
# Broad on purpose: a false positive costs a per-point rerun, which raises the real
# error again; a false negative would fail a function that runs point by point.
_MARKERS = ("vmap", "data-dependent", "batched tensor")
# ...except an ``autograd.Function`` without ``setup_context``: every torch.func
# transform refuses it (the message lists vmap among them), so running point by point
# cannot help, and a path that happened to avoid torch.func would answer where the
# same function's other ops refuse.
_NOT_BATCHING = ("setup_context",)


def is_data_dependent_error(exc: BaseException) -> bool:
    """True when ``exc`` says a function cannot be vmapped and must run point by point.

    The one rule, for the op path, the check engine and the function language (which
    turns such an error into its ``DataDependentControlFlow``): that exception (by
    class name, so this module does not import the language), or a ``RuntimeError``
    whose message names vmap, data-dependence or a batched tensor.

    >>> is_data_dependent_error(RuntimeError("vmap: It looks like you're attempting "
    ...     "to use a Tensor in some data-dependent control flow."))
    True
    >>> is_data_dependent_error(RuntimeError("shape mismatch"))
    False
    """
    if any(cls.__name__ == "DataDependentControlFlow" for cls in type(exc).__mro__):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    if any(marker in text for marker in _NOT_BATCHING):
        return False
    return any(marker in text for marker in _MARKERS)


def _batch_size(args: Sequence[Any], in_dims: Sequence[int | None]) -> int:
    sizes = {a.shape[0] for a, d in zip(args, in_dims, strict=True) if d is not None}
    if len(sizes) != 1:
        raise ValueError(f"loop_map: batched arguments disagree on the batch size: {sizes}")
    return sizes.pop()


def loop_map(f: Callable[..., Any], args: Sequence[Any], in_dims: Sequence[int | None]) -> Any:
    """Apply ``f`` to each point (slice along dim 0 of the batched args) and stack.

    ``in_dims`` holds ``0`` (batched along the leading dimension) or ``None`` (shared)
    for each argument. The outputs may be any pytree of tensors (or numbers).

    >>> out = loop_map(lambda a, b: a * b, (torch.arange(3.0), torch.tensor(2.0)), (0, None))
    >>> out.tolist()
    [0.0, 2.0, 4.0]
    """
    n = _batch_size(args, in_dims)
    outs = [
        f(*[a[i] if d is not None else a for a, d in zip(args, in_dims, strict=True)])
        for i in range(n)
    ]
    if not outs:
        raise ValueError("loop_map: empty batch")
    leaves0, spec = pytree.tree_flatten(outs[0])
    per_point = [pytree.tree_flatten(o)[0] for o in outs]
    stacked = [
        torch.stack([torch.as_tensor(leaves[j]) for leaves in per_point])
        for j in range(len(leaves0))
    ]
    return pytree.tree_unflatten(stacked, spec)


def vmap_or_loop(
    f: Callable[..., Any],
    args: Sequence[Any],
    in_dims: Sequence[int | None],
    *,
    allow_vmap: bool = True,
    chunk_size: int | None = None,
    loop_f: Callable[..., Any] | None = None,
) -> tuple[Any, bool]:
    """Map ``f`` over the leading dimension; return ``(outputs, vmapped)``.

    Tries ``torch.func.vmap`` (``chunk_size`` points at once) when ``allow_vmap``;
    falls back to :func:`loop_map` of ``loop_f`` (default ``f``: a variant that does
    not vmap inside) when :func:`is_data_dependent_error` says the function needs
    values (``vmapped`` is then ``False``). Any other exception propagates.

    >>> def f(a):
    ...     return a * 2 if a.sum() > 0 else a * 3
    >>> out, vmapped = vmap_or_loop(f, (torch.tensor([1.0, -1.0]),), (0,))
    >>> out.tolist(), vmapped
    ([2.0, -3.0], False)
    >>> out, vmapped = vmap_or_loop(torch.sin, (torch.zeros(2),), (0,))
    >>> out.tolist(), vmapped
    ([0.0, 0.0], True)
    """
    if allow_vmap:
        try:
            return torch.func.vmap(f, in_dims=tuple(in_dims), chunk_size=chunk_size)(*args), True
        except Exception as exc:
            if not is_data_dependent_error(exc):
                raise
    return loop_map(f if loop_f is None else loop_f, args, in_dims), False
