"""A/B of the wire-path changes, interleaved in one process (robust to a noisy machine).

A: the previous code (PieceAssembler reassembly; np.concatenate + tobytes for replies).
B: the current ``wire.join_pieces`` (decoded straight from the joined bytes) and
``wire.join_arrays`` + ``encode``.

Run: ``python benchmarks/wire_ab.py [POINTS]`` (default 1,000,000 points x 10 float64).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb


def _old_fill(slots: Sequence[pb.Tensor], pieces: Sequence[pb.TensorPiece]) -> Any:
    assembler = wire.PieceAssembler([wire.expected_bytes(t) for t in slots])
    for piece in pieces:
        assembler.add(piece)
    for tensor, blob in zip(slots, assembler.finish(), strict=True):
        tensor.data = blob
    return wire.decode(slots[0])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    x = np.random.default_rng(0).standard_normal((n, 10))
    pieces = list(wire.split_pieces([x.data.cast("B")]))
    chunks = np.array_split(x, 6)

    def fill(old: bool) -> Any:
        header = wire.encode(x, with_data=False)
        if old:
            return _old_fill([header], pieces)
        return wire.decode(header, data=wire.join_pieces([header], pieces)[0])

    cases: dict[str, Callable[[], Any]] = {
        "A reassemble": lambda: fill(True),
        "B reassemble": lambda: fill(False),
        "A reply": lambda: wire.encode(np.concatenate(chunks)),
        "B reply": lambda: wire.encode(wire.join_arrays(chunks)),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(7):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:14s} {v * 1e3:8.1f} ms")
    print(
        f"{n:,} x 10 float64: reassembly {med['A reassemble'] / med['B reassemble']:.2f}x, "
        f"reply encode {med['A reply'] / med['B reply']:.2f}x faster"
    )


if __name__ == "__main__":
    main()
