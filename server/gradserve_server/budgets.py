"""The server's budgets, and each request's cost estimated from shapes before any work.

One place knows what a call may cost: its points, its input elements and bytes,
its reply's bytes, and the bytes all calls together may hold in flight (incoming
streams, replies, server streams). Every estimate here reads dtypes and shapes
only, with Python integers (no int64 wrap-around), before a byte is decoded,
sampled or allocated, and a refusal is RESOURCE_EXHAUSTED naming the budget, its
flag and the estimate. The flags and defaults are in :mod:`gradserve_server.config`;
``docs/limits.md`` documents each.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import memory
from gradserve_server.config import ServerConfig
from gradserve_server.errors import exhausted, invalid
from gradserve_workers.replies import (
    NEEDS_OUTPUT_SHAPE,
    ReplyBudget,
    over_reply_budget,
    reply_elements,
)

# Tensors on the wire have at most this many dimensions: NumPy refuses more than 64,
# and a Jacobian's result has the output's and the input's dimensions (and the points').
MAX_DIMS = 32
# Bytes per element of each wire dtype (unspecified: float64, what sampled points and
# a request without a dtype compute in unless every input is float32).
ITEMSIZE: dict[int, int] = {pb.DTYPE_FLOAT32: 4, pb.DTYPE_FLOAT64: 8}
# A call's or task's sampled elements, all inputs together, are bounded by this many
# times --max-points (as well as by --max-request-bytes).
SAMPLE_ELEMENTS_PER_POINT = 16


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def itemsize(dtype: int) -> int:
    """Bytes per element of ``dtype``; float64's for an unspecified one."""
    return ITEMSIZE.get(dtype, 8)


def compute_itemsize(dtype: int, input_dtypes: Iterable[int]) -> int:
    """Bytes per element a request computes in: its own dtype, else float32's only
    when every input is float32 (the codec's dtype rule).

    >>> compute_itemsize(pb.DTYPE_UNSPECIFIED, [pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT64])
    8
    """
    if dtype in ITEMSIZE:
        return ITEMSIZE[dtype]
    return 4 if set(input_dtypes) == {pb.DTYPE_FLOAT32} else 8


def max_sample_elements(max_points: int) -> int:
    """The sampled elements one call or task may draw, all inputs together."""
    return max_points * SAMPLE_ELEMENTS_PER_POINT


@dataclass(frozen=True)
class SampleCost:
    """A sampled input's size, from its spec's numbers (Python integers: no wrap)."""

    count: int
    shape: tuple[int, ...]
    itemsize: int

    @property
    def per_point(self) -> int:
        return math.prod(self.shape)

    @property
    def elements(self) -> int:
        return self.count * self.per_point

    @property
    def nbytes(self) -> int:
        return self.elements * self.itemsize


def sample_cost(spec: pb.SampleSpec, where: str, field: str | None = None) -> SampleCost:
    """The one check of a SampleSpec's count and shape, before anything is drawn;
    its size for the budgets that apply where it is used.

    >>> sample_cost(pb.SampleSpec(shape=[3, 2**62], count=2), "x").elements
    27670116110564327424
    """
    if spec.count < 1:
        raise invalid(f"{where}: sample count must be at least 1, not {spec.count}", field or where)
    shape = tuple(int(d) for d in spec.shape)
    if any(d < 0 for d in shape):
        raise invalid(
            f"{where}: sample shape {list(shape)} is not a valid shape (a negative dimension)",
            field or where,
        )
    return SampleCost(int(spec.count), shape, itemsize(spec.dtype))


@dataclass(frozen=True)
class Budgets:
    """What one call, and all calls together, may cost (0: no limit)."""

    reply_bytes: int
    request_bytes: int
    inflight_bytes: int
    stream_bytes: int
    points: int
    input_elements: int
    tensor_elements: int
    message_bytes: int
    # stored results: enforced by the job manager
    job_bytes: int = 0
    tenant_stored_bytes: int = 0
    stored_bytes: int = 0

    @classmethod
    def from_config(cls, config: ServerConfig) -> Budgets:
        b = config.budgets
        return cls(
            reply_bytes=int(b.get("max_reply_bytes", 0)),
            request_bytes=int(b.get("max_request_bytes", 0)),
            inflight_bytes=int(b.get("max_inflight_bytes", 0)),
            stream_bytes=int(b.get("max_stream_bytes", 0)),
            points=config.max_points,
            input_elements=int(config.limits["max_input_elements"]),
            tensor_elements=int(config.limits["max_tensor_elements"]),
            message_bytes=config.max_message_bytes,
            job_bytes=int(b.get("max_job_bytes", 0)),
            tenant_stored_bytes=int(b.get("max_tenant_stored_bytes", 0)),
            stored_bytes=int(b.get("max_stored_bytes", 0)),
        )

    # ------------------------------------------------------------- shapes

    def shape(self, msg: pb.Tensor, where: str) -> tuple[int, ...]:
        """A wire tensor's shape, refused if it is malformed or has a dimension no
        tensor of this server could have (``[0, 2**62]`` holds no bytes, but nothing
        that takes it apart would survive it)."""
        if msg.dtype not in ITEMSIZE:
            raise invalid(f"{where}: dtype must be float32 or float64", where)
        return self.dims(tuple(int(d) for d in msg.shape), where)

    def dims(self, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
        """``shape``, refused if a tensor of this server could not have it."""
        if len(shape) > MAX_DIMS:
            raise invalid(
                f"{where}: {len(shape)} dimensions; tensors have at most {MAX_DIMS}", where
            )
        largest = max(self.points, self.tensor_elements)
        for axis, d in enumerate(shape):
            if d < 0:
                raise invalid(f"{where}: dimension {axis} of shape {shape} is negative", where)
            if d > largest:
                raise exhausted(
                    f"{where}: dimension {axis} is {d}, over the largest any tensor may have "
                    f"({largest}: {flag('max_points')} / {flag('max_tensor_elements')})",
                    where,
                )
        return shape

    # ------------------------------------------------------------- estimates

    def estimate_compute(
        self,
        req: pb.ComputeRequest,
        inputs: Sequence[str],
        ops: Sequence[str],
        wrt: Sequence[str],
        call: str,
    ) -> ComputeEstimate:
        """A compute request's cost from its header's shapes (no tensor is decoded).

        ``inputs`` are the function's inputs and ``wrt`` the resolved wrt names; an
        unnamed input stands for the function's only one. Names that bind to nothing
        are left for the binding to report.
        """
        shapes: dict[str, tuple[int, ...]] = {}
        input_bytes = 0
        for what, tensors in (
            ("input", req.inputs),
            ("tangent", req.tangents),
            ("vector", req.vector),
        ):
            for name, msg in tensors.items():
                where = f"{what} {name!r}" if name else what
                shape = self.shape(msg, where)
                input_bytes += math.prod(shape) * ITEMSIZE[msg.dtype]
                if what == "input":
                    shapes[name or (inputs[0] if len(inputs) == 1 else "")] = shape
        cotangent: tuple[int, ...] | None = None
        if req.HasField("cotangent"):
            cotangent = self.shape(req.cotangent, "cotangent")
            input_bytes += math.prod(cotangent) * ITEMSIZE[req.cotangent.dtype]
        lead = 1 if req.batched else 0
        points = max((s[0] for s in shapes.values() if s), default=1) if req.batched else 1
        per_point = sum(math.prod(s[lead:]) for s in shapes.values())
        n = sum(math.prod(shapes[w][lead:]) for w in wrt if w in shapes)
        out: int | None = None
        if cotangent is not None:
            out = math.prod(cotangent[lead:])
        elif not NEEDS_OUTPUT_SHAPE.intersection(ops):
            out = 1  # grad and hessian need a scalar output; the rest do not use it
        size = compute_itemsize(req.dtype, (t.dtype for t in req.inputs.values()))
        reply = reply_elements(ops, 1 if out is None else out, n) * points * size
        return ComputeEstimate(
            call, tuple(ops), points, per_point, input_bytes, reply, out, n, size
        )

    def estimate_samples(self, samples: Mapping[str, pb.SampleSpec], call: str) -> int:
        """The bytes a check's (or task's) sampled inputs would take, refused before
        a single point is drawn: counts and shapes are checked with Python integers."""
        total = 0
        for name, spec in samples.items():
            where = f"{call}: input {name!r}" if name else f"{call}: input"
            cost = sample_cost(spec, where)
            shape = self.dims(cost.shape, f"{where}: sample shape")
            if cost.count > self.points > 0:
                raise exhausted(
                    f"{where}: {cost.count} sampled points is over the server's limit of "
                    f"{self.points} ({flag('max_points')})",
                    where,
                )
            if cost.per_point > self.input_elements > 0:
                raise exhausted(
                    f"{where}: sample shape {list(shape)} has {cost.per_point} elements per "
                    f"point, over the limit of {self.input_elements} "
                    f"({flag('max_input_elements')})",
                    where,
                )
            total += cost.nbytes
        self._within(total, self.request_bytes, "max_request_bytes", f"{call}: sampled inputs")
        return total

    # ------------------------------------------------------------- admission

    def admit_compute(self, est: ComputeEstimate, unary: bool = False) -> ReplyBudget | None:
        """Refuse a request over a budget; the reply budget the worker must still check
        once it knows the output's shape (None when the estimate was exact). A unary
        call's budget carries the message limit too, so that a reply too big for one
        message is sent through ComputeStream without being computed twice."""
        if est.points > self.points > 0:
            raise exhausted(
                f"{est.call}: {est.points} points is over the server's limit of {self.points} "
                f"({flag('max_points')})",
                "inputs",
            )
        if est.per_point_elements > self.input_elements > 0:
            raise exhausted(
                f"{est.call}: {est.per_point_elements} input elements per point is over the "
                f"limit of {self.input_elements} (max_input_elements)",
                "inputs",
            )
        self.admit_request_bytes(est.input_bytes, est.call)
        budget = ReplyBudget(
            self.reply_bytes, est.points, est.itemsize, flag("max_reply_bytes"),
            message_bytes=self.message_bytes if unary else 0,
        )  # fmt: skip
        if est.reply_bytes > self.reply_bytes > 0:
            raise exhausted(
                over_reply_budget(est.call, est.reply_bytes, budget, est.ops, est.out, est.n)
            )
        if est.out is not None or not (budget.max_bytes or budget.message_bytes):
            return None
        return budget

    def admit_request_bytes(self, nbytes: int, call: str) -> None:
        self._within(nbytes, self.request_bytes, "max_request_bytes", f"{call}: the inputs")

    @staticmethod
    def _within(size: int, limit: int, name: str, what: str) -> None:
        if size > limit > 0:
            raise exhausted(
                f"{what} would take {size:,} bytes, over the server's budget of {limit:,} "
                f"bytes per call ({flag(name)})"
            )


@dataclass(frozen=True)
class ComputeEstimate:
    """A compute request's cost; ``out`` (output elements per point) is None when only
    running the function can tell, and ``reply_bytes`` is then a lower bound."""

    call: str
    ops: tuple[str, ...]
    points: int
    per_point_elements: int
    input_bytes: int
    reply_bytes: int
    out: int | None
    n: int  # elements of the wrt inputs, per point
    itemsize: int


class InFlight:
    """Bytes the server holds for calls in progress, all callers together: incoming
    streams (their declared size, reserved before a piece is kept), replies being
    sent, and pieces of server streams waiting for their reader.

    :meth:`take` refuses at once (a caller can try again); :meth:`wait` waits for
    room up to a timeout (server streams, whose reader decides the pace).
    """

    def __init__(self, limit: int, name: str = "max_inflight_bytes") -> None:
        self.limit = limit
        self.name = name
        self.used = 0
        self._freed: asyncio.Event | None = None

    def _fits(self, nbytes: int) -> bool:
        return not self.limit or self.used + nbytes <= self.limit or self.used == 0

    def take(self, nbytes: int, what: str) -> Reservation:
        if not self._fits(nbytes):
            raise exhausted(
                f"{what}: {nbytes:,} bytes would not fit: the server holds {self.used:,} of "
                f"its {self.limit:,} bytes for calls in flight ({flag(self.name)}); "
                "try again shortly"
            )
        self.used += nbytes
        return Reservation(self, nbytes)

    async def wait(self, nbytes: int, what: str, timeout: float) -> Reservation:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._fits(nbytes) and (left := deadline - loop.time()) > 0:
            if self._freed is None:
                self._freed = asyncio.Event()
            self._freed.clear()  # no await since the check: no release is missed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), left)
        return self.take(nbytes, what)

    def _release(self, nbytes: int) -> None:
        self.used -= nbytes
        if self._freed is not None:
            self._freed.set()
        if nbytes >= memory.TRIM_BYTES:
            memory.trim_soon()


class Reservation:
    """Bytes held in an :class:`InFlight` until released (once; a context manager)."""

    def __init__(self, pool: InFlight, nbytes: int) -> None:
        self._pool: InFlight | None = pool
        self.nbytes = nbytes

    def release(self) -> None:
        if self._pool is not None:
            self._pool._release(self.nbytes)
            self._pool = None

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
