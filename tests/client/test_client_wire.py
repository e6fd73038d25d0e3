"""Tensors on the wire: raw little-endian bytes, exact round trips, pieces that tile."""

from __future__ import annotations

import numpy as np
import pytest

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb


@pytest.mark.parametrize("dtype", ["float32", "float64", ">f8"])
def test_round_trip_is_exact(dtype: str) -> None:
    arr = np.arange(24, dtype=dtype).reshape(2, 3, 4) / 7
    msg = wire.encode(arr)
    assert len(msg.data) == arr.size * arr.itemsize
    back = wire.decode(msg)
    np.testing.assert_array_equal(back, arr)
    assert back.dtype.byteorder in "<="


def test_bytes_are_little_endian() -> None:
    msg = wire.encode(np.array([1.0], dtype=np.float64))
    assert msg.data == bytes.fromhex("000000000000f03f")


def test_wrong_size_is_refused() -> None:
    msg = pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[3], data=b"\0" * 16)
    with pytest.raises(wire.WireError, match="needs 24 bytes, got 16"):
        wire.decode(msg, "input 'x'")


def test_ints_become_float64_and_strings_are_refused() -> None:
    assert wire.as_float_array([1, 2]).dtype == np.float64
    with pytest.raises(wire.WireError, match="expected numbers"):
        wire.as_float_array(["a"])


def test_pieces_tile_each_slot() -> None:
    blobs = [b"a" * (wire.PIECE_BYTES * 2 + 5), b"", b"xyz"]
    pieces = list(wire.split_pieces(blobs))
    assert all(len(p.data) <= wire.PIECE_BYTES for p in pieces)
    asm = wire.PieceAssembler([len(b) for b in blobs])
    for p in reversed(pieces):
        asm.add(p)
    assert asm.finish() == blobs


def test_missing_piece_is_detected() -> None:
    asm = wire.PieceAssembler([10])
    asm.add(pb.TensorPiece(slot=0, offset=0, data=b"12345"))
    with pytest.raises(wire.WireError, match="received 5 of 10"):
        asm.finish()
    with pytest.raises(wire.WireError, match="overruns"):
        asm.add(pb.TensorPiece(slot=0, offset=8, data=b"123"))
