"""The fast lane: small compute and check calls answered in the server's own process.

A unary grad of ten inputs computes in well under a millisecond, a check of a
scalar function of a thousand inputs in about two; through a Ray actor each also
pays a round trip (pickling, the actor's queue, the reply's bookkeeping on both
sides) of 1-2 ms, most of such a call's time. The fast lane runs small calls on one
dedicated thread of the server instead, with the workers' own code
(:class:`gradserve_workers.actor.GradActor`, instantiated here rather than as a Ray
actor): the same language runtime, check engine, limits and cancellation.

Which calls (per request, by cost):

- compute and check calls of functions in the language only; jobs and registered
  functions (``"@NAME"``: the operator's code, which no budget can stop between
  operations) stay on Ray, and so does a check the server splits across workers
  (``planner.check_shards``: its first run, or one whose whole run was long enough
  to gain from it);
- that plan as one chunk, of at most ``--fast-lane-elements`` elements estimated
  from shapes (points x the planner's elements per point: inputs and outputs; for
  a check, its Jacobian's estimate);
- whose function, ops (or check) and shapes did not take ``--fast-lane-seconds``
  or more the last time they ran (in either lane: a bounded memory of measured
  seconds); a check, whose own arrays (Jacobians of n x m elements, m unknown until
  the function runs) no shape estimate or language budget bounds, only once such a
  run was measured: its first run is on Ray;
- while the lane holds fewer than :data:`MAX_IN_LANE` calls (one computes, the
  next waits for the thread); more go to Ray, which has room for them.

A call that runs past ``--fast-lane-seconds`` is stopped by the language runtime
between operations (the express lane's budget, see pool.py) and runs again on Ray;
so does one that needs more memory than the lane allows (:data:`CALL_BYTES`). Its
function and shapes then come back to the lane only once a run on Ray took less
than the budget (a call that overran because the machine was busy). A call whose
caller goes away (a deadline, a cancel) is cancelled the same way, or never starts
when it was still waiting. A call that does not stop (one long operation) is given
up on :data:`GRACE_S` after its budget: it runs again on Ray, and the lane takes
nothing until its thread is free.

The compute runs off the event loop, which keeps serving (health checks included)
while it does; torch in this process uses one intra-op thread, so a lane call
takes at most one of the machine's cores and the loop keeps the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import numpy as np

from gradserve_server import calls, chunks, memory, metrics
from gradserve_server.errors import from_chunk_error
from gradserve_server.planner import WorkLog, request_elements
from gradserve_server.requests import CheckRequest, ComputeRequest
from gradserve_workers import registry
from gradserve_workers.actor import OVERRUN, GradActor
from gradserve_workers.tasks import CheckSpec, ChunkResult, ComputeSpec

log = logging.getLogger("gradserve.fastlane")

# ComputeMetadata.lane: where a call ran
LANE_FAST = "fast"
LANE_RAY = "ray"
# the thread the lane's calls compute on
THREAD_NAME = "gradserve-fastlane"
# calls in the lane at once: one computing, one waiting for the thread; more go to Ray
MAX_IN_LANE = 2
# Memory one fast-lane call may hold in the server process. A worker's
# --max-call-bytes (2 GiB by default) is sized for a worker process of its own;
# a small call that needs more than this runs again on Ray, under the full budget.
CALL_BYTES = 256 << 20
# A lane call still running this long after its budget (one operation that does not
# end) is given up on: it runs again on Ray.
GRACE_S = 0.5

RayLane = Callable[[], Awaitable[list[ChunkResult]]]
Request = ComputeRequest | CheckRequest
Spec = ComputeSpec | CheckSpec


# a lane check that grew the server's resident memory by more than this trims the heap
TRIM_AFTER_BYTES = 8 << 20


class _Thread:
    """One daemon thread running submitted work in order. A ThreadPoolExecutor's
    thread would be joined at exit: a call stuck in one operation would hold the
    stopping server."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=THREAD_NAME, daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, fn, args))
        return future

    def close(self) -> None:
        self._queue.put(None)

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue  # its caller went away while it waited
            try:
                future.set_result(fn(*args))
            except BaseException as error:
                future.set_exception(error)


class _Call:
    """One lane call's cancel, whichever comes first: its caller going away (from
    the event loop) or its start (on the lane's thread, which creates its watch)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watch: Any = None
        self._cancelled = False
        self.given_up = False  # its caller stopped waiting; it still holds the thread

    def started(self, watch: Any) -> None:
        with self._lock:
            self._watch = watch
            if self._cancelled:  # its caller went away while it waited for the thread
                watch.cancel()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._watch is not None:
                self._watch.cancel()  # the runtime stops it at its next operation


class _LocalActor(GradActor):
    """A GradActor in the server's process, working on the lane's thread itself."""

    def work_here(
        self, spec: Spec, arrays: Mapping[str, np.ndarray], stop: int, call: _Call
    ) -> ChunkResult:
        """The call's one chunk, ``[0, stop)``: a compute or a check."""
        # the watch starts with the work: time spent waiting for the thread is not
        # charged to the call's budget
        watch = self._watch(spec.limits)
        call.started(watch)
        if not isinstance(spec, CheckSpec):
            return self.run_here(lambda: self._compute(spec, arrays, 0, stop), watch)
        before = memory.resident_bytes()
        try:
            return self.run_here(lambda: self._check(spec, arrays, 0, stop), watch)
        finally:
            # the server's memory back where it was: a check that grew it (its
            # Jacobians, outside the language's budget) leaves its freed heap to the
            # system, not to glibc's reuse (~0.3 ms; a small check does not pay it).
            # Computes are small by their shapes and held to the lane's call budget.
            if memory.resident_bytes() - before > TRIM_AFTER_BYTES:
                memory.trim_now()


class FastLane:
    """Small calls on one thread of this process (see the module's docstring)."""

    def __init__(self, actor: Any, elements: int, seconds: float, thread: _Thread) -> None:
        self._actor = actor
        self.elements = elements
        self.seconds = seconds
        self._thread = thread
        self._in_lane = 0
        self._given_up = 0  # calls past budget + grace still holding the thread
        # seconds of the last run of each (function, ops, shapes), in either lane
        self._measured = WorkLog()
        # checks that overran here: they stay on Ray (see run)
        self._overran = WorkLog()
        self.ran = 0  # calls answered here
        self.moved = 0  # calls stopped (or given up on) here and run again on Ray

    @classmethod
    async def start(cls, elements: int, seconds: float) -> FastLane | None:
        """The lane, warm (torch imported on its thread, off the event loop); None,
        said in the log, when it is off or this process cannot compute."""
        if elements <= 0:
            log.info("fast lane off (--fast-lane-elements 0): every call runs on Ray")
            return None
        thread = _Thread()
        # a GradActor enables its registered functions in its process: here, none (their
        # calls never take this lane), which must not disable the server's validation
        enabled = registry.catalogue()
        try:
            # CPU: small calls gain nothing from a device, and the server may have none
            actor = await asyncio.wrap_future(thread.submit(_LocalActor, "cpu", 1, seconds))
        except Exception as error:  # no torch (a server without the workers' packages)
            thread.close()
            log.warning(
                "fast lane off: the server cannot compute here (%s): every call runs on Ray", error
            )
            return None
        finally:
            registry.install(enabled)
        log.info("fast lane on: calls of up to %d elements, stopped after %g s", elements, seconds)
        return cls(actor, elements, seconds, thread)

    def close(self) -> None:
        self._thread.close()

    @property
    def busy(self) -> int:
        """Calls in the lane now (computing or waiting for the thread)."""
        return self._in_lane

    # ------------------------------------------------------------- routing

    def _key(
        self, req: Request, spec: Spec, arrays: Mapping[str, np.ndarray]
    ) -> tuple[Any, ...] | None:
        """The call's key for measured seconds, when it may take the lane; else None."""
        if req.inputs.points * request_elements(req) > self.elements:
            return None
        if registry.reference(spec.source) is not None:
            return None
        shapes = tuple((k, v.shape) for k, v in sorted(arrays.items()))
        if isinstance(spec, CheckSpec):  # what the check does decides its cost
            claims = tuple(sorted(spec.claims.items()))
            what: tuple[Any, ...] = (spec.kind, spec.order, spec.fast, claims, spec.numeric)
        elif spec.chunk_size:
            return None
        else:
            what = spec.ops
        return (spec.source_hash, what, spec.wrt, spec.batched, spec.dtype, shapes)

    def _takes(self, key: tuple[Any, ...] | None, measured_only: bool) -> bool:
        """Whether the call of ``key`` runs here now; with ``measured_only`` (checks)
        only once a run of it was measured under the lane's budget."""
        if key is None or self._in_lane >= MAX_IN_LANE or self._given_up:
            return False
        if self._overran.seconds(key) is not None:
            return False
        last = self._measured.seconds(key)
        if last is None:
            return not measured_only
        return last < self.seconds

    async def run(
        self, req: Request, spec: Spec, ray_lane: RayLane
    ) -> tuple[list[ChunkResult], str]:
        """The call's results and the lane that ran it: here when it is small (a
        user error raises as from a worker), else (or when it overran here) on Ray."""
        arrays = chunks.payload(req, 1)  # one chunk: the arrays themselves, never a ref
        key = self._key(req, spec, arrays)
        # a check's own arrays (its n x m Jacobians, the perturbed outputs) are the
        # check engine's, outside the language's memory budget, and its shapes do not
        # bound them (m is known once f has run): its first run is on Ray
        if self._takes(key, measured_only=isinstance(spec, CheckSpec)):
            assert key is not None
            stop = req.inputs.points if req.inputs.batched else 1
            result = await self._run(spec, arrays, stop)
            if result is not None:
                self._measured.record(key, result.seconds)
                self.ran += 1
                if result.error is not None:
                    raise from_chunk_error(result.error)
                return [result], LANE_FAST
            self._measured.record(key, math.inf)
            self.moved += 1
            if isinstance(spec, CheckSpec):
                # a check's cost here is not bounded by its shapes, and it stops only
                # between the language's operations: one that overran (measured fast on
                # Ray, slow here: seen at 300 inputs and 1,200 outputs, 0.5 s past its
                # budget) is not tried here again, whatever Ray measures next
                self._overran.record(key, math.inf)
        results = await ray_lane()
        if key is not None:
            self._measured.record(key, sum(r.seconds for r in results))
        return results, LANE_RAY

    # ------------------------------------------------------------- running

    def _limits(self, limits: Mapping[str, int]) -> dict[str, int]:
        own = dict(limits)
        own["max_call_bytes"] = min(int(own.get("max_call_bytes", CALL_BYTES)), CALL_BYTES)
        return own

    async def _run(
        self, spec: Spec, arrays: Mapping[str, np.ndarray], stop: int
    ) -> ChunkResult | None:
        """The call on the lane's thread; None when it has to run on Ray instead."""
        mine = replace(spec, limits=self._limits(spec.limits))
        call = _Call()
        loop = asyncio.get_running_loop()
        self._in_lane += 1
        future: Future[ChunkResult] = self._thread.submit(
            self._actor.work_here, mine, arrays, stop, call
        )
        # the lane is free again when the thread is done with the call, not when its
        # caller stops waiting: a cancelled call still holds the thread until it stops
        future.add_done_callback(lambda _: _call_soon(loop, lambda: self._left(call)))
        try:
            async with asyncio.timeout(self.seconds + GRACE_S):
                result = await asyncio.wrap_future(future)
        except TimeoutError:
            call.cancel()
            if not future.done():
                call.given_up = True
                self._given_up += 1
            log.warning(
                "fast lane: a call did not stop %g s after its budget; it runs again on Ray, "
                "and the lane takes nothing until it ends",
                GRACE_S,
            )
            return None
        except asyncio.CancelledError:
            call.cancel()  # it stops at its next operation, or never starts
            raise
        error = result.error
        if error is not None and (
            error.kind == OVERRUN
            or (error.limit == "max_call_bytes" and mine.limits != spec.limits)
        ):
            # once per function and shapes while they stay slow: worth an INFO line
            log.info("fast lane: a call moves to Ray: %s", error.message)
            return None
        return result

    def _left(self, call: _Call) -> None:
        self._in_lane -= 1
        if call.given_up:
            self._given_up -= 1


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed (the server stopped)
        loop.call_soon_threadsafe(fn)


async def route(
    lane: FastLane | None, req: Request, spec: Spec, ray_lane: RayLane
) -> tuple[list[ChunkResult], str]:
    """A compute or check call's results and its lane: the fast lane's choice, or Ray
    when there is no fast lane."""
    if lane is None:
        results, ran = await ray_lane(), LANE_RAY
    else:
        results, ran = await lane.run(req, spec, ray_lane)
    if ran != LANE_RAY:
        metrics.observe_fast_lane(calls.identity().tenant)
    calls.note(lane=ran)  # in the call's log line
    return results, ran
