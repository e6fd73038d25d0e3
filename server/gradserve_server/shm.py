"""Shared memory for clients on the server's host (docs/sdk.md, "Shared memory").

A client makes a POSIX shared-memory segment, registers it as a named region
(RegisterSharedMemory), and then names the region in a Compute request instead of
sending bytes: inputs are read where they lie (``Tensor.shared_memory``) and the
outputs written into a room the request names (``ComputeRequest.output``).

Regions belong to the tenant that registered them: another tenant's region is
NOT_FOUND word for word as one that was never registered. The server maps a
segment but never unlinks it (the client made it; see workers' shm.py on why not
``multiprocessing.shared_memory``). A call holds the regions it uses, so
unregistering one while a call reads it leaves that call its mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.errors import ServiceError, exhausted, invalid, not_found
from gradserve_workers import shm as segments

# Each output in a room starts at a multiple of this (a cache line; NumPy and torch
# views over it are aligned for any dtype).
ALIGN = 64
MIN_PROOF, MAX_PROOF = 16, 64
MAX_NAME_CHARS = 128
# A shared payload carries arrays that came by the wire (a cotangent beside inputs in
# a region) in every chunk call: up to this many bytes; beyond, the object store.
INLINE_MAX_BYTES = 256 * 1024
# How often registered regions are checked for segments their client unlinked (it
# ended without unregistering): the server's mapping alone would keep their memory.
SWEEP_SECONDS = 10.0

log = logging.getLogger("gradserve.shm")

Buffer = bytes | memoryview


def not_here(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message)


def aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


@dataclass(eq=False)
class Region:
    """A registered region: ``byte_size`` bytes at ``offset`` of segment ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    segment: mmap.mmap
    identity: tuple[int, int] | None = None  # the segment's (device, inode)
    users: int = 0

    @property
    def orphaned(self) -> bool:
        """Its client unlinked the segment (or put another under the name), and no
        call uses it: nobody can reach its memory but this server's mapping."""
        return self.users == 0 and segments.segment_identity(self.key) != self.identity

    def to_proto(self) -> pb.SharedMemoryRegion:
        return pb.SharedMemoryRegion(
            name=self.name, key=self.key, offset=self.offset, byte_size=self.byte_size,
            calls_using=self.users,
        )  # fmt: skip

    def span(self, offset: int, nbytes: int, what: str) -> memoryview:
        """``nbytes`` at ``offset`` of the region, refused if they reach past it."""
        if offset < 0 or nbytes < 0:
            raise invalid(f"{what}: a negative offset or size in region {self.name!r}", what)
        if offset + nbytes > self.byte_size:
            raise invalid(
                f"{what}: shared-memory region {self.name!r} is too small: it needs "
                f"{nbytes:,} bytes at offset {offset:,} ({offset + nbytes:,} in all), and the "
                f"region has {self.byte_size:,}",
                what,
            )
        start = self.offset + offset
        return memoryview(self.segment)[start : start + nbytes]


class Registry:
    """Every tenant's regions by name (0 ``max_regions``: no limit per tenant)."""

    def __init__(self, enabled: bool = True, max_regions: int = 64) -> None:
        self.enabled = enabled
        self.max_regions = max_regions
        self._regions: dict[str, dict[str, Region]] = {}
        self._sweeping: asyncio.TimerHandle | None = None

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise not_here(
                "this server takes no shared memory (started with --shared-memory 0): "
                "send tensors over the wire"
            )

    def register(self, tenant: str, req: pb.RegisterSharedMemoryRequest) -> Region:
        self._check_enabled()
        self.sweep()
        where = "RegisterSharedMemory"
        name = req.name
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise invalid(f"{where}: name must be 1-{MAX_NAME_CHARS} printable characters", "name")
        if req.offset < 0 or req.byte_size < 1:
            raise invalid(
                f"{where}: offset must be >= 0 and byte_size >= 1 (got {req.offset}, "
                f"{req.byte_size})",
                "byte_size",
            )
        if not MIN_PROOF <= len(req.proof) <= MAX_PROOF:
            raise invalid(
                f"{where}: proof must be {MIN_PROOF}-{MAX_PROOF} bytes that the segment holds "
                f"at offset {req.offset} (got {len(req.proof)})",
                "proof",
            )
        mine = self._regions.get(tenant, {})
        if name in mine:
            raise ServiceError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"{where}: a region named {name!r} is registered already; unregister it first",
                field="name",
            )
        if self.max_regions and len(mine) >= self.max_regions:
            raise exhausted(
                f"{where}: {len(mine)} regions registered, the most one tenant may have "
                "(--max-shm-regions); unregister some first"
            )
        try:
            segment = segments.open_segment(req.key)
        except segments.SegmentError as error:
            if error.missing:
                raise not_here(
                    f"{where}: {error}. Shared memory needs the client on the server's host "
                    "(and the same /dev/shm: not another container); elsewhere, send "
                    "tensors over the wire"
                ) from None
            if "must start with" in str(error):
                raise invalid(f"{where}: {error}", "key") from None
            raise not_here(f"{where}: {error}") from None
        if req.offset + req.byte_size > len(segment):
            raise invalid(
                f"{where}: the region [{req.offset:,}, {req.offset + req.byte_size:,}) reaches "
                f"past the end of segment {req.key!r}, which has {len(segment):,} bytes",
                "byte_size",
            )
        held = segment[req.offset : req.offset + len(req.proof)]
        if held != req.proof:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{where}: segment {req.key!r} does not hold the proof bytes at offset "
                f"{req.offset}: write them there before registering (only a caller that can "
                "read a segment may register it)",
                field="proof",
            )
        identity = segments.segment_identity(req.key)
        region = Region(name, req.key, int(req.offset), int(req.byte_size), segment, identity)
        self._regions.setdefault(tenant, {})[name] = region
        self._schedule_sweep()
        return region

    def sweep(self) -> list[Region]:
        """Forget the regions whose segments their clients unlinked without
        unregistering them (a client that crashed), so that their memory goes."""
        gone = []
        for tenant, mine in list(self._regions.items()):
            for name, region in list(mine.items()):
                if region.orphaned:
                    gone.append(mine.pop(name))
                    log.info("forgot shared-memory region %r: its segment was unlinked", name)
            if not mine:
                del self._regions[tenant]
        return gone

    def _schedule_sweep(self) -> None:
        """Sweep every SWEEP_SECONDS while any region is registered (and never else:
        an idle server with no regions does nothing)."""
        if self._sweeping is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving (a unit test): sweeps happen on each call
            return

        def tick() -> None:
            self._sweeping = None
            self.sweep()
            if self._regions:
                self._schedule_sweep()

        self._sweeping = loop.call_later(SWEEP_SECONDS, tick)

    def unregister(self, tenant: str, name: str) -> list[Region]:
        """The regions forgotten (a missing name: NOT_FOUND). Calls holding one keep
        their mapping; it goes when the last of them ends."""
        mine = self._regions.get(tenant, {})
        if not name:
            gone = list(mine.values())
            mine.clear()
            return gone
        if name not in mine:
            raise not_found(f"UnregisterSharedMemory: no shared-memory region {name!r}")
        return [mine.pop(name)]

    def listed(self, tenant: str, name: str = "") -> list[Region]:
        self.sweep()
        mine = self._regions.get(tenant, {})
        if not name:
            return sorted(mine.values(), key=lambda r: r.name)
        return [self.get(tenant, name, "ListSharedMemory")]

    def get(self, tenant: str, name: str, where: str) -> Region:
        self._check_enabled()
        region = self._regions.get(tenant, {}).get(name)
        if region is None:
            # NOT_FOUND: the request names something that does not exist (for this
            # tenant), as an unknown job id is; the request itself is well formed
            raise not_found(
                f"{where}: no shared-memory region {name!r} is registered (by this caller); "
                "register it with RegisterSharedMemory first"
            )
        return region

    @contextlib.contextmanager
    def resolve(self, req: pb.ComputeRequest, tenant: str) -> Iterator[SharedCall | None]:
        """A unary compute request's shared-memory side (None when it uses none), its
        regions held for the call (ComputeStream refuses shared memory at its header:
        :func:`refuse_streamed`)."""
        if not uses_shared_memory(req):
            yield None
            return
        slots = wire.request_slots(req)
        call = SharedCall([], [], None)
        try:
            for (where, field_name), tensor in zip(_slot_names(req), slots, strict=True):
                call.blobs.append(self._slot(tensor, tenant, call, where, field_name))
            if req.HasField("output"):
                ref = req.output
                region = call.hold(self.get(tenant, ref.region, "Compute: output"))
                room = ref.byte_size or region.byte_size - ref.offset
                region.span(ref.offset, room, "output")  # within the region
                call.output = Room(region, int(ref.offset), int(room))
            yield call
        finally:
            call.release()

    def _slot(
        self, tensor: pb.Tensor, tenant: str, call: SharedCall, where: str, field_name: str
    ) -> Buffer:
        if not tensor.HasField("shared_memory"):
            return tensor.data
        ref = tensor.shared_memory
        if tensor.data:
            raise invalid(f"{where}: has both data and shared_memory; give one", field_name)
        try:
            need = wire.expected_bytes(tensor, where)
        except wire.WireError as exc:
            raise invalid(str(exc), field_name) from None
        if ref.byte_size and ref.byte_size != need:
            raise invalid(
                f"{where}: shared_memory.byte_size is {ref.byte_size:,}, but shape "
                f"{tuple(tensor.shape)} needs {need:,} bytes",
                field_name,
            )
        region = call.hold(self.get(tenant, ref.region, f"Compute: {where}"))
        try:
            return region.span(int(ref.offset), need, where)
        except ServiceError as error:
            error.field = field_name
            raise


def uses_shared_memory(req: pb.ComputeRequest) -> bool:
    """Whether any tensor of ``req``, or its outputs' room, is in shared memory."""
    slots = wire.request_slots(req)
    return req.HasField("output") or any(t.HasField("shared_memory") for t in slots)


def refuse_streamed(req: pb.ComputeRequest) -> None:
    """ComputeStream carries bytes: a header naming shared memory is refused as soon as
    it arrives, not once the bytes it will never send are found missing."""
    if uses_shared_memory(req):
        raise invalid(
            "ComputeStream: tensors in shared memory go through Compute (the request is "
            "small without their bytes)",
            "shared_memory",
        )


def _slot_names(req: pb.ComputeRequest) -> list[tuple[str, str]]:
    """How errors name each slot of ``req`` (in wire.request_slots' order), and its field."""
    names = [(f"input {n!r}" if n else "input", "inputs") for n in sorted(req.inputs)]
    names += [("cotangent", "cotangent")] if req.HasField("cotangent") else []
    names += [(f"tangent {n!r}", "tangents") for n in sorted(req.tangents)]
    names += [(f"vector {n!r}", "vector") for n in sorted(req.vector)]
    return names


@dataclass
class Room:
    """Where a call's outputs go: ``size`` bytes from ``offset`` of ``region``."""

    region: Region
    offset: int
    size: int


@dataclass
class SharedCall:
    """A compute request's shared-memory side: each slot's bytes (a view of its
    region, or the wire's), the regions it holds, and the outputs' room."""

    blobs: list[Buffer]
    regions: list[Region]
    output: Room | None
    host: str = field(default_factory=segments.host_identity)
    # the outputs' places, when planned before the work (see plan_writes)
    slots: list[Slot] = field(default_factory=list)

    def hold(self, region: Region) -> Region:
        if region not in self.regions:
            region.users += 1
            self.regions.append(region)
        return region

    def release(self) -> None:
        for region in self.regions:
            region.users -= 1
        self.regions = []
        self.blobs = []

    def check_room(self, reply_bytes: int, exact: bool) -> None:
        """Refuse before any work a room the reply's estimate already overflows."""
        room = self.output
        if room is not None and reply_bytes > room.size:
            at_least = "" if exact else "at least "
            raise invalid(
                f"Compute: shared-memory region {room.region.name!r} is too small for the "
                f"outputs: they need {at_least}{reply_bytes:,} bytes, and the room at offset "
                f"{room.offset:,} has {room.size:,}",
                "output",
            )

    def payload(
        self, arrays: Mapping[str, np.ndarray], workers_here: bool
    ) -> segments.SharedArrays | None:
        """What chunk calls carry: names and offsets of the arrays that lie in a
        region, for workers on this host to map (None: a worker is elsewhere, and
        the arrays go by the object store as any others)."""
        if not workers_here:
            return None
        placed: dict[str, segments.Placed] = {}
        inline: dict[str, np.ndarray] = {}
        bases = {id(r): _address(r.segment) for r in self.regions}
        for name, arr in arrays.items():
            spot = self._locate(arr, bases)
            if spot is None:
                inline[name] = arr
            else:
                placed[name] = segments.Placed(spot[0], spot[1], arr.shape, arr.dtype.name)
        if sum(a.nbytes for a in inline.values()) > INLINE_MAX_BYTES:
            return None  # large arrays by the wire too: the object store, once for all chunks
        return segments.SharedArrays(placed, inline, self.host, self.output_slots())

    def _locate(self, arr: np.ndarray, bases: Mapping[int, int]) -> tuple[str, int] | None:
        if not arr.flags.c_contiguous or arr.dtype.byteorder == ">":
            return None
        start = arr.__array_interface__["data"][0]
        for region in self.regions:
            base = bases[id(region)]
            if base <= start and start + arr.nbytes <= base + len(region.segment):
                return region.key, start - base
        return None

    def plan_writes(self, ops: Sequence[str], arrays: Mapping[str, np.ndarray],
                    wrt: Sequence[str], dtype: str) -> None:  # fmt: skip
        """Plan where each output goes before the work, where the shapes tell (a batch of
        grad, vjp or hvp: each output shaped like its input), so that workers on this
        host write their chunks there themselves."""
        if self.output is None or not ops or not set(ops) <= WRITTEN_BY_WORKERS:
            return
        items = [(op, w, tuple(arrays[w].shape), np.dtype(dtype)) for op in ops for w in wrt]
        self.slots = self._layout(items)

    def _layout(
        self, items: Sequence[tuple[str, str, tuple[int, ...], np.dtype[Any]]]
    ) -> list[Slot]:
        """Outputs back to back at aligned offsets in the room, refused if they overflow."""
        room = self.output
        assert room is not None
        slots = []
        cursor = room.offset
        for op, key, shape, dtype in items:
            start = aligned(cursor)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            slots.append(Slot(op, key, shape, dtype.newbyteorder("<"), start, nbytes))
            cursor = start + nbytes
        self.check_room(cursor - room.offset, exact=True)
        return slots

    def output_slots(self) -> list[segments.OutputSlot]:
        """The planned outputs' places in their segment, for the workers."""
        room = self.output
        if room is None:
            return []
        region = room.region
        return [
            segments.OutputSlot(s.op, s.key, segments.Placed(
                region.key, region.offset + s.start, s.shape, s.dtype.name))
            for s in self.slots
        ]  # fmt: skip

    def place(
        self,
        outputs: Mapping[str, Mapping[str, Sequence[np.ndarray]]],
        written: Sequence[Sequence[tuple[str, str]]] = (),
    ) -> list[pb.OpResult]:
        """The outputs in the room (each op's arrays as chunks in point order), back to
        back at aligned offsets, and the reply's results saying where each lies. Those
        every chunk's worker ``written`` itself are there already."""
        planned = {(s.op, s.key) for s in self.slots}
        if self.slots and written and all(set(w) == planned for w in written):
            slots = self.slots
        else:
            items = []
            for op, by_key in outputs.items():
                for key, parts in by_key.items():
                    shape = tuple(parts[0].shape)
                    if len(parts) > 1:
                        shape = (sum(int(p.shape[0]) for p in parts), *shape[1:])
                    items.append((op, key, shape, np.dtype(parts[0].dtype)))
            slots = self._layout(items)
            for slot in slots:
                self._copy(slot, outputs[slot.op][slot.key])
        return self._results(slots)

    def _copy(self, slot: Slot, parts: Sequence[np.ndarray]) -> None:
        room = self.output
        assert room is not None
        target = np.frombuffer(room.region.span(slot.start, slot.nbytes, "output"), slot.dtype)
        target = target.reshape(slot.shape)
        if len(parts) == 1:
            np.copyto(target, parts[0])
            return
        row = 0
        for part in parts:
            np.copyto(target[row : row + part.shape[0]], part)
            row += int(part.shape[0])

    def _results(self, slots: Sequence[Slot]) -> list[pb.OpResult]:
        room = self.output
        assert room is not None
        results: list[pb.OpResult] = []
        for slot in slots:
            if not results or results[-1].op != _OP_NUMBERS[slot.op]:
                results.append(pb.OpResult(op=_OP_NUMBERS[slot.op]))
            input1, _, input2 = slot.key.partition(",")
            out = results[-1].outputs.add(input=input1, input2=input2)
            out.tensor.dtype = wire.DTYPE_NAMES[slot.dtype.name]
            out.tensor.shape[:] = slot.shape
            out.tensor.shared_memory.CopyFrom(
                pb.SharedMemoryRef(
                    region=room.region.name, offset=slot.start, byte_size=slot.nbytes
                )
            )
        return results


@dataclass(frozen=True)
class Slot:
    """One output's place in the room: ``start`` is from the region's start."""

    op: str
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    start: int
    nbytes: int


# ops whose every output is shaped like its wrt input: planned before work, and
# written by the workers themselves
WRITTEN_BY_WORKERS = frozenset({"grad", "vjp", "hvp"})


def _address(segment: mmap.mmap) -> int:
    view = np.frombuffer(segment, dtype=np.uint8)
    return int(view.__array_interface__["data"][0])


_OP_NUMBERS: dict[str, Any] = {
    name.removeprefix("OP_").lower(): number for name, number in pb.Op.items()
}


def workers_on_this_host(names: Sequence[str]) -> bool:
    """Whether every worker (named "host:pid") runs on the server's host."""
    here = socket.gethostname()
    return bool(names) and all(n.rpartition(":")[0] == here for n in names)
