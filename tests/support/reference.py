"""Derivatives that do not share torch's autograd: the tests' independent oracle.

Every function here differentiates by *evaluating* the function, never by asking an
autodiff engine: central differences refined by Richardson extrapolation in float64,
and the complex step where the function accepts complex arguments. A torch function
is evaluated under ``torch.no_grad()`` (see :func:`from_torch`), so a wrong derivative
rule in torch cannot leak into the reference.

The function ``f`` maps one point ``x`` (a float64 array of any shape) to an array (or a
float). Results have the service's shapes (see docs/sdk.md):

=============================  ==================================================
``gradient(f, x)``             ``x.shape`` (``f`` scalar)
``jacobian(f, x)``             ``out_shape + x.shape``
``hessian(f, x)``              ``x.shape + x.shape`` (``f`` scalar)
``jvp(f, x, v)``               ``out_shape``, ``v`` like ``x``
``vjp(f, x, u)``               ``x.shape``, ``u`` like the output
``hvp(f, x, v)``               ``x.shape``, ``v`` like ``x`` (``f`` scalar)
=============================  ==================================================

Several inputs: :class:`Packed` turns a function of named inputs into a function of one
flat vector and splits results back per input.

Accuracy: each estimate is a Richardson table over step sizes ``h, h/2, h/4, ...``;
the ``*_error`` companions return an error estimate (the change of the table's last
refinement, plus the evaluations' rounding amplified by the smallest step) so a
caller can set a tolerance from it.
The step ``h`` is relative (``h * (1 + |x_i|)``); pass a smaller one when ``x ± h``
would leave the function's domain.

``vectorized=True`` says ``f`` takes a stack of points ``(k, *x.shape)`` and returns
``(k, *out_shape)``: every evaluation of one estimate then runs in one call.

>>> import numpy as np
>>> f = lambda x: np.sin(x[0]) * x[1] ** 2
>>> x = np.array([0.3, 2.0])
>>> np.allclose(gradient(f, x), [np.cos(0.3) * 4, np.sin(0.3) * 4], atol=1e-10)
True
>>> np.allclose(hessian(f, x), [[-np.sin(0.3) * 4, np.cos(0.3) * 4],
...                             [np.cos(0.3) * 4, np.sin(0.3) * 2]], atol=1e-8)
True
>>> np.allclose(complex_step_jacobian(np.sin, x), np.diag(np.cos(x)), atol=1e-15)
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Packed",
    "complex_step_gradient",
    "complex_step_jacobian",
    "from_torch",
    "gradient",
    "hessian",
    "hessian_error",
    "hvp",
    "jacobian",
    "jacobian_error",
    "jvp",
    "richardson",
    "vjp",
]

Array = np.ndarray
Fn = Callable[[Array], Any]

DEFAULT_STEP = 0.02
DEFAULT_LEVELS = 5


def richardson(
    estimate: Callable[[float], Array], h: float, levels: int = DEFAULT_LEVELS
) -> tuple[Array, Array]:
    """Extrapolate ``estimate(h)`` (an even-power error series ``c1 h² + c2 h⁴ + ...``,
    as central differences have) to ``h -> 0``; return ``(value, error)``.

    The table halves the step ``levels - 1`` times; ``error`` is the elementwise change
    between the two most refined diagonal entries (an estimate of the value's error,
    not a bound).

    >>> value, err = richardson(lambda h: np.array([(np.exp(h) - np.exp(-h)) / (2 * h)]), 0.5)
    >>> bool(abs(value[0] - 1.0) < 1e-12), bool(err[0] < 1e-9)
    (True, True)
    """
    if levels < 2:
        raise ValueError("richardson needs at least two levels")
    prev: list[Array] = [np.asarray(estimate(h), dtype=np.float64)]
    err = np.full_like(prev[0], np.inf)
    for i in range(1, levels):
        row = [np.asarray(estimate(h / 2**i), dtype=np.float64)]
        for j in range(1, i + 1):
            factor = 4.0**j
            row.append(row[j - 1] + (row[j - 1] - prev[j - 1]) / (factor - 1))
        err = np.abs(row[-1] - prev[-1])
        prev = row
    return prev[-1], err


# function evaluations carry rounding of about this many float64 epsilons of their
# magnitude (a few dozen operations); the extrapolation amplifies it a little more
EVALUATION_ROUNDING = 64


def _rounding(magnitude: Sequence[float], smallest_step: float, order: int) -> float:
    """What rounding in the evaluations contributes to a difference quotient of the
    given order at the smallest (relative) step: Richardson's own error estimate misses
    it, as it sees only the change between refinements."""
    eps = float(np.finfo(np.float64).eps)
    return EVALUATION_ROUNDING * eps * max(magnitude, default=0.0) / smallest_step**order


def _as_point(x: Any) -> Array:
    return np.array(x, dtype=np.float64)


def _steps(x: Array, h: float) -> Array:
    return h * (1.0 + np.abs(x))


def _evaluate(f: Fn, points: Sequence[Array], vectorized: bool) -> list[Array]:
    if vectorized:
        out = np.asarray(f(np.stack(points)), dtype=np.float64)
        return list(out)
    return [np.asarray(f(p), dtype=np.float64) for p in points]


def _central(
    f: Fn,
    x: Array,
    directions: Array,
    h: float,
    levels: int,
    vectorized: bool,
) -> tuple[Array, Array]:
    """d/dt f(x + t d) at t = 0 for each row ``d`` of ``directions`` (shape
    ``(k, *x.shape)``, already scaled); returns ``(k, *out_shape)`` and its error."""

    magnitude: list[float] = []

    def estimate(step: float) -> Array:
        points = [x + step * d for d in directions] + [x - step * d for d in directions]
        vals = _evaluate(f, points, vectorized)
        magnitude.append(max((float(np.max(np.abs(v))) if v.size else 0.0) for v in vals))
        k = len(directions)
        return np.stack([(vals[i] - vals[k + i]) / (2 * step) for i in range(k)])

    value, err = richardson(estimate, h, levels)
    return value, err + _rounding(magnitude, h / 2 ** (levels - 1), 1)


def _direction_scale(x: Array, v: Array) -> float:
    """A factor that makes the direction ``v`` as long as the relative steps along axes."""
    vmax = float(np.max(np.abs(v))) if v.size else 0.0
    return (1.0 + (float(np.max(np.abs(x))) if x.size else 0.0)) / (vmax or 1.0)


def _unit_directions(x: Array, h: float) -> tuple[Array, Array]:
    """One scaled unit direction per element of ``x``, and the scales."""
    scales = _steps(x, h).reshape(-1) / h
    eye = np.eye(x.size) * scales[:, None]
    return eye.reshape((x.size, *x.shape)), scales


def jacobian_error(
    f: Fn,
    x: Any,
    *,
    h: float = DEFAULT_STEP,
    levels: int = DEFAULT_LEVELS,
    vectorized: bool = False,
) -> tuple[Array, Array]:
    """:func:`jacobian` and its elementwise error estimate (same shape)."""
    x = _as_point(x)
    dirs, scales = _unit_directions(x, h)
    cols, err = _central(f, x, dirs, h, levels, vectorized)  # (n, *out)
    shape = (x.size, *cols.shape[1:])
    cols = cols.reshape(shape) / scales.reshape((-1,) + (1,) * (len(shape) - 1))
    err = err.reshape(shape) / scales.reshape((-1,) + (1,) * (len(shape) - 1))
    out_shape = cols.shape[1:]
    jac = np.moveaxis(cols, 0, -1).reshape((*out_shape, *x.shape))
    jerr = np.moveaxis(err, 0, -1).reshape((*out_shape, *x.shape))
    return jac, jerr


def jacobian(
    f: Fn,
    x: Any,
    *,
    h: float = DEFAULT_STEP,
    levels: int = DEFAULT_LEVELS,
    vectorized: bool = False,
) -> Array:
    """The Jacobian ``out_shape + x.shape`` of ``f`` at ``x`` by Richardson-extrapolated
    central differences (one pair of evaluations per element of ``x`` per level)."""
    return jacobian_error(f, x, h=h, levels=levels, vectorized=vectorized)[0]


def gradient(
    f: Fn,
    x: Any,
    *,
    h: float = DEFAULT_STEP,
    levels: int = DEFAULT_LEVELS,
    vectorized: bool = False,
) -> Array:
    """The gradient (shape of ``x``) of a scalar ``f``."""
    jac = jacobian(f, x, h=h, levels=levels, vectorized=vectorized)
    x = _as_point(x)
    if jac.size != x.size:
        raise ValueError(
            f"gradient: f returns shape {jac.shape[: jac.ndim - x.ndim]}, not a scalar"
        )
    return jac.reshape(x.shape)


def jvp(
    f: Fn,
    x: Any,
    v: Any,
    *,
    h: float = DEFAULT_STEP,
    levels: int = DEFAULT_LEVELS,
    vectorized: bool = False,
) -> Array:
    """``J v``: the derivative of ``f`` along ``v`` (shape of the output)."""
    x, v = _as_point(x), _as_point(v)
    c = _direction_scale(x, v)
    d, _ = _central(f, x, (v * c)[None], h, levels, vectorized)
    return np.asarray(d[0] / c)


def vjp(
    f: Fn,
    x: Any,
    u: Any,
    *,
    h: float = DEFAULT_STEP,
    levels: int = DEFAULT_LEVELS,
    vectorized: bool = False,
) -> Array:
    """``uᵀ J`` (shape of ``x``): the gradient of ``x -> <u, f(x)>``."""
    u_arr = _as_point(u)

    def projected(p: Array) -> Any:
        out = np.asarray(f(p), dtype=np.float64)
        if vectorized:
            return (out * u_arr).reshape(out.shape[0], -1).sum(axis=1)
        return float((out * u_arr).sum())

    return gradient(projected, x, h=h, levels=levels, vectorized=vectorized)


def _second(
    f: Fn,
    x: Array,
    pairs: Sequence[tuple[Array, Array]],
    h: float,
    levels: int,
    vectorized: bool,
) -> tuple[Array, Array]:
    """The mixed second derivative ``d²/ds dt f(x + s a + t b)`` at 0 for each pair
    ``(a, b)`` of (scaled) directions, by the four-point formula."""

    def estimate(step: float) -> Array:
        points = []
        for a, b in pairs:
            sa, sb = step * a, step * b
            points += [x + sa + sb, x + sa - sb, x - sa + sb, x - sa - sb]
        vals = _evaluate(f, points, vectorized)
        magnitude.append(max((float(np.max(np.abs(v))) if v.size else 0.0) for v in vals))
        return np.stack(
            [
                (vals[4 * i] - vals[4 * i + 1] - vals[4 * i + 2] + vals[4 * i + 3])
                / (4 * step * step)
                for i in range(len(pairs))
            ]
        )

    magnitude: list[float] = []
    value, err = richardson(estimate, h, levels)
    return value, err + _rounding(magnitude, h / 2 ** (levels - 1), 2)


def hessian_error(
    f: Fn,
    x: Any,
    *,
    h: float = DEFAULT_STEP,
    levels: int = DEFAULT_LEVELS,
    vectorized: bool = False,
) -> tuple[Array, Array]:
    """:func:`hessian` and its elementwise error estimate."""
    x = _as_point(x)
    dirs, scales = _unit_directions(x, h)
    n = x.size
    pairs = [(dirs[i], dirs[j]) for i in range(n) for j in range(i, n)]
    vals, errs = _second(f, x, pairs, h, levels, vectorized)
    hess = np.zeros((n, n))
    herr = np.zeros((n, n))
    k = 0
    for i in range(n):
        for j in range(i, n):
            s = scales[i] * scales[j]
            hess[i, j] = hess[j, i] = float(np.asarray(vals[k]).reshape(())) / s
            herr[i, j] = herr[j, i] = float(np.asarray(errs[k]).reshape(())) / s
            k += 1
    return hess.reshape(x.shape + x.shape), herr.reshape(x.shape + x.shape)


def hessian(
    f: Fn,
    x: Any,
    *,
    h: float = DEFAULT_STEP,
    levels: int = DEFAULT_LEVELS,
    vectorized: bool = False,
) -> Array:
    """The Hessian ``x.shape + x.shape`` of a scalar ``f``: four-point mixed second
    differences (symmetric by construction), Richardson-extrapolated."""
    return hessian_error(f, x, h=h, levels=levels, vectorized=vectorized)[0]


def hvp(
    f: Fn,
    x: Any,
    v: Any,
    *,
    h: float = DEFAULT_STEP,
    levels: int = DEFAULT_LEVELS,
    vectorized: bool = False,
) -> Array:
    """``H v`` (shape of ``x``) of a scalar ``f``: mixed second differences along each
    unit direction and ``v``."""
    x, v = _as_point(x), _as_point(v)
    dirs, scales = _unit_directions(x, h)
    c = _direction_scale(x, v)
    vals, _ = _second(f, x, [(d, v * c) for d in dirs], h, levels, vectorized)
    return (np.asarray(vals).reshape(x.size) / (scales * c)).reshape(x.shape)


# -- complex step ---------------------------------------------------------------------

COMPLEX_STEP = 1e-30


def complex_step_jacobian(f: Fn, x: Any, *, h: float = COMPLEX_STEP) -> Array:
    """The Jacobian by the complex step ``Im f(x + i h e_j) / h``: no cancellation, so
    exact to rounding, for ``f`` analytic and written for complex arguments (no
    ``abs``, comparisons, or conjugation; numpy's elementwise functions are fine)."""
    x = _as_point(x)
    cols = []
    for j in range(x.size):
        z = x.astype(np.complex128).reshape(-1)
        z[j] += 1j * h
        cols.append(np.imag(np.asarray(f(z.reshape(x.shape)), dtype=np.complex128)) / h)
    stacked = np.stack(cols)  # (n, *out)
    return np.moveaxis(stacked, 0, -1).reshape((*stacked.shape[1:], *x.shape))


def complex_step_gradient(f: Fn, x: Any, *, h: float = COMPLEX_STEP) -> Array:
    """The gradient of a scalar ``f`` by the complex step (see :func:`complex_step_jacobian`)."""
    x = _as_point(x)
    return complex_step_jacobian(f, x, h=h).reshape(x.shape)


# -- several inputs -------------------------------------------------------------------


class Packed:
    """A function of named inputs seen as a function of one flat float64 vector.

    ``wrt`` inputs are concatenated (flattened, in order) into the vector; the others
    are held at their values. ``split`` cuts a result whose trailing axis runs over the
    vector back into one array per ``wrt`` input.

    >>> p = Packed(lambda a, b: a * b.sum(), {"a": np.ones(2), "b": np.arange(3.0)}, ["b"])
    >>> p.x.tolist(), p.f(np.array([1.0, 1.0, 1.0])).tolist()
    ([0.0, 1.0, 2.0], [3.0, 3.0])
    >>> sorted(p.split(np.zeros((2, 3))).items())[0][1].shape
    (2, 3)
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: Mapping[str, Any],
        wrt: Sequence[str] | None = None,
        *,
        vectorized: bool = False,
    ) -> None:
        self.names = tuple(inputs)
        self.inputs = {k: _as_point(v) for k, v in inputs.items()}
        self.wrt = tuple(self.names if wrt is None else wrt)
        self.shapes = {w: self.inputs[w].shape for w in self.wrt}
        self.sizes = [int(np.prod(self.shapes[w], dtype=int)) for w in self.wrt]
        self.x = (
            np.concatenate([self.inputs[w].reshape(-1) for w in self.wrt])
            if self.wrt
            else np.zeros(0)
        )
        self._fn = fn
        self._vectorized = vectorized

    def unpack(self, flat: Array) -> dict[str, Array]:
        """Named inputs with the ``wrt`` ones taken from ``flat`` (one point, or a stack
        of points when the leading axis is extra)."""
        lead = flat.shape[:-1]
        args = dict(self.inputs)
        for w, part in zip(self.wrt, self.split(flat).values(), strict=True):
            args[w] = part.reshape((*lead, *self.shapes[w]))
        if lead:  # a stack of points: hold the other inputs fixed at every point
            for n in self.names:
                if n not in self.wrt:
                    args[n] = np.broadcast_to(self.inputs[n], (*lead, *self.inputs[n].shape))
        return args

    def f(self, flat: Array) -> Any:
        """The function at the vector ``flat`` (or at each row, when vectorized)."""
        args = self.unpack(flat)
        return self._fn(*(args[n] for n in self.names))

    def split(self, arr: Array, axis: int = -1) -> dict[str, Array]:
        """Cut ``arr`` along ``axis`` (which runs over the vector) into one piece per
        ``wrt`` input, reshaped to that input's shape in place of the axis."""
        arr = np.asarray(arr)
        axis = axis % arr.ndim
        out = {}
        offset = 0
        for w, size in zip(self.wrt, self.sizes, strict=True):
            piece = np.take(arr, np.arange(offset, offset + size), axis=axis)
            shape = arr.shape[:axis] + self.shapes[w] + arr.shape[axis + 1 :]
            out[w] = piece.reshape(shape)
            offset += size
        return out

    def flatten(self, per_input: Mapping[str, Any]) -> Array:
        """The inverse of ``split`` for arrays shaped like the ``wrt`` inputs."""
        return np.concatenate([np.asarray(per_input[w], np.float64).reshape(-1) for w in self.wrt])


def from_torch(fn: Callable[..., Any], *, vectorized: bool = False) -> Callable[..., Array]:
    """A torch callable evaluated in float64 under ``torch.no_grad()`` (no autograd
    graph is ever built), taking and returning numpy arrays.

    ``vectorized=True``: ``fn`` is a per-point function and the arguments carry a
    leading axis of points; it is mapped with ``torch.func.vmap`` (forward batching
    only, no differentiation), or a Python loop when ``vmap`` refuses the function
    (data-dependent control flow).
    """
    import torch

    def tensors(args: Sequence[Array]) -> list[Any]:
        return [torch.from_numpy(np.array(a, dtype=np.float64)) for a in args]

    def one(*args: Array) -> Array:
        with torch.no_grad():
            return np.asarray(fn(*tensors(args)).detach().numpy(), dtype=np.float64)

    if not vectorized:
        return one

    def loop(*args: Array) -> Array:
        return np.stack([one(*(a[i] for a in args)) for i in range(args[0].shape[0])])

    def mapped(*args: Array) -> Array:
        with torch.no_grad():
            try:
                out = torch.func.vmap(fn)(*tensors(args))
            except Exception:  # e.g. data-dependent control flow: one point at a time
                return loop(*args)
            return np.asarray(out.detach().numpy(), dtype=np.float64)

    return mapped
