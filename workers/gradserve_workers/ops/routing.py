"""Which ops take a safe route instead of their direct transform, because the function
calls a table function for which that transform is wrong under this torch (see
``lang.routes``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..lang.compile import CompiledFunction
from ..lang.routes import ROUTES, unsafe_transforms
from ..transforms import Fn


def functions_of(fn: Fn) -> frozenset[str] | None:
    """The language's table functions ``fn`` calls; ``None`` for a callable that is not
    a compiled program (its transforms cannot be known, and run directly)."""
    if not isinstance(fn, CompiledFunction):
        return None
    return fn.functions


def plan_routes(fn: Fn, ops: Sequence[str], jac_mode: str | None, batched: bool) -> dict[str, str]:
    """op -> a route's description, for each op whose direct transform is unsafe for
    a function ``fn`` calls (see ``lang.routes``)."""
    functions = functions_of(fn)
    if not functions:
        return {}
    unsafe = unsafe_transforms(functions)
    where = "batch" if batched else "point"
    direct = {
        "value": "value",
        "grad": "grad",
        "jacobian": f"jacobian-{jac_mode or 'reverse'}",
        "hessian": "hessian",
        "vjp": "vjp",
        "jvp": "jvp",
        "hvp": "hvp",
    }
    routes: dict[str, str] = {}
    for op in ops:
        transform = f"{direct[op]}@{where}"
        if transform in unsafe:
            route = ROUTES[transform]
            assert route.op == op
            because = ", ".join(unsafe[transform])
            routes[op] = f"{op}: {route.strategy} (direct {transform} is unsafe for {because})"
    return routes
