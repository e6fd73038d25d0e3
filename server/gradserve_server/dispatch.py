"""Running chunks on the pool: timeouts, cancellation, and retry after a lost worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import ray
from ray import exceptions as rex

from gradserve_server import errors
from gradserve_server.pool import ActorPool, Worker
from gradserve_workers.tasks import ChunkResult

log = logging.getLogger("gradserve.dispatch")

# A chunk whose worker died (node lost, OOM) is retried on another worker.
MAX_ATTEMPTS = 3
# What a lost worker looks like from here: the actor is gone, or it finished the
# chunk but its result lay in the object store of a node that died before we read
# it (ObjectLostError: the chunk ran, and runs again elsewhere).
WORKER_LOST = (rex.ActorDiedError, rex.ActorUnavailableError, rex.ObjectLostError)

Submit = Callable[[Any], Any]  # actor handle -> ObjectRef of a ChunkResult
T = TypeVar("T")


async def run_chunk(pool: ActorPool, tenant: str, submit: Submit, timeout: float) -> ChunkResult:
    """One chunk on one worker, retried elsewhere if its worker dies."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        worker = await pool.acquire(tenant)
        try:
            result = await _on_worker(pool, worker, submit, timeout)
        except WORKER_LOST as error:
            pool.retire(worker, f"died: {error}")
            if attempt == MAX_ATTEMPTS:
                raise errors.unavailable(
                    f"workers kept dying ({attempt} tries): {type(error).__name__}"
                ) from None
            log.warning("chunk retried after worker loss (attempt %d)", attempt)
            continue
        except errors.ServiceError:
            raise  # a timeout: the worker was already retired
        except asyncio.CancelledError:
            raise  # _on_worker gave the worker back or retired it
        except BaseException:
            pool.release(worker)
            raise
        pool.release(worker)
        return result
    raise AssertionError("unreachable")


async def _on_worker(pool: ActorPool, worker: Worker, submit: Submit, timeout: float) -> Any:
    ref = submit(worker.handle)
    try:
        # no task of its own for the wait (as wait_for would make): a small chunk's
        # round trip is a few ms, and each task costs the event loop another turn
        async with asyncio.timeout(timeout):
            return await ref
    except TimeoutError:
        if _done(ref):  # it finished in the very turn the timeout fired: keep the result
            return await ref
        # a runaway function: the only sure way to stop it is to end its process
        pool.retire(worker, f"chunk ran past {timeout:g} s")
        raise errors.exhausted(
            f"the function ran for more than {timeout:g} s on one chunk (the server's "
            "--chunk-timeout); its worker was stopped and replaced"
        ) from None
    except asyncio.CancelledError:
        # the caller went away or its deadline passed: stop the work it started
        if _done(ref):
            pool.release(worker)
        else:
            pool.retire(worker, "cancelled while running")
        raise


def _done(ref: Any) -> bool:
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
