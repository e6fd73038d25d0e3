"""Random programs of the function language, typed, from its table.

Every program is ``def f(x, A)`` with ``x`` a vector of 3 and ``A`` a 3x3 matrix, and
returns a scalar (``S``) or a vector (``V``). Expressions are built bottom up from
:data:`RULES`: per table function, how it is called on well-typed arguments inside
its domain (``log(1 + t ** 2)``, ``cholesky(t @ t.T + eye(3))``), so that almost
every program drawn can be differentiated at random points. A test keeps
:data:`RULES` and :data:`NOT_GENERATED` covering every name of the table.

Bodies are a few assignments, sometimes an ``if`` on the data (data-dependent
control flow: the per-point path) or a ``for`` loop, then a ``return``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "corpus"

S, V, M = "S", "V", "M"  # scalar, vector of 3, 3x3 matrix


@dataclass(frozen=True)
class Rule:
    """``template`` formatted with arguments of ``args`` types gives a ``result``."""

    name: str
    result: str
    args: tuple[str, ...]
    template: str


def _unary(name: str, template: str = "{f}({0})") -> list[Rule]:
    return [Rule(name, t, (t,), template.replace("{f}", name)) for t in (S, V, M)]


def _binary(name: str, template: str = "{f}({0}, {1})") -> list[Rule]:
    return [Rule(name, t, (t, t), template.replace("{f}", name)) for t in (S, V, M)]


_SMOOTH = [
    "sin",
    "cos",
    "atan",
    "sinh",
    "cosh",
    "tanh",
    "asinh",
    "exp",
    "expm1",
    "sigmoid",
    "softplus",
    "gelu",
    "silu",
    "erf",
    "erfc",
    "square",
    "abs",
    "relu",
    "sign",
    "floor",
    "ceil",
    "round",
    "trunc",
]

RULES: list[Rule] = [
    *(r for name in _SMOOTH for r in _unary(name)),
    *_unary("tan", "{f}(0.5 * tanh({0}))"),
    *(r for name in ("asin", "acos", "atanh") for r in _unary(name, "{f}(0.9 * tanh({0}))")),
    *_unary("acosh", "{f}(1.5 + {0} ** 2)"),
    *(
        r
        for name in ("log", "log2", "log10", "sqrt", "rsqrt")
        for r in _unary(name, "{f}(0.5 + {0} ** 2)")
    ),
    *_unary("log1p", "{f}({0} ** 2)"),
    *_unary("reciprocal", "{f}(2 + {0} ** 2)"),
    *_binary("pow", "{f}(1.5 + sin({0}), {1})"),
    *_binary("hypot"),
    *_binary("atan2", "{f}({0}, 2 + {1} ** 2)"),
    *_binary("maximum"),
    *_binary("minimum"),
    *_unary("clamp", "{f}({0}, -1, 1)"),
    *_binary("where", "{f}({0} > 0, {0}, 0.5 * {1})"),
    # reductions
    *(
        Rule(n, S, (t,), f"{n}({{0}})")
        for n in ("sum", "mean", "norm", "logsumexp")
        for t in (V, M)
    ),
    *(Rule(n, S, (V,), f"{n}({{0}})") for n in ("prod", "max", "min", "var", "std")),
    *(Rule(n, V, (M,), f"{n}({{0}}, dim=1)") for n in ("sum", "mean", "max", "min", "logsumexp")),
    Rule("prod", V, (M,), "prod({0}, dim=0)"),
    Rule("norm", V, (M,), "norm({0}, dim=0)"),
    Rule("var", V, (M,), "var({0}, dim=1, correction=0)"),
    Rule("std", V, (M,), "std({0}, dim=0)"),
    *(Rule(n, t, (t,), f"{n}({{0}})") for n in ("softmax", "log_softmax") for t in (V, M)),
    *(Rule(n, V, (V,), f"{n}({{0}})") for n in ("cumsum", "cumprod")),
    Rule("cumsum", M, (M,), "cumsum({0}, dim=0)"),
    Rule("all", V, (V, V), "where(all({0} > -3), {0}, {1})"),
    Rule("any", V, (V, V), "where(any({0} > 2), {1}, {0})"),
    # linear algebra
    Rule("dot", S, (V, V), "dot({0}, {1})"),
    Rule("matmul", V, (M, V), "matmul({0}, {1})"),
    Rule("matmul", M, (M, M), "{0} @ {1}"),
    Rule("outer", M, (V, V), "outer({0}, {1})"),
    Rule("kron", S, (M, M), "trace(kron({0}, {1}))"),
    Rule("trace", S, (M,), "trace({0})"),
    Rule("det", S, (M,), "det({0})"),
    Rule("logdet", S, (M,), "logdet({0} @ {0}.T + eye(3))"),
    Rule("inv", M, (M,), "inv({0} @ {0}.T + eye(3))"),
    Rule("solve", V, (M, V), "solve({0} @ {0}.T + eye(3), {1})"),
    Rule("cholesky", M, (M,), "cholesky({0} @ {0}.T + eye(3))"),
    Rule("eigvalsh", V, (M,), "eigvalsh({0} + {0}.T)"),
    Rule("diag", M, (V,), "diag({0})"),
    Rule("diag", V, (M,), "diag({0})"),
    Rule("tril", M, (M,), "tril({0})"),
    Rule("triu", M, (M,), "triu({0}, 1)"),
    # shapes
    Rule("transpose", M, (M,), "transpose({0})"),
    Rule("reshape", V, (M,), "reshape({0}, (9,))[3:6]"),
    Rule("flatten", V, (M,), "flatten({0})[:3]"),
    Rule("squeeze", V, (V,), "squeeze(reshape({0}, (1, 3)))"),
    Rule("unsqueeze", M, (V, V), "unsqueeze({0}, 1) * {1}"),
    Rule("stack", V, (V, V), "sum(stack(({0}, {1})), dim=0)"),
    Rule("cat", V, (V,), "cat(({0}[1:], {0}[:1]))"),
    Rule("numel", V, (M, V), "numel({0}) * {1}"),
    Rule("len", V, (V,), "len({0}) * {0}"),
    Rule("shape", M, (M,), "zeros(shape({0})) + {0}"),
    # creation, combined with an argument so the result still depends on the inputs
    Rule("zeros", V, (V,), "zeros(3) + {0}"),
    Rule("ones", V, (V,), "ones(3) * {0}"),
    Rule("full", V, (V,), "full((3,), 0.5) * {0}"),
    Rule("zeros_like", M, (M,), "zeros_like({0}) + {0}"),
    Rule("ones_like", V, (V,), "ones_like({0}) - {0}"),
    Rule("eye", M, (M,), "eye(3) + {0}"),
    Rule("arange", V, (V,), "arange(3) * {0}"),
    Rule("linspace", V, (V,), "linspace(0, 1, 3) + {0}"),
    Rule("tensor", V, (V,), "tensor((1.0, -2.0, 0.5)) * {0}"),
]

# table names no rule generates, and why
NOT_GENERATED: dict[str, str] = {}

# operators joining two expressions of one type (or a scalar with anything)
_OPERATORS = ("+", "-", "*")


@st.composite
def expression(draw: st.DrawFn, kind: str, depth: int, names: tuple[str, ...] = ()) -> str:
    """An expression of type ``kind`` (S, V or M) at most ``depth`` calls deep; ``names``
    are local variables (vectors) it may use besides ``x`` and ``A``."""
    if depth <= 0 or draw(st.integers(0, 4)) == 0:
        return draw(_leaf(kind, names))
    choice = draw(st.integers(0, 5))
    if choice == 0:  # an operator
        op = draw(st.sampled_from(_OPERATORS))
        left = draw(expression(kind, depth - 1, names))
        right = draw(expression(draw(st.sampled_from([kind, S])), depth - 1, names))
        return f"({left} {op} {right})"
    if choice == 1:  # a division by something kept away from zero
        left = draw(expression(kind, depth - 1, names))
        right = draw(expression(kind, depth - 1, names))
        return f"({left} / (1 + {right} ** 2))"
    rules = [r for r in RULES if r.result == kind]
    rule = draw(st.sampled_from(rules))
    args = [draw(expression(a, depth - 1, names)) for a in rule.args]
    return "(" + rule.template.format(*args) + ")"


@st.composite
def _leaf(draw: st.DrawFn, kind: str, names: tuple[str, ...]) -> str:
    if kind == S:
        return draw(
            st.sampled_from(["x[0]", "x[2]", "A[1, 2]", "sum(x)", "trace(A)", "0.7", "2.0"])
        )
    if kind == V:
        return draw(st.sampled_from(["x", "x", "A[0]", "A[:, 1]", *names]))
    return draw(st.sampled_from(["A", "A", "A.T", "outer(x, x)"]))


@dataclass(frozen=True)
class Program:
    source: str
    kind: str  # what it returns: S or V


@st.composite
def program(draw: st.DrawFn, depth: int = 3) -> Program:
    """A whole program: a bare expression, or a def with a few statements."""
    kind = draw(st.sampled_from([S, V]))
    if draw(st.booleans()):
        body = draw(expression(kind, depth))
        return Program(f"def f(x, A):\n    return {body}\n", kind)
    lines: list[str] = []
    names: tuple[str, ...] = ()
    for i in range(draw(st.integers(1, 2))):
        lines.append(f"t{i} = {draw(expression(V, depth - 1, names))}")
        names = (*names, f"t{i}")
    shape = draw(st.sampled_from(["plain", "if", "for"]))
    if shape == "if":  # data-dependent: the per-point path
        last = names[-1]
        lines += [
            f"if sum({last}) > 0:",
            f"    {last} = {draw(expression(V, depth - 1, names))}",
            "else:",
            f"    {last} = {draw(expression(V, depth - 1, names))}",
        ]
    elif shape == "for":
        last = names[-1]
        lines += ["for i in range(2):", f"    {last} = 0.5 * {last} + sin(x[i]) * x"]
    lines.append(f"return {draw(expression(kind, depth - 1, names))}")
    text = "".join(f"    {line}\n" for line in lines)
    return Program(f"def f(x, A):\n{text}", kind)


def corpus() -> list[tuple[str, str]]:
    """(name, source) of every saved program, sorted by name."""
    return [(p.stem, p.read_text()) for p in sorted(CORPUS.glob("*.txt"))]
