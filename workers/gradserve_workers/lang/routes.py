"""Transform safety: the routes around transforms that are wrong under this torch.

A transform is what the worker runs for one operation, at one point ("@point") or
vmapped over a batch of points ("@batch"); "jacobian-forward" pushes tangent columns
through jvp (vmapped over columns), "hessian" is forward-over-reverse (jvp of grad,
vmapped over columns), "hvp" is jvp of grad. Which transforms are unsafe for which
function is recorded with the function, in ``lang.table`` (``FunctionSpec.unsafe``);
this module says what runs instead and which functions a program calls. Torch-free,
like the table.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from types import MappingProxyType

from .table import FUNCTIONS

__all__ = [
    "OPERATIONS",
    "ROUTES",
    "TRANSFORMS",
    "Route",
    "functions_called",
    "route_table",
    "unsafe_transforms",
]

OPERATIONS = (
    "value",
    "grad",
    "jacobian-forward",
    "jacobian-reverse",
    "hessian",
    "vjp",
    "jvp",
    "hvp",
)
TRANSFORMS = tuple(f"{op}@{where}" for op in OPERATIONS for where in ("point", "batch"))


@dataclass(frozen=True)
class Route:
    """What runs instead of an unsafe transform: ``strategy`` names it in a result's
    metadata; ``op`` is the operation it answers."""

    op: str
    strategy: str
    summary: str


# Forward mode vmapped once (looping over the columns in Python, within the vmap over
# points) is right too; reverse mode was measured faster at 4 to 64 inputs (an A/B
# in one process: 1.4-1.8x for Jacobians, 1.3-3x for Hessians).
ROUTES: MappingProxyType[str, Route] = MappingProxyType(
    {
        "jacobian-forward@batch": Route(
            "jacobian",
            "reverse-jacobian",
            "reverse-mode Jacobian (vjp over cotangent columns), vmapped over points",
        ),
        "hessian@batch": Route(
            "hessian",
            "reverse-over-reverse-hessian",
            "reverse-over-reverse Hessian (vjp of grad over columns), vmapped over points",
        ),
    }
)

# fail closed at import: an unsafe transform without a route would run directly
_ROUTELESS = [f"{n}: {t}" for n, spec in FUNCTIONS.items() for t in spec.unsafe if t not in ROUTES]
if _ROUTELESS:
    raise RuntimeError(f"unsafe transforms without a route: {', '.join(_ROUTELESS)}")


def functions_called(tree: ast.AST) -> frozenset[str]:
    """The table functions a (validated) program calls: the language has no function
    values, so every call of a table function is an ``ast.Call`` of its name."""
    return frozenset(
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
    )


def unsafe_transforms(functions: frozenset[str] | set[str]) -> dict[str, tuple[str, ...]]:
    """transform -> the given functions (sorted) for which it is unsafe.

    >>> unsafe_transforms({"sin", "det"})["hessian@batch"]
    ('det',)
    >>> unsafe_transforms({"sin"})
    {}
    """
    found: dict[str, list[str]] = {}
    for name in sorted(functions):
        for transform in FUNCTIONS[name].unsafe:
            found.setdefault(transform, []).append(name)
    return {t: tuple(names) for t, names in found.items()}


def route_table() -> str:
    """The route table as docs/conformance.md prints it (markdown): every function x
    transform that is rerouted, with the route and the reason; every other pair of
    TRANSFORMS runs directly."""
    lines = [
        "| function | transform | runs as | reason |",
        "|---|---|---|---|",
    ]
    for name, spec in FUNCTIONS.items():
        for transform in TRANSFORMS:
            if transform in spec.unsafe:
                route = ROUTES[transform]
                lines.append(
                    f"| `{name}` | `{transform}` | rerouted: {route.summary} "
                    f"(`{route.strategy}`) | {spec.unsafe[transform]} |"
                )
    direct = sorted(n for n, spec in FUNCTIONS.items() if not spec.unsafe)
    lines += [
        "",
        f"Direct for every transform ({len(direct)} functions): "
        + ", ".join(f"`{n}`" for n in direct)
        + ".",
    ]
    return "\n".join(lines) + "\n"
