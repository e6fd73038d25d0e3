"""Tensors on the wire: NumPy arrays <-> ``gradserve.v1.Tensor``, and streamed pieces.

Shared by the SDK and the server (which depends on this distribution). Arrays
travel as raw little-endian C-order bytes; decoding is zero-copy over the
message's buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from gradserve.v1 import gradserve_pb2 as pb

# Pieces are well under the default 4 MiB gRPC message limit, with room for
# the message framing.
PIECE_BYTES = 2 * 1024 * 1024

_TO_PROTO: dict[np.dtype[Any], Any] = {
    np.dtype("float32"): pb.DTYPE_FLOAT32,
    np.dtype("float64"): pb.DTYPE_FLOAT64,
}
_FROM_PROTO: dict[Any, np.dtype[Any]] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
}
DTYPE_NAMES: dict[str, Any] = {"float32": pb.DTYPE_FLOAT32, "float64": pb.DTYPE_FLOAT64}


class WireError(ValueError):
    """A tensor's bytes do not match its dtype and shape."""


def as_float_array(value: Any, *, dtype: str | None = None, where: str = "input") -> np.ndarray:
    """Coerce array-likes (lists, scalars, NumPy, torch on CPU) to float32/float64.

    Integers and booleans become float64; other float widths become float64.
    """
    try:
        arr = np.asarray(value)
    except Exception as exc:  # an arbitrary object: say which input it was
        raise WireError(f"{where}: cannot be read as an array ({exc})") from exc
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise WireError(f"{where}: expected numbers, got an array of {arr.dtype}")
    if dtype is not None:
        target = np.dtype(dtype)
    elif arr.dtype in _TO_PROTO:
        target = arr.dtype
    else:
        target = np.dtype("float64")
    # asarray(order="C"), not ascontiguousarray: that makes a 0-d array 1-d
    return np.asarray(arr, dtype=target.newbyteorder("<"), order="C")


def encode(arr: np.ndarray, *, with_data: bool = True) -> pb.Tensor:
    """A float32/float64 array as a Tensor message (bytes omitted for stream headers)."""
    msg = pb.Tensor()
    fill(msg, arr, with_data=with_data)
    return msg


def fill(msg: pb.Tensor, arr: np.ndarray, *, with_data: bool = True) -> np.ndarray:
    """Write an array into a Tensor message in place (a message built and then
    appended to another is copied whole); returns the little-endian C-order array
    whose bytes the message holds, or would hold."""
    arr = np.asarray(arr, order="C")  # keeps a 0-d array 0-d (ascontiguousarray would not)
    dtype = np.dtype(arr.dtype).newbyteorder("=")
    if dtype not in _TO_PROTO:
        raise WireError(f"unsupported dtype {arr.dtype}; use float32 or float64")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    msg.dtype = _TO_PROTO[dtype]
    msg.shape[:] = arr.shape
    if with_data:
        msg.data = _as_bytes(arr)
    return arr


def _as_bytes(arr: np.ndarray) -> bytes:
    """The array's bytes; without a copy when it already views a whole bytes object
    (decoded from the wire, or joined by :func:`join_arrays`)."""
    base = arr.base
    while isinstance(base, np.ndarray):
        base = base.base
    if type(base) is bytes and arr.flags.c_contiguous and arr.nbytes == len(base):
        return base
    return arr.tobytes()


def join_arrays(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.concatenate`` along the first axis, backed by one ``bytes`` object, so that
    :func:`encode` can send it without another copy (read-only, like decoded arrays)."""
    first = arrays[0]
    blob = b"".join(np.ascontiguousarray(a, dtype=first.dtype).data for a in arrays)
    shape = (sum(int(a.shape[0]) for a in arrays), *first.shape[1:])
    return np.frombuffer(blob, dtype=first.dtype).reshape(shape)


def dtype_of(msg: pb.Tensor) -> np.dtype[Any]:
    """The NumPy dtype of a Tensor message (float32 or float64, little-endian)."""
    if msg.dtype not in _FROM_PROTO:
        raise WireError("dtype must be float32 or float64")
    return _FROM_PROTO[msg.dtype]


def expected_bytes(msg: pb.Tensor, where: str = "tensor") -> int:
    if msg.dtype not in _FROM_PROTO:
        raise WireError(f"{where}: dtype must be float32 or float64")
    if any(d < 0 for d in msg.shape):
        raise WireError(f"{where}: negative dimension in shape {tuple(msg.shape)}")
    count = 1
    for d in msg.shape:
        count *= int(d)
    return count * _FROM_PROTO[msg.dtype].itemsize


def decode(msg: pb.Tensor, where: str = "tensor", data: bytes | None = None) -> np.ndarray:
    """A Tensor message as a read-only array (zero-copy over ``data`` or ``msg.data``)."""
    if data is None and msg.HasField("shared_memory"):
        raise WireError(
            f"{where}: its bytes are in shared memory, which only Compute takes (not "
            "ComputeStream, checks or jobs); send them as data"
        )
    raw = msg.data if data is None else data
    need = expected_bytes(msg, where)
    if len(raw) != need:
        raise WireError(
            f"{where}: shape {tuple(msg.shape)} of {np.dtype(_FROM_PROTO[msg.dtype]).name} "
            f"needs {need} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=_FROM_PROTO[msg.dtype]).reshape(tuple(msg.shape))


Buffer = bytes | memoryview


def split_pieces(
    blobs: Sequence[Buffer | Sequence[Buffer]], size: int = PIECE_BYTES
) -> Iterator[pb.TensorPiece]:
    """Cut each slot's bytes into pieces of at most ``size``; a slot given as a
    sequence of buffers (a reply's chunks, in order) is sent as their concatenation
    without joining them first."""
    for slot, given in enumerate(blobs):
        parts = [given] if isinstance(given, bytes | memoryview) else given
        start = 0
        for blob in parts:
            yield from slot_pieces(slot, start, blob, size)
            start += len(memoryview(blob).cast("B"))


def slot_pieces(slot: int, offset: int, blob: Buffer, size: int) -> Iterator[pb.TensorPiece]:
    """The pieces (of at most ``size``) that carry ``blob`` to bytes ``offset`` on of
    ``slot``; a bytes object that fits one piece goes without a copy."""
    if type(blob) is bytes and len(blob) <= size:
        if blob:
            yield pb.TensorPiece(slot=slot, offset=offset, data=blob)
        return
    view = memoryview(blob).cast("B")
    for at in range(0, len(view), size):
        yield pb.TensorPiece(slot=slot, offset=offset + at, data=bytes(view[at : at + size]))


def split_rows(
    blobs: Sequence[Buffer], points: int, size: int = PIECE_BYTES
) -> Iterator[pb.TensorPiece]:
    """Pieces of slots that all hold ``points`` rows (a batched request), cut by rows:
    every slot's first rows before any slot's later ones, so that a receiver can
    start on the first points while the rest is still on the way (with one slot
    this is :func:`split_pieces`)."""
    views = [memoryview(b).cast("B") for b in blobs]
    rows = [len(v) // max(1, points) for v in views]
    step = max(1, size // max(1, sum(rows)))  # rows per round: about ``size`` bytes
    for first in range(0, points, step):
        last = min(points, first + step)
        for slot, (view, row) in enumerate(zip(views, rows, strict=True)):
            yield from slot_pieces(slot, first * row, view[first * row : last * row], size)


# A stream may send at most one piece per this many bytes it declares (plus a few):
# each piece kept costs a hundred bytes or so besides its data.
MIN_PIECE_BYTES = 1024


class PieceAssembler:
    """Collects the pieces of slots of known sizes, checking each as it arrives.

    A piece that reaches past its slot, or that brings more bytes than its slot
    holds (so overlaps another), is refused at once: a sender cannot make the
    receiver hold more than the slots' sizes. :meth:`finish` refuses overlaps and
    gaps: the pieces must tile every slot exactly once. Nothing is allocated but the
    pieces themselves; pieces in order (what every sender here does) cost one append
    each and one join per slot, others a sort at the end.
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        self._sizes = list(sizes)
        self._pieces: list[list[tuple[int, bytes]]] = [[] for _ in self._sizes]
        self._filled = [0] * len(self._sizes)
        self._in_order = [True] * len(self._sizes)
        self._count = 0
        self.max_pieces = 16 + len(self._sizes) + sum(self._sizes) // MIN_PIECE_BYTES
        self.received = 0

    def add(self, piece: pb.TensorPiece) -> None:
        slot, offset = piece.slot, piece.offset
        if not 0 <= slot < len(self._sizes):
            raise WireError(f"piece for slot {slot}, but there are {len(self._sizes)}")
        self._count += 1
        if self._count > self.max_pieces:
            raise WireError(
                f"more than {self.max_pieces} pieces for {sum(self._sizes)} bytes; send "
                f"pieces of at least {MIN_PIECE_BYTES} bytes"
            )
        data = piece.data
        end, size = offset + len(data), self._sizes[slot]
        if offset < 0 or end > size:
            raise WireError(f"piece [{offset}, {end}) overruns slot {slot} of {size} bytes")
        if not data:
            return
        if self._filled[slot] + len(data) > size:
            raise WireError(
                f"piece [{offset}, {end}) of slot {slot} overlaps others: the slot holds "
                f"{size} bytes and {self._filled[slot]} have arrived"
            )
        pieces = self._pieces[slot]
        if offset != (pieces[-1][0] + len(pieces[-1][1]) if pieces else 0):
            self._in_order[slot] = False
        pieces.append((offset, data))
        self._filled[slot] += len(data)
        self.received += len(data)

    def finish(self) -> list[bytes]:
        """Each slot's bytes, once pieces tile every slot exactly once."""
        out = []
        for slot, pieces in enumerate(self._pieces):
            if not self._in_order[slot]:
                pieces.sort(key=lambda p: p[0])
                at = 0
                for offset, data in pieces:
                    if offset != at:
                        what = (
                            f"the piece at offset {offset} overlaps the bytes before {at}"
                            if offset < at
                            else f"bytes [{at}, {offset}) never arrived"
                        )
                        raise WireError(
                            f"slot {slot}: {what}; pieces must tile each tensor exactly once"
                        )
                    at += len(data)
            if self._filled[slot] != self._sizes[slot]:
                raise WireError(
                    f"slot {slot}: received {self._filled[slot]} of {self._sizes[slot]} bytes"
                )
            out.append(pieces[0][1] if len(pieces) == 1 else b"".join(p[1] for p in pieces))
        self._pieces = [[] for _ in self._sizes]
        return out


def request_slots(req: pb.ComputeRequest) -> list[pb.Tensor]:
    """The tensors of a request in slot order (see ComputeRequestPart in the .proto)."""
    slots = [req.inputs[name] for name in sorted(req.inputs)]
    if req.HasField("cotangent"):
        slots.append(req.cotangent)
    slots += [req.tangents[name] for name in sorted(req.tangents)]
    slots += [req.vector[name] for name in sorted(req.vector)]
    return slots


def result_slots(results: Iterable[pb.OpResult]) -> list[pb.Tensor]:
    """The tensors of op results in slot order: as they appear."""
    return [out.tensor for result in results for out in result.outputs]


def join_pieces(slots: Sequence[pb.Tensor], pieces: Iterable[pb.TensorPiece]) -> list[bytes]:
    """Each slot's bytes from streamed pieces, checked against the slot's dtype and shape
    (decode them with ``decode(slot, data=blob)``: no copy into the message and out)."""
    assembler = PieceAssembler([expected_bytes(t, f"slot {i}") for i, t in enumerate(slots)])
    for piece in pieces:
        assembler.add(piece)
    return assembler.finish()
