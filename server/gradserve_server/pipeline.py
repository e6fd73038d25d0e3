"""A pipelined ComputeStream: a large batched request computed chunk by chunk while
the rest of it is still arriving, and its reply streamed back chunk by chunk, in
order, as the chunks finish.

The chunks are the batch's ranges of points (those the whole-request path would
run, cut smaller only to fit the window), so the reply's bytes are the same. A
chunk is dispatched as soon as the pieces covering its rows have arrived in every
tensor it uses; its rows' NaN/Inf check runs then. The bytes one stream holds —
rows arrived and not yet dispatched, and each chunk in flight (its inputs, then
its reply until the last piece of it is written) — are bounded by its window,
``--stream-window-bytes``, reserved out of ``--max-inflight-bytes`` when the
header arrives. The stream stops reading while it is over its window and has a
chunk in flight (gRPC's flow control then holds the sender back). A sender whose
pieces do not arrive row by row (several tensors sent one after another, or
pieces out of order) makes it hold more: the extra is taken from
``--max-inflight-bytes`` as it arrives, and refused there like any request.

The reply's header goes out with the first chunk's reply (the shapes are known
then); its metadata describes that chunk, and a last part carries the whole
call's (``ComputeResponsePart.metadata``).

Errors keep the whole-request path's contracts: a bad piece, a NaN in a later
chunk, or a chunk's failure cancels every chunk dispatched (their Ray work is
stopped, see dispatch.py); a worker lost mid-chunk has that chunk run again
elsewhere; a client that goes away cancels all of it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gradserve import wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import encoding, rules
from gradserve_server.arrivals import Arrivals
from gradserve_server.budgets import Reservation
from gradserve_server.codec import compute_slots
from gradserve_server.errors import from_chunk_error, invalid
from gradserve_server.requests import ComputeRequest
from gradserve_server.service import ComputeService
from gradserve_server.streams import STREAM_PIECE_BYTES, next_part, send_paced
from gradserve_workers.tasks import ChunkResult, chunk_arrays


@dataclass
class _Chunk:
    start: int
    stop: int
    task: asyncio.Future[ChunkResult]
    held: int  # bytes it holds: its inputs and estimated reply, then its reply
    reply: int  # its reply's estimated bytes
    sent: bool = False


@dataclass(frozen=True)
class _Slot:
    """A request tensor's place in the chunks' arrays (``key`` None: not used)."""

    key: str | None
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    row_bytes: int


class Pipeline:
    """One ComputeStream's batch, from its header on (see the module's doc)."""

    @classmethod
    def start(cls, service: ComputeService, msg: pb.ComputeRequest, tenant: str) -> Pipeline | None:
        """The pipeline of a streamed request, or None when it runs whole: not
        batched, pipelining off (a window of 0), or a single chunk. Raises what the
        whole-request path would about the header."""
        window = service.budgets.stream_window_bytes
        if not msg.batched or window <= 0:
            return None
        header = service.admit_compute(msg)
        keyed = compute_slots(msg)
        standins: dict[str, dict[str, np.ndarray]] = {}
        for (what, name), tensor in keyed:
            where = f"{what} {name!r}" if name else what
            shape = service.budgets.shape(tensor, where)
            # the shape and dtype without the bytes: values are checked by chunk
            standins.setdefault(what, {})[name] = np.broadcast_to(
                np.zeros((), wire.dtype_of(tensor)), shape
            )
        req = service.codec.compute(msg, header=header, shapes_only=standins)
        points = req.inputs.points
        payload = chunk_arrays(
            req.inputs.arrays, cotangent=req.cotangent, tangents=req.tangents, vector=req.vector
        )
        used = {id(arr): key for key, arr in payload.items()}
        slots = []
        for (what, name), _ in keyed:
            arr = standins[what][name]
            key = used.get(id(arr))
            if key is not None and (arr.ndim == 0 or arr.shape[0] != points):
                return None  # not cut by points (the codec allows none such today)
            row = arr.nbytes // points if key is not None else 0
            slots.append(_Slot(key, arr.dtype, arr.shape, row))
        ranges = service.plan(req)
        out_point = math.ceil(header.estimate.reply_bytes / points)
        point_bytes = sum(s.row_bytes for s in slots) + out_point
        # at least two chunks in the window: one computing while the next arrives
        most = max(1, window // (2 * max(1, point_bytes)))
        if any(b - a > most for a, b in ranges):
            count = math.ceil(points / most)
            ranges = [(i * points // count, (i + 1) * points // count)
                      for i in range(count)]  # fmt: skip
        if len(ranges) < 2:
            return None
        held = service.inflight.take(
            min(window, points * point_bytes), "ComputeStream: the request"
        )
        # its chunks, dispatched one by one, are no small call for the express lane
        # (the whole path's are not either: they start together)
        service.pool.overran(tenant)
        return cls(service, req, tenant, slots, ranges, out_point, held)

    def __init__(
        self,
        service: ComputeService,
        req: ComputeRequest,
        tenant: str,
        slots: list[_Slot],
        ranges: list[tuple[int, int]],
        out_point: int,
        held: Reservation,
    ) -> None:
        self.service = service
        self.req = req
        self.spec = service.spec(req)
        self.tenant = tenant
        self.slots = slots
        self.ranges = ranges
        self.out_point = out_point  # reply bytes per point: estimated, then measured
        self._held = [held]
        self._reserved = held.nbytes
        self._arrivals = Arrivals(
            [s.row_bytes * req.inputs.points if s.key else _nbytes(s) for s in slots],
            [s.key is not None for s in slots],
        )
        self._chunks: list[_Chunk] = []
        self._results: list[ChunkResult] = []  # without their arrays: for the metadata
        self._changed = asyncio.Event()
        self._error: BaseException | None = None
        self._started = time.perf_counter()

    # ------------------------------------------------------------- the whole call

    async def run(
        self, parts: AsyncIterator[Any], context: Any, stall_s: float
    ) -> pb.ComputeMetadata:
        """Read the rest of the request, compute it and write the reply; the call's
        metadata. Whatever fails (or the caller's going away) cancels every chunk."""
        feeding: asyncio.Future[None] = asyncio.ensure_future(self._feed(parts, stall_s))
        sending: asyncio.Future[None] = asyncio.ensure_future(
            send_paced(
                context, self._replies(), self.service.stream_pieces, "ComputeStream", stall_s
            )
        )
        try:
            await asyncio.gather(feeding, sending)
        except BaseException:
            pending: list[asyncio.Future[Any]] = [feeding, sending]
            pending += [c.task for c in self._chunks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        finally:
            for held in self._held:
                held.release()
        return self._metadata(self._results)

    # ------------------------------------------------------------- reading, dispatching

    async def _feed(self, parts: AsyncIterator[Any], stall_s: float) -> None:
        while True:
            self._dispatch_whole()
            if self._used() > self._reserved:
                if self._in_flight():  # read on once a chunk in flight has been sent
                    await self._until(self._room_or_idle)
                    continue
                # no chunk in flight and none whole: pieces out of row order
                self._grow(self._used() - self._reserved)
            part = await next_part(parts, stall_s)
            if part is None:
                break
            if part.HasField("header"):
                raise invalid("ComputeStream: a second header arrived")
            piece = part.piece
            try:
                self._arrivals.add(piece.slot, piece.offset, piece.data)
            except wire.WireError as exc:
                raise invalid(f"ComputeStream: {exc}", "piece") from None
            del part, piece
        try:
            self._arrivals.finish()
        except wire.WireError as exc:
            raise invalid(f"ComputeStream: {exc}", "piece") from None
        while len(self._chunks) < len(self.ranges):
            await self._until(lambda: self._room_for(len(self._chunks)))
            self._dispatch_whole()

    def _whole(self, index: int) -> bool:
        stop = self.ranges[index][1]
        return all(
            self._arrivals.whole(i) >= stop * s.row_bytes
            for i, s in enumerate(self.slots)
            if s.key is not None
        )

    def _room_for(self, index: int) -> bool:
        start, stop = self.ranges[index]
        fits = self._used() + (stop - start) * self.out_point <= self._reserved
        return fits or not self._in_flight()

    def _dispatch_whole(self) -> None:
        """Dispatch each next chunk whose rows have all arrived, while there is room."""
        while (
            len(self._chunks) < len(self.ranges)
            and self._whole(len(self._chunks))
            and self._room_for(len(self._chunks))
        ):
            self._dispatch(*self.ranges[len(self._chunks)])

    def _dispatch(self, start: int, stop: int) -> None:
        arrays: dict[str, np.ndarray] = {}
        nbytes = 0
        for i, slot in enumerate(self.slots):
            if slot.key is None:
                continue
            raw = self._arrivals.take(i, stop * slot.row_bytes)
            nbytes += len(raw)
            arrays[slot.key] = np.frombuffer(raw, slot.dtype).reshape(
                (stop - start, *slot.shape[1:])
            )
        inputs = {n: arrays[n] for n in self.req.inputs.arrays}
        rules.finite_inputs(inputs, True, self.req.header.call, start)
        task = asyncio.ensure_future(
            self.service.run_range(self.spec, self.tenant, "compute", arrays, 0, stop - start)
        )
        task.add_done_callback(self._chunk_done)
        reply = (stop - start) * self.out_point
        self._chunks.append(_Chunk(start, stop, task, nbytes + reply, reply))
        self._changed.set()

    def _chunk_done(self, task: asyncio.Future[ChunkResult]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        failed = task.result().error if error is None else None
        if failed is not None:
            error = from_chunk_error(failed)
        if error is not None and self._error is None:
            self._error = error  # fails the call now, not when its turn to be sent comes
        self._changed.set()

    # ------------------------------------------------------------- the window

    def _room_or_idle(self) -> bool:
        return self._used() <= self._reserved or not self._in_flight()

    def _in_flight(self) -> list[_Chunk]:
        return [c for c in self._chunks if not c.sent]

    def _used(self) -> int:
        return self._arrivals.held + sum(c.held for c in self._in_flight())

    def _grow(self, nbytes: int) -> None:
        what = "ComputeStream: pieces that arrive out of row order, or a reply over its estimate"
        held = self.service.inflight.take(nbytes, what)
        self._held.append(held)
        self._reserved += nbytes

    async def _until(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()``, re-checked whenever a chunk is dispatched, finishes
        or is sent; a chunk's failure is raised at once."""
        while True:
            if self._error is not None:
                raise self._error
            if ready():
                return
            self._changed.clear()  # no await since the check: no change is missed
            await self._changed.wait()

    # ------------------------------------------------------------- the reply

    async def _replies(self) -> AsyncIterator[pb.ComputeResponsePart]:
        dtypes: list[np.dtype[Any]] = []
        rows: list[int] = []
        for index in range(len(self.ranges)):
            await self._until(functools.partial(self._finished, index))
            chunk = self._chunks[index]
            result = chunk.task.result()
            if result.error is not None:
                raise from_chunk_error(result.error)
            arrays = [a for op in self.req.ops for a in result.outputs[op].values()]
            reply = sum(a.nbytes for a in arrays)
            chunk.held = reply  # its inputs are freed
            # a reply larger than estimated (an output shape only running could tell)
            # that takes the stream over its reservation: hold that much more
            over = min(reply - chunk.reply, self._used() - self._reserved)
            if over > 0:
                self._grow(over)
            if index == 0:
                header, dtypes, rows = self._header(result)
                yield pb.ComputeResponsePart(header=header)
            self._results.append(replace(result, outputs={}))
            del result
            for slot, arr in enumerate(arrays):
                if arr.ndim == 0 or arr.shape[0] != chunk.stop - chunk.start:
                    raise RuntimeError(
                        f"chunk [{chunk.start}, {chunk.stop}) gave output shape {arr.shape}"
                    )
                data = np.ascontiguousarray(arr, dtype=dtypes[slot]).data.cast("B")
                for piece in wire.slot_pieces(
                    slot, chunk.start * rows[slot], data, STREAM_PIECE_BYTES
                ):
                    yield pb.ComputeResponsePart(piece=piece)
            del arrays, data
            chunk.sent = True
            self._changed.set()
        yield pb.ComputeResponsePart(metadata=self._metadata(self._results))

    def _finished(self, index: int) -> bool:
        return index < len(self._chunks) and self._chunks[index].task.done()

    def _header(
        self, first: ChunkResult
    ) -> tuple[pb.ComputeResponse, list[np.dtype[Any]], list[int]]:
        """The reply's header (shapes from the first chunk's outputs, metadata of that
        chunk), and each output slot's dtype and bytes per point."""
        header = pb.ComputeResponse(metadata=self._metadata([first]))
        header.metadata.chunks = len(self.ranges)
        outputs = {op: {k: [a] for k, a in first.outputs[op].items()} for op in self.req.ops}
        encoding.stream_outputs(outputs, header.results)
        dtypes, rows = [], []
        for tensor in wire.result_slots(header.results):
            tensor.shape[0] = self.req.inputs.points
            dtypes.append(wire.dtype_of(tensor))
            rows.append(wire.expected_bytes(tensor) // self.req.inputs.points)
        self.out_point = sum(rows)
        return header, dtypes, rows

    def _metadata(self, results: list[ChunkResult]) -> pb.ComputeMetadata:
        return encoding.metadata(results, self.req.inputs, self.req.wrt, self._started)


def _nbytes(slot: _Slot) -> int:
    return int(np.prod(slot.shape, dtype=object)) * slot.dtype.itemsize
