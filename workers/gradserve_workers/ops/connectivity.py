"""Which ``wrt`` inputs the output does not depend on (their derivatives are zeros).

An input whose derivative is zero at the first point is probed again at a random
point near it and, in a batch, at every point; an input seen to influence the output
once is remembered (the witness caches) and not probed again.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._vmap import vmap_or_loop
from ..transforms import Fn, bind_wrt, measure, vjp_fn_of
from .plan import Plan


def zero_or_unused(
    fn: Fn,
    plan: Plan,
    point: Sequence[torch.Tensor],
    gen: torch.Generator,
) -> tuple[torch.Tensor, list[bool], int]:
    """Evaluate ``fn`` at ``point`` with autograd: the output; per wrt input, is its
    derivative (along a random cotangent) absent or exactly zero; and the call's
    largest intermediate (see :func:`measure`)."""
    with torch.enable_grad():
        args = list(point)
        for i in plan.wrt_idx:
            args[i] = point[i].detach().clone().requires_grad_(True)
        leaves = [args[i] for i in plan.wrt_idx]
        out, peak = measure(fn, args)
        if not (out.requires_grad and out.is_floating_point()):
            return out.detach(), [True] * len(leaves), peak
        v = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
        grads = torch.autograd.grad(out, leaves, grad_outputs=v, allow_unused=True)
    flags = [gr is None or not bool((gr != 0).any()) for gr in grads]
    return out.detach(), flags, peak


def _perturbed(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
    return t + 0.5 * (1 + t.abs()) * noise


def find_unconnected(
    fn: Fn,
    plan: Plan,
    inputs: Mapping[str, torch.Tensor],
    first: Sequence[torch.Tensor],
    flags0: list[bool],
    out_shape: tuple[int, ...],
    out_dtype: torch.dtype,
    allow_vmap: bool,
) -> tuple[str, ...]:
    """Which wrt inputs the output does not depend on.

    An input is unconnected when autograd finds no path from it to the output, or its
    derivative (along a random cotangent) is exactly zero at every point and at a
    random probe point near the first one: no dependence detected. An input seen
    with a nonzero derivative by an earlier call (same function, wrt, input shapes
    and dtypes) is connected without probing again.
    """
    cand = [w for w, flag in zip(plan.wrt, flags0, strict=True) if flag]
    if not cand:
        return ()
    key = _witness_key(fn, plan, first)
    seen = _witnessed(key)
    if seen is not None:
        cand = [w for w in cand if w not in seen]
        if not cand:
            return ()
    found = _probe_unconnected(fn, plan, inputs, first, cand, out_shape, out_dtype, allow_vmap)
    if key is not None:
        _witness(key, [w for w in plan.wrt if w not in found])
    return found


# Inputs seen to influence the output (a nonzero derivative at some point), per
# function, wrt, input shapes and dtypes: such an input is connected wherever the
# next call evaluates it, so the probe is not run for it again. Compiled functions
# are keyed by their source hash (bounded), other callables weakly by identity.
_WITNESS_SIZE = 1024
_witness_by_hash: OrderedDict[tuple[Any, ...], frozenset[str]] = OrderedDict()
_witness_by_fn: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)


def _witness_key(fn: Fn, plan: Plan, first: Sequence[torch.Tensor]) -> tuple[Any, ...] | None:
    sig = (plan.names, plan.wrt, tuple((tuple(t.shape), t.dtype, t.device) for t in first))
    source_hash = getattr(getattr(fn, "program", None), "source_hash", None)
    if isinstance(source_hash, str):
        return ("hash", source_hash, sig)
    try:
        weakref.ref(fn)
    except TypeError:
        return None
    return ("fn", fn, sig)


def _witnessed(key: tuple[Any, ...] | None) -> frozenset[str] | None:
    if key is None:
        return None
    if key[0] == "hash":
        return _witness_by_hash.get(key[1:])
    per_fn = _witness_by_fn.get(key[1])
    return None if per_fn is None else per_fn.get(key[2])


def _witness(key: tuple[Any, ...], connected: Sequence[str]) -> None:
    if not connected:
        return
    if key[0] == "hash":
        k = key[1:]
        _witness_by_hash[k] = _witness_by_hash.get(k, frozenset()) | frozenset(connected)
        _witness_by_hash.move_to_end(k)
        if len(_witness_by_hash) > _WITNESS_SIZE:
            _witness_by_hash.popitem(last=False)
        return
    per_fn = _witness_by_fn.setdefault(key[1], {})
    per_fn[key[2]] = per_fn.get(key[2], frozenset()) | frozenset(connected)


def _probe_unconnected(
    fn: Fn,
    plan: Plan,
    inputs: Mapping[str, torch.Tensor],
    first: Sequence[torch.Tensor],
    cand: list[str],
    out_shape: tuple[int, ...],
    out_dtype: torch.dtype,
    allow_vmap: bool,
) -> tuple[str, ...]:
    """Which of the candidates ``cand`` (zero derivative at the first point) are
    unconnected: zero at a random probe point near the first one and at every point."""
    gen = torch.Generator().manual_seed(1)
    probe = list(first)
    for i in plan.wrt_idx:
        probe[i] = _perturbed(probe[i], gen)
    _, flags1, _ = zero_or_unused(fn, plan, probe, gen)
    cand = [w for w, flag in zip(plan.wrt, flags1, strict=True) if flag and w in cand]
    if not cand or not plan.batched or plan.n_points == 1:
        return tuple(cand)
    cand_idx = tuple(plan.names.index(w) for w in cand)
    v = torch.randn(out_shape, generator=gen, dtype=out_dtype).to(first[0].device)

    def vjp_point(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        g = bind_wrt(fn, args, cand_idx)
        _, vjp_fn = vjp_fn_of(g, *(args[i] for i in cand_idx))
        return tuple(vjp_fn(v))

    args = [inputs[n] for n in plan.names]
    cots, _ = vmap_or_loop(vjp_point, args, [0] * len(args), allow_vmap=allow_vmap)
    return tuple(w for w, c in zip(cand, cots, strict=True) if not bool((c != 0).any()))
