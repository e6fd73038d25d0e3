"""Points drawn from a declared distribution, reproducible by seed (NumPy's PCG64).

Counts and shapes are checked with Python integers before anything is drawn (see
:meth:`gradserve_server.budgets.Budgets.estimate_samples` for the budgets), and a
distribution's parameters must be finite numbers whose range is finite too.
"""

from __future__ import annotations

import math

import numpy as np

from gradserve.names import DTYPE_BY_NUMBER
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.budgets import sample_cost
from gradserve_server.errors import exhausted, invalid


def draw(spec: pb.SampleSpec, where: str, max_elements: int) -> np.ndarray:
    """``count`` points of ``shape``: an array of shape ``(count, *shape)``."""
    cost = sample_cost(spec, where)  # Python ints: [3, 2**62 + ...] cannot wrap
    if cost.elements > max_elements:
        raise exhausted(
            f"{where}: {cost.elements} sampled elements is over the limit of {max_elements}"
        )
    rng = np.random.default_rng(int(spec.seed))
    size = (cost.count, *cost.shape)
    which = spec.distribution.WhichOneof("dist")
    if which == "normal":
        d = spec.distribution.normal
        if not (math.isfinite(d.mean) and math.isfinite(d.std)):
            raise invalid(f"{where}: normal needs a finite mean and std, got ({d.mean}, {d.std})")
        if d.std < 0:
            raise invalid(f"{where}: normal std must be >= 0, not {d.std}", where)
        arr = rng.normal(d.mean, d.std, size=size)
    elif which == "uniform" or which is None:
        u = spec.distribution.uniform
        low, high = (u.low, u.high) if which else (0.0, 1.0)
        if not high > low:
            raise invalid(f"{where}: uniform needs low < high, got [{low}, {high})", where)
        if not math.isfinite(high - low):
            raise invalid(
                f"{where}: uniform [{low}, {high}) is wider than a float64 can hold; "
                "give finite bounds less than about 1.8e308 apart",
                where,
            )
        arr = rng.uniform(low, high, size=size)
    else:  # pragma: no cover - a future distribution this server does not know
        raise invalid(f"{where}: unknown distribution {which}", where)
    dtype = DTYPE_BY_NUMBER.get(spec.dtype, "float64")
    return np.ascontiguousarray(arr, dtype=dtype)
