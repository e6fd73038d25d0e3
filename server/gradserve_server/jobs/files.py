"""Result arrays on disk: one ``.npy`` file per chunk and output, written atomically.

A file is written to a temporary name, fsynced, renamed over its final name and its
directory fsynced: after a crash a result file is either whole or absent, never
torn. Reading streams a file's raw bytes piece by piece, so a job's results never
sit in server memory whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as little-endian ``.npy`` at ``path``, whole or not at all."""
    arr = np.asarray(arr, order="C")  # keeps a 0-d array 0-d (ascontiguousarray would not)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_chunk(
    directory: Path, prefix: str, outputs: Mapping[str, Mapping[str, np.ndarray]]
) -> list[dict[str, Any]]:
    """Store one chunk's outputs (op -> key -> array); returns their manifest.

    Files are named by position, not by key (keys like ``"a,b"`` are not file names);
    the manifest maps them back. Everything is durable when this returns.
    """
    directory.mkdir(parents=True, exist_ok=True)
    manifest: list[dict[str, Any]] = []
    for op, by_key in outputs.items():
        for key, arr in by_key.items():
            name = f"{prefix}-{len(manifest):03d}.npy"
            save_atomic(directory / name, arr)
            manifest.append(
                {
                    "op": op,
                    "key": key,
                    "file": name,
                    "dtype": np.dtype(arr.dtype).name,
                    "shape": [int(d) for d in arr.shape],
                }
            )
    fsync_dir(directory)
    fsync_dir(directory.parent)  # a freshly made task directory must survive too
    return manifest


def remove_temporaries(root: Path) -> int:
    """Delete half-written files a crash left behind; returns how many."""
    count = 0
    for path in root.rglob("*" + TMP_SUFFIX):
        path.unlink(missing_ok=True)
        count += 1
    return count


class NpyReader:
    """The raw C-order bytes of one ``.npy`` file, read in pieces."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            version = np.lib.format.read_magic(self._file)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(self._file)
        except Exception:
            self._file.close()
            raise
        if fortran or dtype.byteorder == ">":
            self._file.close()
            raise ValueError(f"{path}: not a little-endian C-order array")
        self.shape = tuple(shape)
        self.dtype = dtype
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._left = self.nbytes

    def next_piece(self, size: int) -> bytes:
        """Up to ``size`` of the array's bytes; empty once all were read."""
        data = self._file.read(min(size, self._left))
        if len(data) < min(size, self._left):
            raise ValueError(f"{self._file.name}: result file ends early")
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()
