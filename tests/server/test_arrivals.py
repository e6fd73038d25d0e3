"""Arrivals (a pipelined stream's pieces, taken by ranges) and the SDK's row-by-row
cutting: the same checks as the whole path's PieceAssembler, made as pieces arrive."""

from __future__ import annotations

import numpy as np
import pytest

from gradserve import wire
from gradserve_server.arrivals import Arrivals


def _add(arrivals: Arrivals, slot: int, offset: int, data: bytes) -> None:
    arrivals.add(slot, offset, data)


def test_ranges_are_taken_as_they_become_whole_in_any_order() -> None:
    data = bytes(range(100))
    arrivals = Arrivals([100], [True])
    _add(arrivals, 0, 40, data[40:70])  # ahead of the rest: held, not whole
    assert arrivals.whole(0) == 0 and arrivals.held == 30
    _add(arrivals, 0, 0, data[:25])
    assert arrivals.whole(0) == 25
    assert arrivals.take(0, 10) == data[:10] and arrivals.held == 45
    _add(arrivals, 0, 25, data[25:40])
    assert arrivals.whole(0) == 70
    assert arrivals.take(0, 55) == data[10:55]  # across three pieces, one cut
    _add(arrivals, 0, 70, data[70:])
    assert arrivals.take(0, 100) == data[55:] and arrivals.held == 0
    arrivals.finish()


def test_a_whole_single_piece_is_taken_without_a_copy() -> None:
    blob = b"x" * 4096
    arrivals = Arrivals([4096], [True])
    _add(arrivals, 0, 0, blob)
    assert arrivals.take(0, 4096) is blob


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ([(0, 0, 8), (0, 4, 8)], "overlaps"),  # into the previous piece
        ([(0, 8, 8), (0, 4, 8)], "overlaps"),  # into the next one
        ([(0, 0, 16), (0, 8, 4)], "overlaps"),  # inside one
        ([(0, 28, 8)], "overruns slot 0"),
        ([(2, 0, 8)], "slot 2"),
    ],
)
def test_bad_pieces_are_refused_as_they_arrive(
    pieces: list[tuple[int, int, int]], message: str
) -> None:
    arrivals = Arrivals([32, 32], [True, True])
    with pytest.raises(wire.WireError, match=message):
        for slot, offset, size in pieces:
            _add(arrivals, slot, offset, b"\0" * size)


def test_bytes_already_taken_cannot_arrive_again() -> None:
    arrivals = Arrivals([32], [True])
    _add(arrivals, 0, 0, b"\0" * 16)
    arrivals.take(0, 16)
    with pytest.raises(wire.WireError, match="overlaps"):
        _add(arrivals, 0, 8, b"\0" * 8)


def test_a_stream_that_ends_early_is_refused() -> None:
    arrivals = Arrivals([32], [True])
    _add(arrivals, 0, 0, b"\0" * 8)
    _add(arrivals, 0, 16, b"\0" * 8)
    with pytest.raises(wire.WireError, match="received 16 of 32 bytes"):
        arrivals.finish()


def test_an_unused_slot_is_checked_and_dropped() -> None:
    arrivals = Arrivals([8, 64], [True, False])
    _add(arrivals, 1, 0, b"\0" * 64)
    assert arrivals.held == 0 and arrivals.whole(1) == 64
    with pytest.raises(wire.WireError, match="overlaps"):
        _add(arrivals, 1, 0, b"\0" * 8)


def test_too_many_pieces_are_refused() -> None:
    arrivals = Arrivals([2048], [True])
    with pytest.raises(wire.WireError, match="more than"):
        for i in range(arrivals.max_pieces + 1):
            _add(arrivals, 0, i, b"\0")


def test_rows_are_cut_across_slots_and_tile_each_one() -> None:
    x = np.arange(5000 * 3, dtype=np.float64).reshape(5000, 3)
    y = np.arange(5000, dtype=np.float32).reshape(5000, 1)
    pieces = list(wire.split_rows([x.data.cast("B"), y.data.cast("B")], 5000, size=16384))
    # rows of both slots alternate: neither slot is sent whole before the other starts
    assert [p.slot for p in pieces[:4]] == [0, 1, 0, 1]
    assert all(len(p.data) <= 16384 for p in pieces)
    blobs = wire.join_pieces([wire.encode(x), wire.encode(y)], pieces)
    assert blobs == [x.tobytes(), y.tobytes()]
