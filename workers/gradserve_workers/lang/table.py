"""The allow-list of the function language (torch-free).

Everything the language accepts is listed here: the functions with their
signatures, the constants, the operators and the AST node types. The validator
refuses whatever is not in these tables (fail closed); the compiler and
`functions.py` implement exactly what is in them; docs/language.md lists the same
names, and a test keeps the three in step. The server imports this module to
describe the language (GetServerInfo), so it must not import torch.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "BINARY_OPERATORS",
    "COMPARE_OPERATORS",
    "CONSTANTS",
    "CONSTRUCTS",
    "EXPRESSION_NODES",
    "FUNCTIONS",
    "OPERATIONS",
    "REFUSED_NODES",
    "REFUSED_OPERATORS",
    "REQUIRED",
    "ROUTES",
    "STATEMENT_NODES",
    "TRANSFORMS",
    "UNARY_OPERATORS",
    "FunctionSpec",
    "Param",
    "Route",
    "functions_called",
    "route_table",
    "unsafe_transforms",
]


class _Required:
    """Marker for a parameter without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


@dataclass(frozen=True)
class Param:
    name: str
    default: object = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def __str__(self) -> str:
        return self.name if self.required else f"{self.name}={self.default!r}"


@dataclass(frozen=True)
class FunctionSpec:
    """One whitelisted function.

    Required parameters are positional only; optional ones can be given by position
    or by keyword. `example` is a one-line expression over the documentation inputs
    x, y (vectors of 3) and A, B (3x3 matrices, A symmetric positive definite).
    `unsafe` maps each transform (see TRANSFORMS) that gives wrong derivatives through
    this function under the pinned torch to the reason; a program that calls it is
    computed by the transform's route (see ROUTES) instead.
    """

    name: str
    params: tuple[Param, ...]
    category: str
    summary: str
    example: str
    unsafe: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    keywords: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "keywords", frozenset(p.name for p in self.params if not p.required)
        )

    @property
    def min_args(self) -> int:
        return sum(1 for p in self.params if p.required)

    @property
    def max_args(self) -> int:
        return len(self.params)

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(str(p) for p in self.params)})"


def _p(spec: str) -> Param:
    # "dim=None" -> Param("dim", None); defaults are limited to a few literals on
    # purpose (no parsing of arbitrary text).
    if "=" not in spec:
        return Param(spec)
    name, default = spec.split("=", 1)
    literals: dict[str, object] = {"None": None, "False": False, "True": True}
    value: object = literals[default] if default in literals else int(default)
    return Param(name, value)


_ELEMENTWISE = "elementwise"
_REDUCTION = "reduction"
_LINALG = "linear algebra"
_SHAPE = "shape"
_CREATION = "creation"

_TABLE: list[tuple[str, str, str, str, str]] = [
    # name, params (space separated), category, summary, example
    ("sin", "x", _ELEMENTWISE, "sine", "sin(x)"),
    ("cos", "x", _ELEMENTWISE, "cosine", "cos(x)"),
    ("tan", "x", _ELEMENTWISE, "tangent", "tan(x)"),
    ("asin", "x", _ELEMENTWISE, "inverse sine", "asin(x / 4)"),
    ("acos", "x", _ELEMENTWISE, "inverse cosine", "acos(x / 4)"),
    ("atan", "x", _ELEMENTWISE, "inverse tangent", "atan(x)"),
    ("atan2", "y x", _ELEMENTWISE, "angle of the point (x, y)", "atan2(y, x)"),
    ("sinh", "x", _ELEMENTWISE, "hyperbolic sine", "sinh(x)"),
    ("cosh", "x", _ELEMENTWISE, "hyperbolic cosine", "cosh(x)"),
    ("tanh", "x", _ELEMENTWISE, "hyperbolic tangent", "tanh(x)"),
    ("asinh", "x", _ELEMENTWISE, "inverse hyperbolic sine", "asinh(x)"),
    ("acosh", "x", _ELEMENTWISE, "inverse hyperbolic cosine", "acosh(1 + x ** 2)"),
    ("atanh", "x", _ELEMENTWISE, "inverse hyperbolic tangent", "atanh(x / 4)"),
    ("exp", "x", _ELEMENTWISE, "e to the x", "exp(x)"),
    ("expm1", "x", _ELEMENTWISE, "exp(x) - 1, accurate near 0", "expm1(x)"),
    ("log", "x", _ELEMENTWISE, "natural logarithm", "log(x ** 2 + 1)"),
    ("log1p", "x", _ELEMENTWISE, "log(1 + x), accurate near 0", "log1p(x ** 2)"),
    ("log2", "x", _ELEMENTWISE, "base-2 logarithm", "log2(x ** 2 + 1)"),
    ("log10", "x", _ELEMENTWISE, "base-10 logarithm", "log10(x ** 2 + 1)"),
    ("sqrt", "x", _ELEMENTWISE, "square root", "sqrt(x ** 2 + 1)"),
    ("rsqrt", "x", _ELEMENTWISE, "1 / sqrt(x)", "rsqrt(x ** 2 + 1)"),
    ("abs", "x", _ELEMENTWISE, "absolute value", "abs(x)"),
    ("sign", "x", _ELEMENTWISE, "-1, 0 or 1", "sign(x)"),
    ("floor", "x", _ELEMENTWISE, "round down", "floor(x)"),
    ("ceil", "x", _ELEMENTWISE, "round up", "ceil(x)"),
    ("round", "x", _ELEMENTWISE, "round to the nearest integer (halves to even)", "round(x)"),
    ("trunc", "x", _ELEMENTWISE, "round towards zero", "trunc(x)"),
    ("square", "x", _ELEMENTWISE, "x * x", "square(x)"),
    ("reciprocal", "x", _ELEMENTWISE, "1 / x", "reciprocal(x + 10)"),
    ("sigmoid", "x", _ELEMENTWISE, "1 / (1 + exp(-x))", "sigmoid(x)"),
    ("relu", "x", _ELEMENTWISE, "max(x, 0)", "relu(x)"),
    ("softplus", "x", _ELEMENTWISE, "log(1 + exp(x))", "softplus(x)"),
    ("gelu", "x", _ELEMENTWISE, "Gaussian error linear unit", "gelu(x)"),
    ("silu", "x", _ELEMENTWISE, "x * sigmoid(x)", "silu(x)"),
    ("erf", "x", _ELEMENTWISE, "error function", "erf(x)"),
    ("erfc", "x", _ELEMENTWISE, "1 - erf(x)", "erfc(x)"),
    ("pow", "x y", _ELEMENTWISE, "x ** y", "pow(x, 3)"),
    ("hypot", "x y", _ELEMENTWISE, "sqrt(x ** 2 + y ** 2)", "hypot(x, y)"),
    ("maximum", "x y", _ELEMENTWISE, "elementwise larger of x and y", "maximum(x, y)"),
    ("minimum", "x y", _ELEMENTWISE, "elementwise smaller of x and y", "minimum(x, 0)"),
    ("clamp", "x min=None max=None", _ELEMENTWISE, "limit x to [min, max]", "clamp(x, -1, 1)"),
    ("where", "cond x y", _ELEMENTWISE, "x where cond holds, else y", "where(x > 0, x, 0.1 * x)"),
    ("sum", "x dim=None keepdim=False", _REDUCTION, "sum of elements", "sum(A, dim=0)"),
    ("mean", "x dim=None keepdim=False", _REDUCTION, "mean of elements", "mean(x)"),
    ("prod", "x dim=None keepdim=False", _REDUCTION, "product of elements", "prod(x)"),
    (
        "max",
        "x other=None dim=None keepdim=False",
        _REDUCTION,
        "largest element (along dim); with two arguments the elementwise maximum",
        "max(A, dim=1)",
    ),
    (
        "min",
        "x other=None dim=None keepdim=False",
        _REDUCTION,
        "smallest element (along dim); with two arguments the elementwise minimum",
        "min(x)",
    ),
    (
        "norm",
        "x ord=None dim=None keepdim=False",
        _REDUCTION,
        "vector 2-norm (or ord-norm); Frobenius norm of a matrix",
        "norm(x)",
    ),
    (
        "logsumexp",
        "x dim=None keepdim=False",
        _REDUCTION,
        "log(sum(exp(x))), computed stably",
        "logsumexp(x)",
    ),
    ("softmax", "x dim=-1", _REDUCTION, "exp(x) / sum(exp(x)) along dim", "softmax(x)"),
    ("log_softmax", "x dim=-1", _REDUCTION, "log(softmax(x)) along dim", "log_softmax(x)"),
    (
        "var",
        "x dim=None keepdim=False correction=1",
        _REDUCTION,
        "variance (correction=0 for the population variance)",
        "var(x)",
    ),
    (
        "std",
        "x dim=None keepdim=False correction=1",
        _REDUCTION,
        "standard deviation",
        "std(x, correction=0)",
    ),
    ("cumsum", "x dim=None", _REDUCTION, "running sum (dim needed above 1-D)", "cumsum(x)"),
    ("cumprod", "x dim=None", _REDUCTION, "running product (dim needed above 1-D)", "cumprod(x)"),
    ("all", "x", _REDUCTION, "true if every element is nonzero (for conditions)", "all(x > -5)"),
    ("any", "x", _REDUCTION, "true if some element is nonzero (for conditions)", "any(x > 0)"),
    ("dot", "x y", _LINALG, "inner product of two vectors", "dot(x, y)"),
    ("matmul", "x y", _LINALG, "matrix product, same as x @ y", "matmul(A, x)"),
    ("outer", "x y", _LINALG, "outer product of two vectors", "outer(x, y)"),
    ("kron", "x y", _LINALG, "Kronecker product", "kron(A, B)"),
    ("trace", "A", _LINALG, "sum of the diagonal of a matrix", "trace(A @ B)"),
    ("det", "A", _LINALG, "determinant", "det(A)"),
    ("logdet", "A", _LINALG, "log of the determinant (nan if negative)", "logdet(A)"),
    ("inv", "A", _LINALG, "matrix inverse", "inv(A)"),
    ("solve", "A b", _LINALG, "x with A @ x == b", "solve(A, x)"),
    (
        "cholesky",
        "A",
        _LINALG,
        "lower Cholesky factor of a positive definite matrix",
        "cholesky(A)",
    ),
    ("eigvalsh", "A", _LINALG, "eigenvalues of a symmetric matrix, ascending", "eigvalsh(A)"),
    (
        "diag",
        "x",
        _LINALG,
        "diagonal matrix from a vector, or the diagonal of a matrix",
        "diag(x)",
    ),
    ("tril", "A diagonal=0", _LINALG, "lower triangle of a matrix", "tril(A)"),
    ("triu", "A diagonal=0", _LINALG, "upper triangle of a matrix", "triu(A, 1)"),
    (
        "transpose",
        "x dim0=None dim1=None",
        _SHAPE,
        "swap two dims (default: the last two, like x.T)",
        "transpose(B)",
    ),
    (
        "reshape",
        "x shape",
        _SHAPE,
        "same elements, new shape (-1 infers one dim)",
        "reshape(A, (9,))",
    ),
    ("flatten", "x", _SHAPE, "reshape to one dim", "flatten(A)"),
    ("squeeze", "x dim=None", _SHAPE, "drop dims of size 1", "squeeze(reshape(x, (1, 3)))"),
    ("unsqueeze", "x dim", _SHAPE, "insert a dim of size 1", "unsqueeze(x, 1) * y"),
    ("stack", "tensors dim=0", _SHAPE, "join a tuple of tensors along a new dim", "stack((x, y))"),
    (
        "cat",
        "tensors dim=0",
        _SHAPE,
        "join a tuple of tensors along an existing dim",
        "cat((x, y))",
    ),
    ("numel", "x", _SHAPE, "number of elements (a Python int)", "numel(A) * x"),
    ("len", "x", _SHAPE, "size of the first dim (a Python int)", "len(x) * x"),
    ("shape", "x", _SHAPE, "the shape as a tuple of Python ints", "zeros(shape(A)) + A"),
    ("zeros", "shape", _CREATION, "tensor of zeros", "zeros((2, 3))"),
    ("ones", "shape", _CREATION, "tensor of ones", "ones(3) * x"),
    ("full", "shape value", _CREATION, "tensor filled with value", "full((2, 2), 7)"),
    ("zeros_like", "x", _CREATION, "zeros with the shape of x", "zeros_like(A)"),
    ("ones_like", "x", _CREATION, "ones with the shape of x", "ones_like(x)"),
    ("eye", "n m=None", _CREATION, "identity matrix (n x n, or n x m)", "eye(3) + A"),
    (
        "arange",
        "start end=None step=1",
        _CREATION,
        "start, start + step, ... below end; arange(n) is 0 ... n-1",
        "arange(3) * x",
    ),
    ("linspace", "start end steps", _CREATION, "steps evenly spaced values", "linspace(0, 1, 3)"),
    (
        "tensor",
        "values",
        _CREATION,
        "tensor from (nested) tuples of numbers or scalars",
        "tensor(((1, 2), (3, 4)))",
    ),
]


# -- transform safety ---------------------------------------------------------------
#
# A transform is what the worker runs for one operation, at one point ("@point") or
# vmapped over a batch of points ("@batch"); "jacobian-forward" pushes tangent
# columns through jvp (vmapped over columns), "hessian" is forward-over-reverse
# (jvp of grad, vmapped over columns), "hvp" is jvp of grad.
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

_LU_NESTED_FORWARD = (
    "forward-mode AD vmapped twice (over columns and over points) through an LU "
    "factorisation is silently wrong in torch 2.13 (pytorch issues 192540, 196695, "
    "196696, 196697)"
)

# Measured, not guessed: tests/conformance runs every function's direct transforms
# against independent references and fails when an entry here is no longer wrong
# (a torch upgrade fixed it) or a transform not listed here is.
_UNSAFE: dict[str, dict[str, str]] = {
    name: {"jacobian-forward@batch": _LU_NESTED_FORWARD, "hessian@batch": _LU_NESTED_FORWARD}
    for name in ("det", "logdet", "solve")
}


def _build() -> dict[str, FunctionSpec]:
    table: dict[str, FunctionSpec] = {}
    for name, params, category, summary, example in _TABLE:
        assert name not in table, name
        unsafe = _UNSAFE.get(name, {})
        assert set(unsafe) <= set(ROUTES), f"{name}: an unsafe transform without a route"
        table[name] = FunctionSpec(
            name,
            tuple(_p(p) for p in params.split()),
            category,
            summary,
            example,
            MappingProxyType(dict(unsafe)),
        )
    assert set(_UNSAFE) <= set(table), "safety recorded for a function not in the table"
    return table


# name -> FunctionSpec; read-only so that nobody widens the allow-list at run time.
FUNCTIONS: MappingProxyType[str, FunctionSpec] = MappingProxyType(_build())

CONSTANTS: MappingProxyType[str, float] = MappingProxyType(
    {"pi": math.pi, "e": math.e, "inf": math.inf, "nan": math.nan}
)

BINARY_OPERATORS: MappingProxyType[type[ast.operator], str] = MappingProxyType(
    {
        ast.Add: "+",
        ast.Sub: "-",
        ast.Mult: "*",
        ast.Div: "/",
        ast.FloorDiv: "//",
        ast.Mod: "%",
        ast.Pow: "**",
        ast.MatMult: "@",
    }
)

UNARY_OPERATORS: MappingProxyType[type[ast.unaryop], str] = MappingProxyType(
    {ast.UAdd: "+", ast.USub: "-", ast.Not: "not"}
)

COMPARE_OPERATORS: MappingProxyType[type[ast.cmpop], str] = MappingProxyType(
    {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
)

# Operators Python has and the language refuses, with what to write instead.
REFUSED_OPERATORS: MappingProxyType[type[ast.AST], tuple[str, str]] = MappingProxyType(
    {
        ast.LShift: ("<<", "bit shifts are not allowed; write x * 2 ** n"),
        ast.RShift: (">>", "bit shifts are not allowed; write x // 2 ** n"),
        ast.BitAnd: ("&", "bitwise `&` is not allowed; write `a and b`, or all(...)"),
        ast.BitOr: ("|", "bitwise `|` is not allowed; write `a or b`, or any(...)"),
        ast.BitXor: ("^", "`^` is bitwise xor and is not allowed; for a power write x ** 2"),
        ast.Invert: ("~", "bitwise `~` is not allowed; write `not c` for a condition"),
        ast.Is: ("is", "`is` is not allowed; compare values with == or !="),
        ast.IsNot: ("is not", "`is not` is not allowed; compare values with !="),
        ast.In: ("in", "`in` is not allowed; compare values with =="),
        ast.NotIn: ("not in", "`not in` is not allowed; compare values with !="),
    }
)

# The node types the language accepts, with the construct each belongs to. The
# validator has one check per entry and refuses every other node type.
EXPRESSION_NODES: MappingProxyType[type[ast.AST], str] = MappingProxyType(
    {
        ast.Constant: "number literals",
        ast.Name: "names",
        ast.BinOp: "arithmetic operators",
        ast.UnaryOp: "unary operators",
        ast.BoolOp: "and / or",
        ast.Compare: "comparisons",
        ast.IfExp: "conditional expression",
        ast.Call: "function calls",
        ast.Attribute: "transpose attribute",
        ast.Subscript: "indexing and slicing",
        ast.Slice: "indexing and slicing",
        ast.Tuple: "tuples",
    }
)

STATEMENT_NODES: MappingProxyType[type[ast.AST], str] = MappingProxyType(
    {
        ast.FunctionDef: "def",
        ast.Assign: "assignment",
        ast.AugAssign: "augmented assignment",
        ast.If: "if / elif / else",
        ast.While: "while loop",
        ast.For: "for loop",
        ast.Return: "return",
        ast.Pass: "pass",
        ast.Break: "break / continue",
        ast.Continue: "break / continue",
        ast.Expr: "expression",
    }
)

_COMPREHENSION = (
    "comprehensions are not allowed; write a for loop, or use a vectorised function "
    "such as sum(x ** 2)"
)

# Python constructs the language refuses, with a message that says what to do instead.
REFUSED_NODES: MappingProxyType[type[ast.AST], str] = MappingProxyType(
    {
        ast.Import: "imports are not allowed; all functions are built in (write sin(x))",
        ast.ImportFrom: "imports are not allowed; all functions are built in (write sin(x))",
        ast.Lambda: "lambda is not allowed; write the expression where it is used",
        ast.ListComp: _COMPREHENSION,
        ast.SetComp: _COMPREHENSION,
        ast.DictComp: _COMPREHENSION,
        ast.GeneratorExp: _COMPREHENSION,
        ast.List: "lists are not allowed; write a tuple (a, b), or stack((a, b)) for a tensor",
        ast.Dict: "dicts are not allowed; use separate variables",
        ast.Set: "sets are not allowed; use a tuple (a, b)",
        ast.JoinedStr: "f-strings are not allowed: the language has numbers and tensors only",
        ast.FormattedValue: "f-strings are not allowed: the language has numbers and tensors only",
        ast.NamedExpr: "the walrus operator `:=` is not allowed; assign on a line of its own",
        ast.Starred: "starred expressions (*args) are not allowed; pass arguments one by one",
        ast.Await: "await is not allowed",
        ast.Yield: "yield is not allowed; return one value",
        ast.YieldFrom: "yield is not allowed; return one value",
        ast.Global: "global is not allowed; pass values in as parameters",
        ast.Nonlocal: "nonlocal is not allowed; pass values in as parameters",
        ast.With: "with is not allowed",
        ast.AsyncWith: "with is not allowed",
        ast.Try: "try is not allowed; errors end the call with a message",
        ast.Raise: "raise is not allowed; errors end the call with a message",
        ast.Assert: "assert is not allowed",
        ast.Delete: "del is not allowed; just stop using the name",
        ast.ClassDef: "classes are not allowed",
        ast.AsyncFunctionDef: "async def is not allowed; write a plain def",
        ast.AsyncFor: "async for is not allowed; write for i in range(n)",
        ast.AnnAssign: "annotated assignments are not allowed; write y = ... without `: type`",
        ast.Match: "match is not allowed; write if / elif / else",
    }
    | ({ast.TryStar: "try is not allowed"} if hasattr(ast, "TryStar") else {})
)

# The constructs of the language as docs/language.md lists them: name -> example.
CONSTRUCTS: MappingProxyType[str, str] = MappingProxyType(
    {
        "expression": "2 * dot(x, x)",
        "def": "def f(x, A): ...",
        "number literals": "3, 0.5, 1e-3, True, False",
        "constants": "pi, e, inf, nan",
        "names": "x, A, total",
        "arithmetic operators": "x + y, x - y, x * y, x / y, x // 2, x % 2, x ** 2, A @ x",
        "unary operators": "-x, +x, not done",
        "comparisons": "x < y, x <= y, x > y, x >= y, x == y, x != y, 0 < x < 1",
        "and / or": "n > 0 and norm(x) < 1",
        "conditional expression": "x if n > 0 else -x",
        "function calls": "sum(x), sum(A, dim=0), clamp(x, min=0)",
        "transpose attribute": "A.T",
        "indexing and slicing": (
            "x[0], x[-1], x[1:], x[:-1], x[::2], A[0, 1], A[:, 0], x[x > 0], x[:, None]"
        ),
        "tuples": "(2, 3), shape(A), stack((x, y))",
        "assignment": "y = 2 * x; a, b = x[0], x[1]",
        "augmented assignment": "y += x; y -= x; y *= 2; y /= 2; y **= 2; y @= A",
        "if / elif / else": "if n > 0: ... elif n < 0: ... else: ...",
        "while loop": "while norm(b) < 1000: b = 2 * b",
        "for loop": "for i in range(n): ... (also range(a, b) and range(a, b, step))",
        "break / continue": "for i in range(10): if x[i] > 0: break",
        "return": "return y",
        "pass": "if n > 0: pass",
    }
)


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
