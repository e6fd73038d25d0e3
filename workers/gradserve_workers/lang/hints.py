"""What to write instead: names people bring from NumPy, PyTorch and Python (torch-free)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["ALIASES", "KEYWORD_ALIASES", "MODULE_NAMES", "suggest"]

# Roots of dotted names people carry over from NumPy, PyTorch and friends.
MODULE_NAMES = frozenset(
    {
        "np", "numpy", "math", "cmath", "torch", "jnp", "jax", "scipy", "sp", "F", "nn",
        "linalg", "special", "tf", "random", "os", "sys", "builtins", "sympy", "mp",
    }
)  # fmt: skip

# Names from other libraries (and Python builtins) -> what to write in this language.
ALIASES: dict[str, str] = {
    "arcsin": "asin(x)",
    "arccos": "acos(x)",
    "arctan": "atan(x)",
    "arctan2": "atan2(y, x)",
    "arcsinh": "asinh(x)",
    "arccosh": "acosh(x)",
    "arctanh": "atanh(x)",
    "absolute": "abs(x)",
    "fabs": "abs(x)",
    "ln": "log(x)",
    "exp2": "2 ** x",
    "power": "x ** y or pow(x, y)",
    "amax": "max(x)",
    "amin": "min(x)",
    "clip": "clamp(x, min=..., max=...)",
    "concatenate": "cat((a, b))",
    "concat": "cat((a, b))",
    "hstack": "cat((a, b))",
    "vstack": "stack((a, b))",
    "identity": "eye(n)",
    "size": "numel(x) or shape(x)",
    "ndim": "len(shape(x))",
    "slogdet": "logdet(A)",
    "logistic": "sigmoid(x)",
    "expit": "sigmoid(x)",
    "heaviside": "where(x > 0, 1, 0)",
    "array": "tensor((1, 2, 3)) or stack((a, b))",
    "asarray": "tensor((1, 2, 3)) or stack((a, b))",
    "as_tensor": "tensor((1, 2, 3))",
    "float": "nothing: numbers are floating point already",
    "int": "floor(x), round(x) or trunc(x)",
    "list": "a tuple (a, b)",
    "tuple": "a tuple (a, b)",
    "print": "return the value instead (print is not available)",
    "matrix_power": "A @ A (or a for loop)",
    "mm": "A @ B",
    "mv": "A @ x",
    "vdot": "dot(x, y)",
    "inner": "dot(x, y)",
    "frobenius_norm": "norm(A)",
    "vector_norm": "norm(x)",
    "matrix_norm": "norm(A)",
    "T": "x.T",
    "t": "x.T or transpose(x)",
    "mT": "transpose(x)",
    "item": "nothing: values stay tensors",
}

KEYWORD_ALIASES: dict[str, str] = {
    "axis": "dim",
    "keepdims": "keepdim",
    "p": "ord",
    "a_min": "min",
    "a_max": "max",
    "ddof": "correction",
    "unbiased": "correction",
    "num": "steps",
    "stop": "end",
}


def suggest(name: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    if not matches:
        return ""
    return "did you mean " + " or ".join(f"`{m}`" for m in matches) + "?"
