"""Every requested op at one point, sharing work: the function the op path maps over
the points (with ``vmap`` or a loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from ..transforms import Fn, as_scalar, forward_ad_unsupported, jacfwd_chunked, jvp_of, vjp_fn_of


def point_ops(
    g: Fn,
    primals: tuple[torch.Tensor, ...],
    ops: tuple[str, ...],
    *,
    jac_mode: str,
    reverse_hessian: bool,
    chunk_size: int | None,
    cotangent: torch.Tensor | None,
    tangents: tuple[torch.Tensor, ...] | None,
    vector: tuple[torch.Tensor, ...] | None,
    vmap_ok: bool,
    notes: list[str],
) -> dict[str, Any]:
    """Every requested op at one point, sharing work; ``value`` is always included.

    Functions without forward-mode AD (a custom ``autograd.Function`` with no ``jvp``)
    get reverse mode instead; a forward Jacobian that fell back appends ``"reverse"``
    to ``notes``. ``reverse_hessian`` computes the Hessian reverse-over-reverse from
    the start (the route around functions whose nested forward mode is wrong).
    """
    res: dict[str, Any] = {}
    argnums = tuple(range(len(primals)))
    value: torch.Tensor | None = None
    grads: Any = None
    gs = as_scalar(g)

    if "hessian" in ops:

        def grad_aux(*w: torch.Tensor) -> Any:
            gr, v = torch.func.grad_and_value(gs, argnums)(*w)
            return gr, (gr, v)

        hess = None
        if not reverse_hessian:
            try:
                hess, _, (grads, value) = jacfwd_chunked(
                    grad_aux, primals, has_aux=True, vmap_ok=vmap_ok, chunk_size=chunk_size
                )
            except Exception as exc:
                if not forward_ad_unsupported(exc):
                    raise
        if hess is None:
            # reverse-over-reverse: for functions without forward-mode AD, and the route
            # around functions whose nested forward mode is wrong
            hess, (grads, value) = torch.func.jacrev(
                grad_aux, argnums, has_aux=True, chunk_size=chunk_size if vmap_ok else 1
            )(*primals)
        res["hessian"] = hess
    if "hvp" in ops:
        assert vector is not None

        def grad_v(*w: torch.Tensor) -> Any:
            return torch.func.grad_and_value(gs, argnums)(*w)

        try:
            (grads, value), (hv, _) = jvp_of(grad_v, primals, vector)
        except Exception as exc:
            if not forward_ad_unsupported(exc):
                raise
            # reverse-over-reverse: Hᵀv, equal to Hv for a symmetric Hessian
            grads, hvp_fn, value = cast(
                tuple[Any, Callable[..., Any], Any],
                torch.func.vjp(grad_v, *primals, has_aux=True),
            )
            hv = hvp_fn(vector)
        res["hvp"] = hv
    if "jacobian" in ops:

        def g_aux(*w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            o = g(*w)
            return o, o

        jac = None
        if jac_mode == "forward":
            try:
                jac, value, _ = jacfwd_chunked(g, primals, vmap_ok=vmap_ok, chunk_size=chunk_size)
            except Exception as exc:
                if not forward_ad_unsupported(exc):
                    raise
                notes.append("reverse")
        if jac is None:
            jac, value = torch.func.jacrev(
                g_aux, argnums, has_aux=True, chunk_size=chunk_size if vmap_ok else 1
            )(*primals)
        res["jacobian"] = jac
    if "vjp" in ops:
        assert cotangent is not None
        value, vjp_fn = vjp_fn_of(g, *primals)
        res["vjp"] = vjp_fn(cotangent)
    if "jvp" in ops:
        assert tangents is not None
        value, res["jvp"] = jvp_of(g, primals, tangents)
    if "grad" in ops:
        if grads is None:
            grads, value = torch.func.grad_and_value(gs, argnums)(*primals)
        res["grad"] = grads
    if value is None:
        value = g(*primals)
    res["value"] = value
    return res
