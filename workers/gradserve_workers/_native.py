"""Private: the compiled comparison kernel (``native/compare_rows.c``), when built.

:func:`compare_rows` reduces an element-wise derivative comparison to a few numbers
per row in one pass over memory, with exactly the IEEE operations of the eager
torch code in ``_check_impl`` (the tests compare the two bit for bit). The library
is plain C loaded with ``ctypes``; where it was not built (no C compiler at install
time) :data:`AVAILABLE` is false and the eager code runs instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["AVAILABLE", "RowStats", "compare_rows"]

# set to 1 to run the eager comparison even where the kernel is built (the tests
# compare the two; an operator can rule out the kernel when chasing a difference);
# read when the workers start
DISABLE_ENV = "GRADSERVE_NO_NATIVE"
_OFF = ("", "0", "false", "no", "off")

_HERE = Path(__file__).resolve().parent
SOURCE = _HERE / "native" / "compare_rows.c"


def source_id(source: Path = SOURCE) -> int:
    """What ``gs_compare_rows_source()`` returns for a library built from ``source``
    (``workers/setup.py`` defines it by the same rule); -1 without the source."""
    try:
        return int(hashlib.sha256(source.read_bytes()).hexdigest()[:15], 16)
    except OSError:
        return -1


_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_F64 = ctypes.c_double


def _load(expected: int | None = None) -> ctypes._NamedFuncPointer | None:
    """The kernel, if built from the source shipped beside it (``expected``: that
    source's id, computed when not given) and not ruled out by :data:`DISABLE_ENV`."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() not in _OFF:
        return None
    expected = source_id() if expected is None else expected
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _HERE / f"_compare_rows{suffix}"
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
                lib.gs_compare_rows_source.restype = ctypes.c_uint64
                if lib.gs_compare_rows_source() != expected:
                    return None  # a stale build: `make` (pip install -e) rebuilds it
                fn = lib.gs_compare_rows
            except (OSError, AttributeError):
                return None
            args: list[Any] = [_I64] * 3 + [_PTR, _I64, _I64, _I64] * 3 + [_PTR, _I64, _I64]
            args += [_F64] * 4
            fn.argtypes = args + [_PTR] * 6
            fn.restype = ctypes.c_int
            return fn
    return None


_KERNEL = _load()
AVAILABLE = _KERNEL is not None


@dataclass
class RowStats:
    """Per row of a (points, rows, cols) comparison, each of length points * rows."""

    err_max: torch.Tensor  # largest |other - ref|
    rel_max: torch.Tensor  # largest |other - ref| / max(|ref|, tiny)
    ratio_max: torch.Tensor  # largest error / allowed
    ratio_arg: torch.Tensor  # its first column
    screen_max: torch.Tensor  # largest |plus + minus - 2 f0| / allowed (0 without f0)
    row_ok: torch.Tensor  # error <= allowed in every column


def _usable(t: torch.Tensor | None) -> bool:
    if t is None:
        return True
    if t.device.type != "cpu" or t.dtype != torch.float64 or t.ndim != 3:
        return False
    # memory the kernel can read: dense and allocated (not a sparse tensor, nor one of
    # autograd's storage-free zero tensors, whose data pointer is null)
    return t.layout == torch.strided and (t.numel() == 0 or t.data_ptr() != 0)


def supports(*tensors: torch.Tensor | None) -> bool:
    """Whether :func:`compare_rows` can take these (N, R, C) operands as they are:
    the kernel is built, and each is a dense float64 tensor in CPU memory (any
    strides: a transposed operand is read through a row buffer, without a copy)."""
    return AVAILABLE and all(_usable(t) for t in tensors)


def compare_rows(
    plus: torch.Tensor,
    minus: torch.Tensor | None,
    other: torch.Tensor,
    twice_f0: torch.Tensor | None,
    two_eps: float,
    atol: float,
    rtol: float,
    tiny: float,
) -> RowStats | None:
    """The comparison's per-row numbers; ``None`` when an error or ratio is not
    finite (the generic comparison's rules cover those).

    ``plus`` is the reference when ``minus`` is ``None``, else the reference is
    ``(plus - minus) / two_eps``; ``twice_f0`` (N, 1, C) turns on the kink screen.
    Call only when :func:`supports` says so.
    """
    assert _KERNEL is not None and supports(plus, minus, other, twice_f0)
    n_pts, rows, cols = other.shape
    k = n_pts * rows
    out = [torch.empty(k, dtype=torch.float64) for _ in range(3)]
    arg = torch.empty(k, dtype=torch.int64)
    screen = torch.empty(k, dtype=torch.float64)
    ok = torch.empty(k, dtype=torch.uint8)

    def strided(t: torch.Tensor | None) -> tuple[int | None, int, int, int]:
        if t is None:
            return (None, 0, 0, 0)
        sp, sr, sc = t.stride()
        return (t.data_ptr(), sp, sr, sc)

    f0: tuple[int | None, int, int] = (None, 0, 0)
    if twice_f0 is not None:
        f0 = (twice_f0.data_ptr(), twice_f0.stride(0), twice_f0.stride(2))
    status = _KERNEL(
        n_pts,
        rows,
        cols,
        *strided(plus),
        *strided(minus),
        *strided(other),
        *f0,
        two_eps,
        atol,
        rtol,
        tiny,
        *(t.data_ptr() for t in (*out, arg, screen, ok)),
    )
    if status != 0:
        return None
    return RowStats(out[0], out[1], out[2], arg, screen, ok.bool())
