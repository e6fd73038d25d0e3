"""A worker keeps the shared-memory segments it mapped for its next calls (page
faults of a fresh mapping cost ~4 ms a chunk), but never past the segment's life:
a segment unlinked, replaced under its name or resized is mapped afresh, and an
unlinked one is let go at the next lookup, whichever key that is for."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from gradserve_workers import shm as segments

MakeSegment = Callable[..., str]


@pytest.fixture
def make_segment() -> Iterator[MakeSegment]:
    made: list[str] = []

    def make(size: int = 1 << 16, fill: int = 0, key: str | None = None) -> str:
        key = key or f"gradserve_kept_{secrets.token_hex(6)}"
        with open(segments.SHM_DIR / key, "wb") as f:
            f.write(bytes([fill]) * size)
        made.append(key)
        return key

    _forget()
    yield make
    for key in made:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segments.SHM_DIR / key)
    _forget()


def _forget() -> None:
    """No kept mapping and no sweep scheduled (another test's SWEEP_SECONDS)."""
    with segments._kept_lock:
        segments._kept.clear()
        if segments._sweeping is not None:
            segments._sweeping.cancel()
            segments._sweeping = None


def test_a_kept_mapping_is_reused(make_segment: MakeSegment) -> None:
    key = make_segment()
    first = segments.mapped(key)
    assert segments.mapped(key) is first
    # what one call's worker wrote, the next call's reads through the same mapping
    segments.view(first, segments.Placed(key, 0, (4,), "float64"), writeable=True)[:] = 7.0
    again = segments.view(segments.mapped(key), segments.Placed(key, 0, (4,), "float64"))
    assert again.tolist() == [7.0] * 4


def test_a_segment_replaced_under_its_name_is_mapped_afresh(make_segment: MakeSegment) -> None:
    key = make_segment(fill=1)
    old = segments.mapped(key)
    os.unlink(segments.SHM_DIR / key)
    make_segment(fill=2, key=key)
    new = segments.mapped(key)
    assert new is not old and new[0] == 2


def test_a_resized_segment_is_mapped_afresh(make_segment: MakeSegment) -> None:
    key = make_segment(size=4096)
    old = segments.mapped(key)
    os.truncate(segments.SHM_DIR / key, 8192)
    new = segments.mapped(key)
    assert new is not old and len(new) == 8192


def test_an_unlinked_segment_is_let_go_at_the_next_lookup(make_segment: MakeSegment) -> None:
    gone, other = make_segment(), make_segment()
    segments.mapped(gone)
    os.unlink(segments.SHM_DIR / gone)
    segments.mapped(other)  # any lookup sweeps
    assert gone not in segments._kept and other in segments._kept
    with pytest.raises(segments.SegmentError) as info:
        segments.mapped(gone)
    assert info.value.missing


def test_a_sweep_lets_go_of_an_unlinked_segment_without_a_lookup(
    make_segment: MakeSegment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that gets no more calls does not keep a closed client's memory."""
    monkeypatch.setattr(segments, "SWEEP_SECONDS", 0.05)
    key = make_segment()
    segments.mapped(key)
    os.unlink(segments.SHM_DIR / key)
    deadline = time.monotonic() + 5
    while key in segments._kept and time.monotonic() < deadline:
        time.sleep(0.02)
    assert key not in segments._kept
    time.sleep(0.2)  # nothing kept: the sweeps stop
    assert segments._sweeping is None


def test_at_most_so_many_mappings_are_kept(make_segment: MakeSegment) -> None:
    keys = [make_segment(size=4096) for _ in range(segments.MAPPINGS_KEPT + 3)]
    for key in keys:
        segments.mapped(key)
    assert list(segments._kept) == keys[-segments.MAPPINGS_KEPT :]


def test_shared_arrays_read_through_kept_mappings(make_segment: MakeSegment) -> None:
    key = make_segment()
    x = np.arange(6.0)
    segments.view(segments.mapped(key), segments.Placed(key, 64, (6,), "float64"), True)[:] = x
    for _ in range(2):  # two calls' payloads, as a worker receives them
        arrays = segments.SharedArrays(
            {"x": segments.Placed(key, 64, (6,), "float64")}, {}, segments.host_identity()
        )
        assert arrays["x"].tolist() == x.tolist()
    assert key in segments._kept
