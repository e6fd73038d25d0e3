"""A streamed request's bytes as they arrive, handed on by ranges as soon as each is whole.

:class:`gradserve.wire.PieceAssembler` keeps every piece until the stream ends;
this keeps only the pieces not yet taken, so a pipelined ComputeStream
(:mod:`gradserve_server.pipeline`) holds the rows it has not dispatched yet, not
the whole request. The checks are the assembler's, made as each piece arrives: a
piece that reaches past its slot, overlaps another or is one too many is refused
at once, and :meth:`Arrivals.finish` refuses gaps.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from gradserve import wire


class Arrivals:
    """The pieces of slots of known sizes that have arrived and are not taken yet.

    ``keep[i]`` False: slot ``i``'s bytes are checked and dropped (a tensor the
    computation does not use).
    """

    def __init__(self, sizes: Sequence[int], keep: Sequence[bool]) -> None:
        self._sizes = list(sizes)
        self._keep = list(keep)
        # per slot: pieces (offset, bytes) past ``_taken``, sorted by offset
        self._pieces: list[list[tuple[int, memoryview]]] = [[] for _ in self._sizes]
        self._taken = [0] * len(self._sizes)  # every byte below this was taken
        self._whole = [0] * len(self._sizes)  # every byte below this has arrived
        self._received = [0] * len(self._sizes)
        self._count = 0
        self.max_pieces = 16 + len(self._sizes) + sum(self._sizes) // wire.MIN_PIECE_BYTES
        self.held = 0  # bytes of pieces kept, not yet taken

    def add(self, slot: int, offset: int, data: bytes) -> None:
        if not 0 <= slot < len(self._sizes):
            raise wire.WireError(f"piece for slot {slot}, but there are {len(self._sizes)}")
        self._count += 1
        if self._count > self.max_pieces:
            raise wire.WireError(
                f"more than {self.max_pieces} pieces for {sum(self._sizes)} bytes; send "
                f"pieces of at least {wire.MIN_PIECE_BYTES} bytes"
            )
        end, size = offset + len(data), self._sizes[slot]
        if offset < 0 or end > size:
            raise wire.WireError(f"piece [{offset}, {end}) overruns slot {slot} of {size} bytes")
        if not data:
            return
        pieces = self._pieces[slot]
        at = bisect.bisect_left(pieces, offset, key=lambda p: p[0])
        before_end = pieces[at - 1][0] + len(pieces[at - 1][1]) if at else self._taken[slot]
        if (
            offset < self._whole[slot]
            or offset < before_end
            or (at < len(pieces) and end > pieces[at][0])
        ):
            raise wire.WireError(
                f"piece [{offset}, {end}) of slot {slot} overlaps bytes that already arrived; "
                "pieces must tile each tensor exactly once"
            )
        pieces.insert(at, (offset, memoryview(data)))
        self.held += len(data)
        self._received[slot] += len(data)
        whole = self._whole[slot]
        for start, piece in pieces[at:]:
            if start != whole:
                break
            whole += len(piece)
        self._whole[slot] = whole
        if not self._keep[slot]:
            self.take(slot, whole)

    def whole(self, slot: int) -> int:
        """Every byte of ``slot`` below this has arrived."""
        return self._whole[slot]

    def take(self, slot: int, stop: int) -> bytes:
        """The bytes of ``slot`` from the last taken up to ``stop`` (all arrived), which
        are dropped here; one copy (the join), none for a single whole piece."""
        start, pieces = self._taken[slot], self._pieces[slot]
        assert stop <= self._whole[slot], "take past the bytes that arrived"
        out: list[memoryview] = []
        at = start
        while at < stop:
            offset, piece = pieces[0]
            end = offset + len(piece)
            if end <= stop:
                out.append(piece)
                pieces.pop(0)
            else:  # the piece straddles ``stop``: its tail stays
                out.append(piece[: stop - offset])
                pieces[0] = (stop, piece[stop - offset :])
            at = min(end, stop)
        self._taken[slot] = stop
        self.held -= stop - start
        whole = out[0].obj if len(out) == 1 else None
        if type(whole) is bytes and len(whole) == out[0].nbytes:
            return whole  # one piece, all of it: no copy
        return b"".join(out)

    def finish(self) -> None:
        """Refuse a stream that ended before every slot arrived whole."""
        for slot, size in enumerate(self._sizes):
            if self._whole[slot] != size:
                raise wire.WireError(
                    f"slot {slot}: received {self._received[slot]} of {size} bytes; pieces "
                    f"must tile each tensor exactly once (bytes from {self._whole[slot]} on "
                    "never arrived whole)"
                )
