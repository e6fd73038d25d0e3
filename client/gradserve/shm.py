"""Shared memory for a client on the server's host: the pure part.

With ``shared_memory=True`` (or ``"auto"``) a compute call writes its inputs into a
POSIX shared-memory segment this client made and registered with the server, and
the server writes the outputs back into the same segment: no tensor byte crosses
the socket. Segments are reused call after call (one per call in flight), grown
when a call needs more, and unregistered and unlinked when the client closes (or,
failing that, when the process exits).

Results are lent, not copied: a call's result arrays are views of its segment, and
the segment goes back to the pool only once every array viewing it is gone (so
nothing its holder sees ever changes under it). At most :data:`LEND_MAX` segments
are lent at once; past that, results are copies out of the segment, so that holding
many results does not hold as many segments.

Inputs made in shared memory (:meth:`gradserve.Client.shared_array`) are not copied
at all: an input that lies in one of them is named where it lies.

Layout of a segment: 64 random bytes (the proof that registers it, see the
.proto), then each input at a 64-byte-aligned offset, then the room for outputs; a
shared array's segment holds the proof and the array.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any, Literal

import numpy as np

from gradserve import wire
from gradserve.errors import (
    FailedPreconditionError,
    GradserveError,
    InvalidArgumentError,
    NotFoundError,
)
from gradserve.v1 import gradserve_pb2 as pb

ALIGN = 64
HEADER = 64  # the proof
MIN_SEGMENT = 1024 * 1024
# idle segments kept for reuse; more are unregistered and unlinked
KEEP_IDLE = 2
# segments lent to results at once (a loop that keeps the last result while making
# the next lends two); a copy out of 16 MB into new memory costs ~3 ms, measured
LEND_MAX = 2
# ops whose outputs' size follows from the inputs' shapes (value too, beside grad or
# hessian: the function is then scalar); the others' replies travel on the wire
SIZED_OPS = frozenset({"grad", "vjp", "hvp", "hessian"})


# a ``shared_memory=`` choice: True, False or "auto" (None on a call: the client's)
Choice = bool | Literal["auto"]


def mode(value: Any, where: str) -> Choice:
    """A validated ``shared_memory`` choice: True, False or "auto"."""
    if value is True or value is False:
        return bool(value)
    if isinstance(value, str) and value == "auto":
        return "auto"
    raise InvalidArgumentError(f"{where}: shared_memory must be True, False or 'auto'")


def aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


class _SharedMemory(shared_memory.SharedMemory):
    """A segment that may be collected while results lent from it live: their views
    keep its mapping (so closing it raises BufferError, which the stdlib's ``__del__``
    reports as an error); the mapping goes when the last of them does."""

    def __del__(self) -> None:
        with contextlib.suppress(OSError, BufferError):
            self.close()


class Segment:
    """One POSIX shared-memory segment of this client, registered under its key."""

    def __init__(self, nbytes: int, exact: bool = False) -> None:
        # pooled segments come in powers of two, so that one serves calls of many sizes
        size = nbytes if exact else max(MIN_SEGMENT, 1 << max(0, nbytes - 1).bit_length())
        key = f"gradserve_{secrets.token_hex(12)}"
        self.shm = _SharedMemory(name=key, create=True, size=size)
        self.key = key
        self.size = size
        self.proof = secrets.token_bytes(HEADER)
        self.buf[:HEADER] = self.proof
        self.registered = False
        self.address = np.frombuffer(self.buf, np.uint8).__array_interface__["data"][0]
        self.owned = False  # holds a shared array of the caller's: never leased

    def holds(self, arr: np.ndarray) -> int | None:
        """The offset of ``arr`` in this segment, if it lies there whole, C-contiguous
        and little-endian (as the server reads it); else None."""
        start = arr.__array_interface__["data"][0] - self.address
        if not arr.flags.c_contiguous or arr.dtype.byteorder == ">":
            return None
        return start if start >= HEADER and start + arr.nbytes <= self.size else None

    @property
    def buf(self) -> memoryview:
        buf = self.shm.buf
        assert buf is not None, "the segment was closed"
        return buf

    def register_request(self) -> pb.RegisterSharedMemoryRequest:
        return pb.RegisterSharedMemoryRequest(
            name=self.key, key=self.key, offset=0, byte_size=self.size, proof=self.proof
        )

    def array(self, offset: int, dtype: np.dtype[Any], shape: Sequence[int]) -> np.ndarray:
        count = math.prod(shape)
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=offset)
        return arr.reshape(tuple(shape))

    def destroy(self) -> None:
        _destroy(self.shm)


def _destroy(shm: shared_memory.SharedMemory) -> None:
    with contextlib.suppress(BufferError):  # a view still lives: it keeps the mapping
        shm.close()
    with contextlib.suppress(FileNotFoundError):
        shm.unlink()


class Segments:
    """The client's segments: leased one per call, reused, grown, given back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[Segment] = []
        self._all: list[Segment] = []
        self._lent = 0
        self._back: deque[Segment] = deque()  # lent, and their results gone
        self._finalizer = weakref.finalize(self, _destroy_all, self._all)

    def lend(self, segment: Segment) -> np.ndarray | None:
        """The whole of ``segment`` as bytes for results to view, the segment kept out
        of the pool until that array and every view of it are gone (numpy's views
        keep the array they view alive); None when :data:`LEND_MAX` are lent."""
        with self._lock:
            self._take_back()
            if self._lent >= LEND_MAX or segment not in self._all:
                return None
            self._lent += 1
        base = np.frombuffer(segment.buf, dtype=np.uint8)
        weakref.finalize(base, self._returned, segment)
        return base

    def _returned(self, segment: Segment) -> None:
        # no lock here: the collector may run this inside any allocation, also one
        # made while this thread holds the lock; deque.append is atomic
        self._back.append(segment)

    def _take_back(self) -> None:
        """Segments whose lent results are gone: idle again; shared arrays gone: their
        segments unlinked (the server forgets their regions by itself). The caller
        holds the lock."""
        while self._back:
            segment = self._back.popleft()
            if segment.owned:
                if segment in self._all:
                    self._all.remove(segment)
                segment.destroy()
                continue
            self._lent -= 1
            if segment in self._all:
                self._idle.append(segment)

    def shared_array(self, shape: Sequence[int], dtype: np.dtype[Any]) -> np.ndarray:
        """A zeroed array in a segment of its own, unlinked once it and every view of
        it are gone (or at :meth:`close`)."""
        nbytes = math.prod(shape) * dtype.itemsize
        segment = Segment(HEADER + nbytes, exact=True)
        segment.owned = True
        # every view of ``raw`` keeps it alive (numpy's views name the array they
        # view), so its finalizer runs only when the last of them is gone
        raw = np.frombuffer(segment.buf, np.uint8)
        weakref.finalize(raw, self._returned, segment)
        arr = raw[HEADER : HEADER + nbytes].view(dtype).reshape(shape)
        with self._lock:
            self._take_back()
            self._all.append(segment)
        return arr

    def locate(self, arr: np.ndarray) -> tuple[Segment, int] | None:
        """The shared array's segment ``arr`` lies in, and its offset there."""
        with self._lock:
            for segment in self._all:
                offset = segment.holds(arr) if segment.owned else None
                if offset is not None:
                    return segment, offset
        return None

    def lease(self, nbytes: int) -> tuple[Segment, list[Segment]]:
        """A segment of at least ``nbytes`` for one call, and idle ones to retire
        (unregister, then :meth:`drop`) to make room for a larger one."""
        with self._lock:
            self._take_back()
            fits = [s for s in self._idle if s.size >= nbytes]
            if fits:
                best = min(fits, key=lambda s: s.size)
                self._idle.remove(best)
                return best, []
            retire = list(self._idle) if len(self._idle) >= KEEP_IDLE else []
            for s in retire:
                self._idle.remove(s)
            segment = Segment(nbytes)
            self._all.append(segment)
            return segment, retire

    def give_back(self, segment: Segment) -> None:
        with self._lock:
            if segment in self._all:
                self._idle.append(segment)

    def drop(self, segment: Segment) -> None:
        with self._lock:
            if segment in self._all:
                self._all.remove(segment)
            if segment in self._idle:
                self._idle.remove(segment)
        segment.destroy()

    def forget_registrations(self) -> None:
        """The server forgot them (it restarted): register each again on next use."""
        with self._lock:
            for s in self._all:
                s.registered = False

    def take_all(self) -> list[Segment]:
        """Every segment, for :meth:`close`: those registered to unregister first."""
        with self._lock:
            taken = list(self._all)
            return taken

    def close(self) -> None:
        self._finalizer()


class ClientMemory:
    """A client's shared-memory choice, its segments, and the decisions of a call by
    shared memory; the clients make the RPCs these decisions call for."""

    def __init__(self, choice: Any) -> None:
        self.choice = mode(choice, "Client")
        # why "auto" went back to the wire for good (the server is not on this host)
        self.off: str | None = None
        self._segments: Segments | None = None

    def chosen(self, call: Choice | None) -> Choice:
        """Whether a call goes by shared memory, given its own ``shared_memory=``."""
        chosen = self.choice if call is None else call
        if chosen == "auto" and self.off is not None:
            return False
        return chosen

    def layout(
        self, header: pb.ComputeRequest, arrays: Sequence[np.ndarray]
    ) -> tuple[SharedRequest, list[Segment]]:
        """The call laid out in a leased segment (:func:`layout`); the idle segments
        to retire: unregister each, then :meth:`drop` it."""
        if self._segments is None:
            self._segments = Segments()
        return layout(header, arrays, self._segments)

    def shared_array(self, shape: Sequence[int] | int, dtype: Any) -> np.ndarray:
        """See :meth:`gradserve.Client.shared_array`."""
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        kind = np.dtype(dtype)
        if kind not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise InvalidArgumentError(
                f"shared_array: dtype must be float32 or float64, not {kind}"
            )
        if any(not isinstance(d, int) or d < 0 for d in dims):
            raise InvalidArgumentError(f"shared_array: shape {dims} must be whole numbers >= 0")
        if self._segments is None:
            self._segments = Segments()
        return self._segments.shared_array(dims, kind)

    def give_back(self, shared: SharedRequest) -> None:
        """After a call: its segment back to the pool, unless its results hold it."""
        if self._segments is not None and not shared.lent:
            self._segments.give_back(shared.segment)

    def drop(self, segment: Segment) -> None:
        if self._segments is not None:
            self._segments.drop(segment)
        else:
            segment.destroy()

    def retry(self, error: GradserveError, chosen: Choice, first: bool) -> bool:
        """After a refusal of a call by shared memory: True to register again and
        retry (the server restarted and forgot the regions), False to go by the
        wire ("auto", and the server cannot map this host's memory); else raises."""
        if isinstance(error, NotFoundError) and "shared-memory region" in error.message and first:
            if self._segments is not None:
                self._segments.forget_registrations()
            return True
        if isinstance(error, FailedPreconditionError) and chosen == "auto":
            self.off = error.message
            return False
        raise error

    def release(self) -> list[Segment]:
        """For close(): the segments to unregister; :meth:`close` unlinks them after."""
        return [] if self._segments is None else self._segments.take_all()

    def close(self) -> None:
        segments, self._segments = self._segments, None
        if segments is not None:
            segments.close()


def _destroy_all(segments: list[Segment]) -> None:
    for s in list(segments):
        s.destroy()
    segments.clear()


@dataclass
class SharedRequest:
    """A compute request laid out in a segment: the request naming the places of its
    inputs (and of the outputs' room, when their size is known)."""

    header: pb.ComputeRequest
    segment: Segment
    in_place: bool  # outputs come back in the segment
    segments: Segments
    lent: bool = False  # the results view the segment: it is not the call's to give back
    # shared arrays' segments that inputs of the call lie in
    others: list[Segment] = field(default_factory=list)

    def unregistered(self) -> list[Segment]:
        """The segments the call names that the server does not know yet."""
        return [s for s in [self.segment, *self.others] if not s.registered]

    def results(self, resp: pb.ComputeResponse) -> list[np.ndarray]:
        """Each result tensor as an array: a view of the segment, lent (see the module's
        docstring), or else a copy out of it."""
        out = []
        base = None
        for i, tensor in enumerate(wire.result_slots(resp.results)):
            if not tensor.HasField("shared_memory"):
                out.append(wire.decode(tensor, f"result {i}"))
                continue
            view = self._placed(tensor, f"result {i}")
            if base is None and not self.lent:
                base = self.segments.lend(self.segment)
                self.lent = base is not None
            if base is None:
                out.append(np.array(view, copy=True))
            else:
                start = int(tensor.shared_memory.offset)
                lent = base[start : start + view.nbytes].view(view.dtype).reshape(view.shape)
                out.append(lent)
        return out

    def _placed(self, tensor: pb.Tensor, where: str) -> np.ndarray:
        ref = tensor.shared_memory
        need = wire.expected_bytes(tensor, where)
        if (
            ref.region != self.segment.key
            or ref.offset < 0
            or ref.offset + need > self.segment.size
        ):
            raise InvalidArgumentError(f"{where}: the server placed it outside this call's region")
        dtype = np.dtype("<f4" if tensor.dtype == pb.DTYPE_FLOAT32 else "<f8")
        return self.segment.array(int(ref.offset), dtype, list(tensor.shape))


def output_bytes(
    ops: Sequence[str], arrays: Mapping[str, np.ndarray], wrt: Sequence[str], batched: bool,
    itemsize: int,
) -> int | None:  # fmt: skip
    """The outputs' bytes (with alignment) when shapes tell; None when only the server
    can tell (value alone, jvp, jacobian)."""
    scalar = bool({"grad", "hessian"} & set(ops))
    if not all(op in SIZED_OPS or (op == "value" and scalar) for op in ops):
        return None
    names = list(wrt) or list(arrays)
    if any(n not in arrays for n in names):
        return None  # the server will name the mistake
    points = next((int(a.shape[0]) for a in arrays.values() if a.ndim), 1) if batched else 1
    per = {n: math.prod(arrays[n].shape[1:] if batched else arrays[n].shape) for n in names}
    sizes: list[int] = []
    for op in ops:
        if op == "value":
            sizes.append(points)
        elif op == "hessian":
            sizes += [points * per[a] * per[b] for a in names for b in names]
        else:
            sizes += [points * per[n] for n in names]
    return sum(aligned(s * itemsize) for s in sizes)


def compute_itemsize(dtype: int, arrays: Iterable[np.ndarray]) -> int:
    """Bytes per element the server computes in (its rule: the request's dtype, else
    float32 only when every input is float32)."""
    if dtype == pb.DTYPE_FLOAT32:
        return 4
    if dtype == pb.DTYPE_FLOAT64:
        return 8
    kinds = {a.dtype.itemsize for a in arrays}
    return 4 if kinds == {4} else 8


def layout(
    header: pb.ComputeRequest, arrays: Sequence[np.ndarray], segments: Segments
) -> tuple[SharedRequest, list[Segment]]:
    """Lease a segment, write the inputs into it, and name their places (and the
    outputs' room) in a copy of ``header``; also the idle segments to retire."""
    offsets: list[int | None] = []
    found = [segments.locate(arr) for arr in arrays]
    cursor = HEADER
    for arr, spot in zip(arrays, found, strict=True):
        if spot is not None:  # in a shared array: named where it lies
            offsets.append(None)
            continue
        offset = aligned(cursor)
        offsets.append(offset)
        cursor = offset + arr.nbytes
    inputs = dict(zip(sorted(header.inputs), arrays[: len(header.inputs)], strict=True))
    itemsize = compute_itemsize(header.dtype, inputs.values())
    ops = [_OP_NAMES[o] for o in header.ops]
    room = output_bytes(ops, inputs, list(header.wrt), header.batched, itemsize)
    start = aligned(cursor)
    segment, retire = segments.lease(start + (room or 0))
    req = pb.ComputeRequest()
    req.CopyFrom(header)
    others: list[Segment] = []
    slots = wire.request_slots(req)
    for tensor, arr, copied_to, spot in zip(slots, arrays, offsets, found, strict=True):
        if spot is not None:
            where, offset = spot
            if where not in others:
                others.append(where)
        else:
            assert copied_to is not None
            where, offset = segment, copied_to
            np.copyto(segment.array(offset, arr.dtype, arr.shape), arr)
        tensor.shared_memory.CopyFrom(
            pb.SharedMemoryRef(region=where.key, offset=offset, byte_size=arr.nbytes)
        )
    if room is not None:
        req.output.CopyFrom(
            pb.SharedMemoryRef(region=segment.key, offset=start, byte_size=segment.size - start)
        )
    return SharedRequest(req, segment, room is not None, segments, others=others), retire


_OP_NAMES = {number: name.removeprefix("OP_").lower() for name, number in pb.Op.items()}


@dataclass(frozen=True)
class SharedMemoryRegion:
    """A shared-memory region the server holds for this caller (see
    :meth:`gradserve.Client.shared_memory_regions`)."""

    name: str
    key: str
    offset: int
    byte_size: int
    calls_using: int

    @classmethod
    def _from_proto(cls, msg: pb.SharedMemoryRegion) -> SharedMemoryRegion:
        return cls(msg.name, msg.key, msg.offset, msg.byte_size, msg.calls_using)
