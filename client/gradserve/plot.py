"""Plot a function and its derivative (needs the ``plot`` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_derivative(
    x: Any,
    y: Any,
    dy: Any,
    path: str | Path,
    *,
    label: str = "f",
    title: str | None = None,
) -> Path:
    """Save a PNG of ``y = f(x)`` and ``dy = f'(x)`` over a 1-d grid; returns the path.

    >>> import numpy as np, tempfile, os
    >>> x = np.linspace(0, 1, 5)
    >>> p = plot_derivative(x, x**2, 2*x, os.path.join(tempfile.mkdtemp(), "sq.png"))
    >>> p.stat().st_size > 0
    True
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "gradserve.plot needs matplotlib: pip install 'gradserve[plot]'"
        ) from None
    x, y, dy = (np.asarray(a, dtype=float).reshape(-1) for a in (x, y, dy))
    if not len(x) == len(y) == len(dy):
        raise ValueError(
            f"plot_derivative(x, y, dy): lengths differ ({len(x)}, {len(y)}, {len(dy)})"
        )
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, y, label=f"{label}(x)")
    ax.plot(x, dy, label=f"{label}'(x)", linestyle="--")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("x")
    ax.legend()
    ax.set_title(title or f"{label} and its derivative")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
