"""The torch.func transforms the op path and the certificate build on: one point's
evaluation and size, the wrt binding, typed jvp/vjp, chunked forward-mode Jacobians,
and the choice of Jacobian mode. Pure torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch.utils import _pytree as pytree

from ._vmap import loop_map
from .lang.compile import CompiledFunction

Fn = Callable[..., torch.Tensor]

# elements one vmapped batch may hold in one intermediate: points (and Jacobian
# columns) are mapped in chunks below it, so a function with large intermediates
# cannot make a batch allocate points x intermediate at once
BATCH_ELEMENTS = 1 << 26
# ... and, on the CPU, points are mapped in batches whose intermediates stay within
# the cores' caches: 1.3-1.8x faster than one batch streaming every intermediate
# through memory (docs/performance.md, "Cache-sized batches"); a GPU wants the
# largest batch that memory allows
CPU_BATCH_ELEMENTS = 1 << 20
# ... when at least this many points fit one such piece (see ops.computation._chunks)
CPU_MIN_POINTS = 16


def measure(fn: Fn, point_args: Sequence[Any]) -> tuple[torch.Tensor, int]:
    """``fn`` at one point, and the most elements of any tensor it made: the function
    language measures its intermediates; for other callables the inputs and the
    output stand in."""
    if isinstance(fn, CompiledFunction):
        out, peak = fn.measure(*point_args)
    else:
        out, peak = fn(*point_args), 0
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    sizes = [a.numel() for a in point_args if isinstance(a, torch.Tensor)]
    return out, max([int(peak), out.numel(), *sizes])


def chunk_for(per_item: int, items: int, limit: int | None = None) -> int | None:
    """How many items to map at once so that ``per_item`` elements each stay within
    ``limit`` (default :data:`BATCH_ELEMENTS`); ``None`` when all of them fit."""
    chunk = (BATCH_ELEMENTS if limit is None else limit) // max(per_item, 1)
    return None if chunk >= items else max(1, chunk)


def bind_wrt(fn: Fn, point_args: Sequence[Any], wrt_idx: Sequence[int]) -> Fn:
    """``g(*wrt_tensors)``: ``fn`` with every input not in ``wrt`` held fixed."""

    def g(*w: torch.Tensor) -> torch.Tensor:
        args = list(point_args)
        for i, t in zip(wrt_idx, w, strict=True):
            args[i] = t
        out = fn(*args)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out)
        return out

    return g


def _tangent_dtypes(out: Any, tan: Any) -> Any:
    """Each tangent in its primal's dtype: torch 2.13's forward AD gives a float64
    tangent for a float32 scalar divided by a Python number (``sum(x) / 5.0``)."""
    return pytree.tree_map(lambda t, o: t.to(o.dtype) if t.dtype != o.dtype else t, tan, out)


def jvp_of(func: Callable[..., Any], primals: Any, tangents: Any) -> tuple[Any, Any]:
    """``torch.func.jvp`` without aux, typed: ``(out, tangent_out)``."""
    out, tan = cast(tuple[Any, Any], torch.func.jvp(func, primals, tangents))
    return out, _tangent_dtypes(out, tan)


def jvp_with_aux(func: Callable[..., Any], primals: Any, tangents: Any) -> tuple[Any, Any, Any]:
    """``torch.func.jvp`` with ``has_aux=True``, typed: ``(out, tangent_out, aux)``."""
    out, tan, aux = cast(
        tuple[Any, Any, Any], torch.func.jvp(func, primals, tangents, has_aux=True)
    )
    return out, _tangent_dtypes(out, tan), aux


def vjp_fn_of(func: Callable[..., Any], *primals: Any) -> tuple[Any, Callable[..., Any]]:
    """``torch.func.vjp`` without aux, typed: ``(out, vjp_fn)``."""
    return cast(tuple[Any, Callable[..., Any]], torch.func.vjp(func, *primals))


def as_scalar(g: Fn) -> Fn:
    def gs(*w: torch.Tensor) -> torch.Tensor:
        return g(*w).reshape(())

    return gs


def jacfwd_chunked(
    func: Callable[..., Any],
    primals: Sequence[torch.Tensor],
    *,
    has_aux: bool = False,
    vmap_ok: bool = True,
    chunk_size: int | None = None,
) -> tuple[Any, Any, Any]:
    """Forward-mode Jacobian of ``func`` w.r.t. every primal; returns ``(jac, out, aux)``.

    ``jac`` has ``torch.func.jacfwd``'s structure for a tuple ``argnums`` (output
    pytree outside, a tuple over primals inside; each leaf ``out_shape + in_shape``).
    Columns are pushed ``chunk_size`` at a time through ``vmap(jvp)``, or one by one
    with a Python loop when ``vmap_ok`` is false (data-dependent control flow).
    """
    primals = tuple(primals)
    sizes = [p.numel() for p in primals]
    total = sum(sizes)
    chunk = max(1, min(chunk_size or total, total))

    def push(*tangents: torch.Tensor) -> Any:
        if has_aux:
            out, tan, aux = jvp_with_aux(func, primals, tangents)
            return tan, out, aux
        out, tan = jvp_of(func, primals, tangents)
        return tan, out, ()

    if total == 0:  # nothing to differentiate with respect to: empty Jacobian blocks
        out_e, aux_e = (func(*primals), None) if not has_aux else func(*primals)
        leaves_e, spec_e = pytree.tree_flatten(out_e)
        jac_e = [tuple(o.new_zeros((*o.shape, *p.shape)) for p in primals) for o in leaves_e]
        return pytree.tree_unflatten(jac_e, spec_e), out_e, aux_e
    tangent_chunks: list[list[Any]] = []
    out0: Any = None
    aux0: Any = None
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        rows = stop - start
        basis = torch.zeros(rows, total, dtype=primals[0].dtype, device=primals[0].device)
        dev = primals[0].device
        basis[torch.arange(rows, device=dev), torch.arange(start, stop, device=dev)] = 1
        parts = []
        offset = 0
        for p, s in zip(primals, sizes, strict=True):
            parts.append(basis[:, offset : offset + s].reshape((rows, *p.shape)).to(p.dtype))
            offset += s
        if vmap_ok:
            tan, out, aux = torch.func.vmap(push)(*parts)
        else:
            tan, out, aux = loop_map(push, parts, [0] * len(parts))
        if out0 is None:
            out0 = pytree.tree_map(lambda t: t[0], out)
            aux0 = pytree.tree_map(lambda t: t[0], aux) if has_aux else None
        tangent_chunks.append(pytree.tree_flatten(tan)[0])
    _, spec = pytree.tree_flatten(out0)
    leaves = []
    for j in range(len(tangent_chunks[0])):
        cols = torch.cat([chunk_leaves[j] for chunk_leaves in tangent_chunks], dim=0)
        cols = cols.movedim(0, -1)  # out_shape + (total,)
        per_arg = []
        offset = 0
        for p, s in zip(primals, sizes, strict=True):
            block = cols[..., offset : offset + s]
            per_arg.append(block.reshape((*cols.shape[:-1], *p.shape)))
            offset += s
        leaves.append(tuple(per_arg))
    return pytree.tree_unflatten(leaves, spec), out0, aux0


def forward_ad_unsupported(exc: BaseException) -> bool:
    """True when ``exc`` says forward-mode AD is not implemented for some operation."""
    if not isinstance(exc, (NotImplementedError, RuntimeError)):
        return False
    msg = str(exc)
    return "forward mode AD" in msg or "forward AD" in msg or "jvp function" in msg


def choose_jacobian_mode(mode: str, out_numel: int, in_numel: int) -> str:
    """``auto`` -> reverse when the output is no larger than the inputs, else forward.

    >>> choose_jacobian_mode("auto", 1, 10), choose_jacobian_mode("auto", 10, 1)
    ('reverse', 'forward')
    """
    if mode != "auto":
        return mode
    return "reverse" if out_numel <= in_numel else "forward"
