"""Running chunks on the pool: the express lane, timeouts, cancellation, and retry
after a lost worker (see pool.py for the express lane and for reclaiming workers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from ray import exceptions as rex

from gradserve_server import errors
from gradserve_server.channel import ChannelCall, ChannelLost
from gradserve_server.pool import ActorPool, Worker
from gradserve_workers.actor import OVERRUN
from gradserve_workers.tasks import ChunkResult

log = logging.getLogger("gradserve.dispatch")

# A chunk whose worker died (node lost, OOM) is retried on another worker.
MAX_ATTEMPTS = 3
# What a lost worker looks like from here: the actor is gone, or it finished the
# chunk but its result lay in the object store of a node that died before we read
# it (ObjectLostError: the chunk ran, and runs again elsewhere).
# A worker's direct channel that closed means its process is gone too.
WORKER_LOST = (rex.ActorDiedError, rex.ActorUnavailableError, rex.ObjectLostError, ChannelLost)

Submit = Callable[[Any], Any]  # actor handle -> ObjectRef of a ChunkResult
T = TypeVar("T")


@dataclass(frozen=True)
class Packed:
    """A chunk call packed as one message (:func:`~gradserve_workers.tasks.pack_call`):
    sent by the worker's direct channel when it has one (channel.py), else by Ray."""

    message: bytes

    def __call__(self, handle: Any) -> Any:
        return handle.run.remote(self.message)


def _submit(worker: Worker, submit: Submit) -> Any:
    channel = worker.open_channel
    if isinstance(submit, Packed) and channel is not None:
        return channel.call(submit.message)
    return submit(worker.handle)


async def run_chunk(pool: ActorPool, tenant: str, submit: Submit, timeout: float) -> ChunkResult:
    """One chunk: on an express actor when it qualifies (see pool.py), else on a
    regular worker in its tenant's turn."""
    pool.enter(tenant)
    try:
        express = pool.express_for(tenant)
        if express is not None:
            result = await _on_express(pool, express, submit, timeout)
            if result is not None:
                return result
            pool.overran(tenant)
        return await _on_pool(pool, tenant, submit, timeout)
    finally:
        pool.leave(tenant)


async def _on_express(
    pool: ActorPool, worker: Worker, submit: Submit, timeout: float
) -> ChunkResult | None:
    """The chunk's result from an express actor; None when it overran the express
    budget (the actor stopped it) or the actor was lost: the caller runs it again."""
    # the actor stops the chunk itself at express_seconds; a single operation that
    # does not end in the grace period after that gets the actor reclaimed
    limit = min(timeout, pool.express_seconds + pool.cancel_grace)
    try:
        result: ChunkResult = await _on_worker(pool, worker, submit, limit)
    except WORKER_LOST as error:
        pool.retire(worker, f"died: {error}")
        return None
    except errors.ServiceError:
        return None  # it ran past the limit: _on_worker is reclaiming the actor
    except asyncio.CancelledError:
        raise  # _on_worker gave the worker back or is reclaiming it
    except BaseException:
        pool.release(worker)
        raise
    pool.release(worker)
    if result.error is not None and result.error.kind == OVERRUN:
        return None
    return result


async def _on_pool(pool: ActorPool, tenant: str, submit: Submit, timeout: float) -> ChunkResult:
    """One chunk on a regular worker, retried elsewhere if its worker dies."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        worker = await pool.acquire(tenant)
        try:
            result: ChunkResult = await _on_worker(pool, worker, submit, timeout)
        except WORKER_LOST as error:
            pool.retire(worker, f"died: {error}")
            if attempt == MAX_ATTEMPTS:
                raise errors.unavailable(
                    f"workers kept dying ({attempt} tries): {type(error).__name__}"
                ) from None
            log.warning("chunk retried after worker loss (attempt %d)", attempt)
            continue
        except errors.ServiceError:
            raise  # a timeout: the worker is being reclaimed
        except asyncio.CancelledError:
            raise  # _on_worker gave the worker back or is reclaiming it
        except BaseException:
            pool.release(worker)
            raise
        pool.release(worker)
        return result
    raise AssertionError("unreachable")


async def _on_worker(pool: ActorPool, worker: Worker, submit: Submit, timeout: float) -> Any:
    ref = _submit(worker, submit)
    try:
        # no task of its own for the wait (as wait_for would make): a small chunk's
        # round trip is a few ms, and each task costs the event loop another turn
        async with asyncio.timeout(timeout):
            return await ref
    except TimeoutError:
        if _done(ref):  # it finished in the very turn the timeout fired: keep the result
            return await ref
        # the worker's own budget (max_call_seconds) should have stopped it first:
        # cancel it, and kill its process only if that does not work either
        pool.reclaim(worker, ref, f"chunk ran past {timeout:g} s")
        raise errors.exhausted(
            f"the function ran for more than {timeout:g} s on one chunk (the server's "
            "--chunk-timeout); it was stopped"
        ) from None
    except asyncio.CancelledError:
        # the caller went away or its deadline passed: stop the work it started,
        # cooperatively (a new worker process would cost seconds)
        if _done(ref):
            pool.release(worker)
        else:
            pool.reclaim(worker, ref, "cancelled while running")
        raise


def _done(ref: Any) -> bool:
    if isinstance(ref, ChannelCall):
        return ref.done()
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


async def gather_or_cancel(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """All in parallel, results in order; the first failure (or the caller's
    cancellation) cancels the rest, which dispatch turns into stopped Ray work."""
    pending = list(coros)
    if len(pending) == 1:  # a task would cost another turn of the event loop per call
        return [await pending[0]]
    tasks = [asyncio.ensure_future(c) for c in pending]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
