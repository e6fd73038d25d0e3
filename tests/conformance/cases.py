"""The conformance matrix's cases: one small program per function of the language's
table, each with an input domain where the function is defined and differentiable
(and where the reference's difference steps stay inside it), plus compositions.

A case is an expression over named inputs. Its *vector* program is the expression;
its *scalar* program is ``sum(w * (expr))`` with a fixed weight input ``w`` (not
differentiated), so that grad, hessian and hvp see every output of the function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Sampler = Callable[[np.random.Generator], np.ndarray]

N = 3  # vector length: small keeps the references (n² four-point stencils) cheap


def uniform(lo: float, hi: float, shape: tuple[int, ...] = (N,)) -> Sampler:
    return lambda rng: rng.uniform(lo, hi, size=shape)


def away(kinks: tuple[float, ...], shape: tuple[int, ...] = (N,), gap: float = 0.3) -> Sampler:
    """Uniform on (-2, 2), at least ``gap`` from every kink (where the function is not
    differentiable, or jumps): difference steps never cross one."""

    def draw(rng: np.random.Generator) -> np.ndarray:
        out = rng.uniform(-2, 2, size=shape)
        for _ in range(1000):
            bad = np.zeros(shape, dtype=bool)
            for k in kinks:
                bad |= np.abs(out - k) < gap
            if not bad.any():
                return out
            out = np.where(bad, rng.uniform(-2, 2, size=shape), out)
        raise AssertionError("no point away from the kinks")

    return draw


def spread(shape: tuple[int, ...] = (N,), gap: float = 0.3) -> Sampler:
    """Distinct values at least ``gap`` apart along the last axis (no ties for max/min)."""

    def draw(rng: np.random.Generator) -> np.ndarray:
        rows = int(np.prod(shape[:-1], dtype=int))
        base = np.arange(shape[-1]) * (gap + 0.2) + 0.25
        out = np.stack([rng.permutation(base) for _ in range(rows)])
        return (out + rng.uniform(0, 0.2, size=out.shape)).reshape(shape)

    return draw


def matrix(shape: tuple[int, int] = (N, N), shift: float = 0.0) -> Sampler:
    """A random matrix; ``shift`` adds ``shift * I`` (keeps it well conditioned)."""

    def draw(rng: np.random.Generator) -> np.ndarray:
        m = rng.normal(size=shape) / 2
        return m + shift * np.eye(*shape) if shift else m

    return draw


def normal(shape: tuple[int, ...] = (N,)) -> Sampler:
    return lambda rng: rng.normal(size=shape)


def _cond(m: np.ndarray) -> float:
    return float(np.linalg.cond(m))


def _eig_condition(m: np.ndarray) -> float:
    """Eigenvalue derivatives divide by the gaps between eigenvalues."""
    ev = np.linalg.eigvalsh(m)
    return float(np.max(np.abs(ev)) / np.min(np.diff(ev)))


STEP_POINTS = away((-2.0, -1.0, 0.0, 1.0, 2.0))  # floor, ceil, round, trunc: off integers


@dataclass(frozen=True)
class Case:
    """``name``: the table function it covers (or ``compose:...``, then ``covers``
    lists them); ``expr`` over the ``inputs`` (name -> sampler, in parameter order);
    ``wrt`` the differentiated ones; ``condition`` the condition number of the
    computation at a point (its matrix's, for linear algebra), which scales the
    float32 tolerance."""

    name: str
    expr: str
    inputs: dict[str, Sampler]
    wrt: tuple[str, ...] = ("x",)
    covers: tuple[str, ...] = field(default=())
    condition: Callable[[dict[str, np.ndarray]], float] = lambda v: 1.0

    @property
    def functions(self) -> tuple[str, ...]:
        """The table functions this case exercises."""
        return self.covers or (self.name,)

    def vector_source(self) -> str:
        params = ", ".join(self.inputs)
        return f"def f({params}):\n    return {self.expr}\n"

    def scalar_source(self) -> str:
        params = ", ".join([*self.inputs, "w"])
        return f"def f({params}):\n    return sum(w * ({self.expr}))\n"

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {k: np.asarray(s(rng), dtype=np.float64) for k, s in self.inputs.items()}


def _x(sampler: Sampler) -> dict[str, Sampler]:
    return {"x": sampler}


_UNARY_DOMAINS: dict[str, Sampler] = {
    "sin": normal(),
    "cos": normal(),
    "tan": uniform(-1.0, 1.0),
    "asin": uniform(-0.8, 0.8),
    "acos": uniform(-0.8, 0.8),
    "atan": normal(),
    "sinh": normal(),
    "cosh": normal(),
    "tanh": normal(),
    "asinh": normal(),
    "acosh": uniform(1.3, 3.0),
    "atanh": uniform(-0.7, 0.7),
    "exp": normal(),
    "expm1": normal(),
    "log": uniform(0.5, 3.0),
    "log1p": uniform(-0.4, 2.0),
    "log2": uniform(0.5, 3.0),
    "log10": uniform(0.5, 3.0),
    "sqrt": uniform(0.5, 3.0),
    "rsqrt": uniform(0.5, 3.0),
    "abs": away((0.0,)),
    "sign": away((0.0,)),
    "floor": STEP_POINTS,
    "ceil": STEP_POINTS,
    "round": away((-1.5, -0.5, 0.5, 1.5)),
    "trunc": STEP_POINTS,
    "square": normal(),
    "reciprocal": uniform(0.5, 3.0),
    "sigmoid": normal(),
    "relu": away((0.0,)),
    "softplus": normal(),
    "gelu": normal(),
    "silu": normal(),
    "erf": normal(),
    "erfc": normal(),
}

# Analytic elementwise functions as numpy writes them for complex arguments: their
# derivatives by the complex step, exact to rounding, are a second reference.
COMPLEX_FORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "atanh": np.arctanh,
    "exp": np.exp,
    "expm1": np.expm1,
    "log": np.log,
    "log1p": np.log1p,
    "log2": np.log2,
    "log10": np.log10,
    "sqrt": np.sqrt,
    "rsqrt": lambda z: 1 / np.sqrt(z),
    "square": np.square,
    "reciprocal": np.reciprocal,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "softplus": lambda z: np.log1p(np.exp(z)),
    "silu": lambda z: z / (1 + np.exp(-z)),
}

# Functions whose derivative is zero wherever it exists: the case multiplies by x so
# that the program still has a derivative to compare (and the zero part is checked).
_PIECEWISE_CONSTANT = frozenset({"sign", "floor", "ceil", "round", "trunc"})


def _unary_cases() -> list[Case]:
    cases = []
    for name, sampler in _UNARY_DOMAINS.items():
        expr = f"x * {name}(x)" if name in _PIECEWISE_CONSTANT else f"{name}(x)"
        cases.append(Case(name, expr, _x(sampler)))
    return cases


def _gap_pair(gap: float = 0.3) -> dict[str, Sampler]:
    """x and y with |x - y| >= gap elementwise (no ties for maximum/minimum)."""
    return {"x": normal(), "y": lambda rng: rng.choice([-1, 1], N) * rng.uniform(gap, 1.0, N)}


CASES: list[Case] = [
    *_unary_cases(),
    # elementwise with several inputs
    Case("atan2", "atan2(y, x)", {"x": uniform(0.5, 2.0), "y": normal()}, ("x", "y")),
    Case("pow", "pow(x, y)", {"x": uniform(0.5, 2.0), "y": uniform(-1.5, 2.5)}, ("x", "y")),
    Case("hypot", "hypot(x, y)", {"x": uniform(0.5, 2.0), "y": normal()}, ("x", "y")),
    Case("maximum", "maximum(x, x + y)", _gap_pair(), ("x", "y")),
    Case("minimum", "minimum(x, x + y)", _gap_pair(), ("x", "y")),
    Case("clamp", "clamp(x, -1, 1)", _x(away((-1.0, 1.0)))),
    Case("where", "where(x > 0, x * x, sin(x))", _x(away((0.0,)))),
    # reductions
    Case("sum", "sum(A, dim=0) * sum(A)", {"A": matrix()}, ("A",)),
    Case("mean", "mean(A, dim=1) * mean(A)", {"A": matrix()}, ("A",)),
    Case("prod", "prod(x) + prod(A, dim=1)", {"x": normal(), "A": matrix()}, ("x", "A")),
    Case("max", "max(A, dim=1) + max(x)", {"x": spread(), "A": spread((N, N))}, ("x", "A")),
    Case(
        "min", "min(A, dim=1) + min(x, 2.2 - x)", {"x": spread(), "A": spread((N, N))}, ("x", "A")
    ),
    Case("norm", "norm(x) + norm(A, dim=0)", {"x": normal(), "A": matrix()}, ("x", "A")),
    Case(
        "logsumexp",
        "logsumexp(A, dim=1) + logsumexp(x)",
        {"x": normal(), "A": matrix()},
        ("x", "A"),
    ),
    Case("softmax", "softmax(x)", _x(normal())),
    Case("log_softmax", "log_softmax(A, dim=0)", {"A": matrix()}, ("A",)),
    Case("var", "var(x) + var(A, dim=1, correction=0)", {"x": normal(), "A": matrix()}, ("x", "A")),
    Case("std", "std(x) + std(A, dim=0)", {"x": normal(), "A": matrix()}, ("x", "A")),
    Case("cumsum", "cumsum(x) * x", _x(normal())),
    Case("cumprod", "cumprod(x)", _x(normal())),
    Case("all", "x * x if all(x > -5) else x", _x(normal())),
    Case("any", "x * x if any(x > 5) else sin(x)", _x(normal())),
    # linear algebra
    Case("dot", "dot(x, y) * x", {"x": normal(), "y": normal()}, ("x", "y")),
    Case("matmul", "matmul(A, x) + A @ x * x", {"x": normal(), "A": matrix()}, ("x", "A")),
    Case("outer", "outer(x, y)", {"x": normal(), "y": normal()}, ("x", "y")),
    Case("kron", "kron(A, B)", {"A": matrix((2, 2)), "B": matrix((2, 2))}, ("A", "B")),
    Case("trace", "trace(A @ A) * x", {"x": normal(), "A": matrix()}, ("x", "A")),
    Case(
        "det",
        "det(A + diag(x))",
        {"x": normal(), "A": matrix(shift=2.0)},
        ("x", "A"),
        condition=lambda v: _cond(v["A"] + np.diag(v["x"])),
    ),
    Case(
        "logdet",
        "logdet(A @ A.T + diag(1 + x * x))",
        {"x": normal(), "A": matrix()},
        ("x", "A"),
        condition=lambda v: _cond(v["A"] @ v["A"].T + np.diag(1 + v["x"] ** 2)),
    ),
    Case(
        "inv",
        "inv(A + diag(x)) @ x",
        {"x": normal(), "A": matrix(shift=3.0)},
        ("x", "A"),
        condition=lambda v: _cond(v["A"] + np.diag(v["x"])) ** 2,
    ),
    Case(
        "solve",
        "solve(A + diag(x), x)",
        {"x": normal(), "A": matrix(shift=3.0)},
        ("x", "A"),
        condition=lambda v: _cond(v["A"] + np.diag(v["x"])) ** 2,
    ),
    Case(
        "cholesky",
        "cholesky(A @ A.T + diag(1 + x * x))",
        {"x": normal(), "A": matrix()},
        ("x", "A"),
        condition=lambda v: _cond(v["A"] @ v["A"].T + np.diag(1 + v["x"] ** 2)),
    ),
    Case(
        "eigvalsh",
        "eigvalsh(diag(3 * x) + 0.3 * (A + A.T))",
        {"x": spread(gap=0.5), "A": matrix()},
        ("x", "A"),
        condition=lambda v: _eig_condition(np.diag(3 * v["x"]) + 0.3 * (v["A"] + v["A"].T)),
    ),
    Case("diag", "diag(A) * x + diag(x) @ x", {"x": normal(), "A": matrix()}, ("x", "A")),
    Case("tril", "tril(A) @ x + tril(A, -1) @ x", {"x": normal(), "A": matrix()}, ("x", "A")),
    Case("triu", "triu(A, 1) @ x", {"x": normal(), "A": matrix()}, ("x", "A")),
    # shapes
    Case(
        "transpose",
        "transpose(A) @ x + transpose(A, 0, 1) @ x",
        {"x": normal(), "A": matrix()},
        ("x", "A"),
    ),
    Case(
        "reshape",
        "reshape(A, (9,)) * reshape(outer(x, x), (-1,))",
        {"x": normal(), "A": matrix()},
        ("x", "A"),
    ),
    Case("flatten", "flatten(A * A)", {"A": matrix()}, ("A",)),
    Case("squeeze", "squeeze(reshape(x, (1, 3))) * x", _x(normal())),
    Case("unsqueeze", "sum(unsqueeze(x, 1) * x, dim=0)", _x(normal())),
    Case("stack", "stack((x, x * x))", _x(normal())),
    Case("cat", "cat((x[1:], x[:1])) * x", _x(normal())),
    Case("numel", "numel(x) * x * x", _x(normal())),
    Case("len", "len(x) * sin(x)", _x(normal())),
    Case("shape", "zeros(shape(x)) + x * x", _x(normal())),
    # creation
    Case("zeros", "zeros((3,)) + x * x", _x(normal())),
    Case("ones", "ones(3) * sin(x)", _x(normal())),
    Case("full", "full((3,), x[0]) * x + full((3,), 2) * x", _x(normal())),
    Case("zeros_like", "zeros_like(x) + exp(x)", _x(normal())),
    Case("ones_like", "ones_like(x) * x * x", _x(normal())),
    Case("eye", "eye(3) @ (x * x) + eye(3, 3)[0] * x", _x(normal())),
    Case("arange", "arange(3) * x * x + arange(1, 4, 1) * x", _x(normal())),
    Case("linspace", "linspace(0, 1, 3) * x * x", _x(normal())),
    Case("tensor", "tensor((1, 2, 3)) * x * x + tensor((x[0], x[1], x[2])) * x", _x(normal())),
    # compositions, among them the two programs of issue 15
    Case(
        "compose:issue15-logdet",
        "logdet(A @ A.T + diag(1 + (x * x) ** 2))",
        {"x": normal((4,)), "A": matrix((4, 4))},
        ("x",),
        covers=("logdet", "diag"),
        condition=lambda v: _cond(v["A"] @ v["A"].T + np.diag(1 + v["x"] ** 4)),
    ),
    Case(
        "compose:issue15-solve",
        "erf(solve(A @ A.T + 4 * eye(4), cat((x[1:], x[:1]))))",
        {"x": normal((4,)), "A": matrix((4, 4))},
        ("x",),
        covers=("erf", "solve", "eye", "cat"),
        condition=lambda v: _cond(v["A"] @ v["A"].T + 4 * np.eye(4)) ** 2,
    ),
    Case(
        "compose:softmax-attention",
        "softmax(A @ x) @ tanh(A) + log_softmax(x)",
        {"x": normal(), "A": matrix()},
        ("x", "A"),
        covers=("softmax", "tanh", "log_softmax"),
    ),
    Case(
        "compose:det-inv",
        "det(inv(A)) * exp(x) + norm(cholesky(A @ A.T + eye(3)) @ x)",
        {"x": normal(), "A": matrix(shift=2.0)},
        ("x", "A"),
        covers=("det", "inv", "exp", "norm", "cholesky", "eye"),
        condition=lambda v: _cond(v["A"]) ** 2,
    ),
    Case(
        "compose:gelu-mlp",
        "sigmoid(B @ gelu(A @ x + 0.5)) * softplus(x)",
        {"x": normal(), "A": matrix(), "B": matrix()},
        ("x", "A", "B"),
        covers=("sigmoid", "gelu", "softplus"),
    ),
]
