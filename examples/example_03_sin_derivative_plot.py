"""The derivative of sin over arange(-10, 10, 0.1), batched, is cos; saves a plot."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import gradserve
from gradserve.plot import plot_derivative


def run(client: gradserve.Client, out_dir: str | None = None) -> Path:
    x = np.arange(-10, 10, 0.1)
    result = client.compute("sin(x)", {"x": x}, ["value", "grad"], batched=True)
    np.testing.assert_allclose(result["grad"], np.cos(x), atol=1e-12)
    meta = result.metadata
    print(f"{len(x)} points, ran {meta.execution_path} on {meta.chunks} chunk(s)")
    path = plot_derivative(
        x, result["value"], result["grad"],
        Path(out_dir or tempfile.mkdtemp()) / "sin_derivative.png", label="sin",
    )  # fmt: skip
    print("plot saved to", path)
    return path


def test_example(client: gradserve.Client, tmp_path: Path) -> None:
    path = run(client, str(tmp_path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


if __name__ == "__main__":
    with gradserve.Client() as c:
        run(c, sys.argv[1] if len(sys.argv) > 1 else os.getcwd())
