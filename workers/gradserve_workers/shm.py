"""POSIX shared-memory segments mapped by name, torch-free.

The server maps a client's registered segment to validate a call's inputs in
place, and a worker on the same host maps the same segment to read them with no
copy (the arrays travel to the worker as names and offsets, see
:class:`SharedArrays`). Segments are opened through ``/dev/shm`` with ``mmap``
rather than ``multiprocessing.shared_memory``, whose resource tracker (Python <
3.13) unlinks a segment it merely attached to when the attaching process exits:
nothing here ever unlinks a segment it did not create.
"""

from __future__ import annotations

import mmap
import os
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHM_DIR = Path("/dev/shm")
# Keys a client may register: the server is never pointed at other programs'
# segments (Ray's object store, another service's), only at ones made for it.
KEY_PREFIX = "gradserve"
_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


class SegmentError(ValueError):
    """A segment that cannot be mapped here; ``missing``: no segment of that name."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class RegionGone(SegmentError):
    """A worker found the caller's segment gone mid-call (its client unlinked it): the
    caller's doing, reported as such (actor.classify: INVALID_ARGUMENT)."""


def check_key(key: str) -> str:
    if not _KEY.match(key) or not key.startswith(KEY_PREFIX):
        raise SegmentError(
            f"shared-memory key {key[:80]!r} must start with {KEY_PREFIX!r} and hold only "
            "letters, digits, '_', '.' and '-' (at most 200)"
        )
    return key


def open_segment(key: str) -> mmap.mmap:
    """The whole segment ``key`` mapped read-write; it stays mapped while any view
    of it lives (nothing here closes it explicitly)."""
    return _open(key)[0]


def _open(key: str) -> tuple[mmap.mmap, tuple[int, int, int]]:
    """The segment mapped, and the (device, inode, size) of what was mapped."""
    path = SHM_DIR / check_key(key)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise SegmentError(f"no shared-memory segment {key!r} on this host", True) from None
    except PermissionError:
        raise SegmentError(
            f"shared-memory segment {key!r} exists but this server may not open it "
            "(its permissions): the server and the client must run as users that can both "
            "read and write it"
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_size == 0:
            raise SegmentError(f"shared-memory segment {key!r} is empty")
        # not MAP_POPULATE: a sparse segment's pages would be allocated on its behalf
        return mmap.mmap(fd, st.st_size), (st.st_dev, st.st_ino, st.st_size)
    finally:
        os.close(fd)


# A worker keeps the segments it mapped for its next calls: mapping a segment afresh
# faults every page it touches into this process again (16 MB of inputs and outputs:
# ~4 ms a chunk, measured), while a kept mapping touches them at memory speed. A kept
# mapping of a segment its client unlinked would keep that memory alive, so each
# lookup drops those first, and so does a sweep every SWEEP_SECONDS while any is kept
# (a worker that gets no more calls lets go of them too); at most MAPPINGS_KEPT.
MAPPINGS_KEPT = 8
SWEEP_SECONDS = 10.0
_kept: OrderedDict[str, tuple[tuple[int, int, int], mmap.mmap]] = OrderedDict()
_kept_lock = threading.Lock()
_sweeping: threading.Timer | None = None


def _stat(key: str) -> tuple[int, int, int] | None:
    """(device, inode, size) of segment ``key``; None when it has no segment."""
    try:
        st = os.stat(SHM_DIR / key)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size


def mapped(key: str) -> mmap.mmap:
    """Segment ``key`` mapped, kept for later calls (see :data:`MAPPINGS_KEPT`); a
    segment unlinked, replaced under its name or resized since is mapped afresh."""
    check_key(key)
    with _kept_lock:
        _drop_gone()
        entry = _kept.get(key)
        if entry is not None:
            _kept.move_to_end(key)
            return entry[1]
        segment, identity = _open(key)
        _kept[key] = (identity, segment)
        while len(_kept) > MAPPINGS_KEPT:
            _kept.popitem(last=False)
        _schedule_sweep()
        return segment


def _drop_gone() -> None:
    """Let go of kept segments unlinked, replaced or resized (the caller holds the lock)."""
    for other, (identity, _) in list(_kept.items()):
        if _stat(other) != identity:
            del _kept[other]


def _schedule_sweep() -> None:
    global _sweeping
    if _sweeping is None and _kept:
        _sweeping = threading.Timer(SWEEP_SECONDS, _sweep)
        _sweeping.daemon = True
        _sweeping.start()


def _sweep() -> None:
    global _sweeping
    with _kept_lock:
        _sweeping = None
        _drop_gone()
        _schedule_sweep()  # only while any is kept: an idle worker without any sleeps


def segment_identity(key: str) -> tuple[int, int] | None:
    """The (device, inode) of segment ``key``; None when no segment has that name (it
    was unlinked), so a registration can tell its segment from a new one of the name."""
    found = _stat(check_key(key))
    return None if found is None else found[:2]


def host_identity() -> str:
    """What two processes share when they see the same segments: the host's name and
    the identity of its /dev/shm mount (containers on one host have their own)."""
    try:
        st = os.stat(SHM_DIR)
        mount = f"{st.st_dev}:{st.st_ino}"
    except OSError:
        mount = "none"
    return f"{socket.gethostname()}/{mount}"


@dataclass(frozen=True)
class Placed:
    """An array's place in a segment: its key, byte offset, shape and dtype."""

    key: str
    offset: int
    shape: tuple[int, ...]
    dtype: str


def view(segment: mmap.mmap, place: Placed, writeable: bool = False) -> np.ndarray:
    dtype = np.dtype(place.dtype)
    count = int(np.prod(place.shape, dtype=np.int64)) if place.shape else 1
    arr = np.frombuffer(segment, dtype=dtype, count=count, offset=place.offset)
    arr = arr.reshape(place.shape)
    arr.flags.writeable = writeable
    return arr


@dataclass(frozen=True)
class OutputSlot:
    """Where one output of a call goes (all its points: ``place.shape`` leads with them)."""

    op: str
    key: str
    place: Placed


class SharedArrays(Mapping[str, np.ndarray]):
    """A chunk call's arrays where some lie in shared memory: pickled, it carries
    only names and offsets; read, it maps each segment once and returns read-only
    views (zero copy: ``torch.from_numpy`` over them shares the pages). ``inline``
    arrays travel as they are. Read on another host it says so instead of reading
    a stranger's segment of the same name. ``outputs``: where the worker writes its
    chunk's rows of each output itself (see :meth:`write_outputs`)."""

    def __init__(
        self,
        placed: Mapping[str, Placed],
        inline: Mapping[str, np.ndarray],
        host: str,
        outputs: Sequence[OutputSlot] = (),
    ) -> None:
        self.placed = dict(placed)
        self.inline = dict(inline)
        self.host = host
        self.outputs = tuple(outputs)
        self._segments: dict[str, mmap.mmap] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {
            "placed": self.placed, "inline": self.inline, "host": self.host,
            "outputs": self.outputs,
        }  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def _segment(self, key: str) -> mmap.mmap:
        if host_identity() != self.host:  # the server sent it to the wrong worker: ours
            raise RuntimeError(
                "shared memory: this worker runs on another host than the server, so it "
                "cannot read the caller's region"
            )
        segment = self._segments.get(key)
        if segment is None:
            try:
                segment = self._segments[key] = mapped(key)
            except SegmentError as error:
                raise RegionGone(
                    f"shared memory: {error}: its client removed it during the call"
                ) from None
        return segment

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.inline:
            return self.inline[name]
        place = self.placed[name]
        return view(self._segment(place.key), place)

    def write_outputs(
        self, outputs: dict[str, dict[str, np.ndarray]], start: int, stop: int
    ) -> tuple[tuple[str, str], ...]:
        """Write rows ``[start, stop)`` of each planned output into its place and take
        it out of ``outputs`` (one copy, where returning it would cost two: into the
        object store, then into the region); the (op, key)s written. All or none: an
        output not as planned (dtype, shape) leaves every one to the server."""
        for slot in self.outputs:
            arr = outputs.get(slot.op, {}).get(slot.key)
            want = (stop - start, *slot.place.shape[1:])
            if arr is None or arr.dtype != np.dtype(slot.place.dtype) or arr.shape != want:
                return ()
        for slot in self.outputs:
            target = view(self._segment(slot.place.key), slot.place, writeable=True)
            np.copyto(target[start:stop], outputs[slot.op].pop(slot.key))
        return tuple((slot.op, slot.key) for slot in self.outputs)

    def __iter__(self) -> Iterator[str]:
        yield from self.placed
        yield from self.inline

    def __len__(self) -> int:
        return len(self.placed) + len(self.inline)

    @property
    def nbytes(self) -> int:
        """Bytes that travel with the call (the placed arrays' stay where they are)."""
        return sum(a.nbytes for a in self.inline.values())
