"""The actor pool's state machine: round-robin between tenants, dead actors never reused.

The actor handles here are stand-ins for Ray's handles (the pool only calls
``handle.info.remote()``); ``ray.kill`` on them fails and the pool shrugs that off.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from support.standins import Ready

from gradserve_server.pool import ActorPool

_ids = itertools.count()


class _Method:
    def __init__(self, owner: _Handle) -> None:
        self.owner = owner

    def remote(self) -> Ready:
        return Ready({"name": f"actor-{self.owner.ident}"})


class _Handle:
    def __init__(self) -> None:
        self.ident = next(_ids)
        self.info = _Method(self)


def _pool(size: int) -> ActorPool:
    return ActorPool(_Handle, size)


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ActorPool(_Handle, 0)


def test_waiters_are_served_round_robin_by_tenant() -> None:
    async def run() -> list[str]:
        pool = _pool(1)
        await pool.start()
        held = await pool.acquire("big-job")
        order: list[str] = []

        async def want(tenant: str) -> None:
            worker = await pool.acquire(tenant)
            order.append(tenant)
            pool.release(worker)

        waiters = [asyncio.ensure_future(want("big-job")) for _ in range(5)]
        await asyncio.sleep(0)
        waiters.append(asyncio.ensure_future(want("small-call")))
        await asyncio.sleep(0)
        pool.release(held)
        await asyncio.gather(*waiters)
        return order

    order = asyncio.run(run())
    # the call that arrived after five queued chunks of the job goes second, not sixth
    assert order.index("small-call") == 1
    assert order.count("big-job") == 5


def test_cancelled_waiter_leaves_no_trace() -> None:
    async def run() -> int:
        pool = _pool(1)
        await pool.start()
        held = await pool.acquire("a")
        waiter = asyncio.ensure_future(pool.acquire("b"))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert pool.waiting == 0
        pool.release(held)
        return pool.idle

    assert asyncio.run(run()) == 1


def test_retired_worker_is_replaced_and_never_handed_out_again() -> None:
    async def run() -> None:
        pool = _pool(2)
        await pool.start()
        dead = await pool.acquire("t")
        pool.retire(dead, "died")
        pool.release(dead)  # a late release of a retired worker is ignored
        await asyncio.sleep(0.01)  # the replacement warms up
        seen = {id(await pool.acquire("t")), id(await pool.acquire("t"))}
        assert id(dead) not in seen
        assert len(pool.workers) == 2 and pool.replaced == 1

    asyncio.run(run())


def test_grow_counts_workers_still_starting() -> None:
    async def run() -> None:
        pool = _pool(2)
        await pool.start()
        assert pool.grow(2) == 0
        assert pool.grow(4) == 2 and pool.size == 4
        assert pool.grow(4) == 0  # the two are counted while they start
        await asyncio.sleep(0.01)
        assert pool.idle == 4

    asyncio.run(run())


class _SlowHandle(_Handle):
    """A handle whose probe answers only once ``answer`` is set: a worker still busy
    with a cancelled chunk."""

    def __init__(self, answer: asyncio.Event) -> None:
        super().__init__()
        self.answer = answer
        self.info = self  # type: ignore[assignment]

    def remote(self) -> Any:
        async def probe() -> dict[str, str]:
            await self.answer.wait()
            return {"name": f"actor-{self.ident}"}

        return probe()


def test_express_lane_takes_a_small_call_only_while_every_worker_is_busy() -> None:
    async def run() -> None:
        pool = ActorPool(_Handle, 1, _Handle, express=1)
        await pool.start()
        assert len(pool.express_workers) == 1 and pool.idle == 1
        pool.enter("small")
        assert pool.express_for("small") is None  # a regular worker is idle
        held = await pool.acquire("big")
        express = pool.express_for("small")
        assert express is not None and express.express
        assert pool.express_for("other") is None  # the one express actor is taken
        pool.release(express)
        assert pool.idle == 0, "an express actor never joins the regular workers"
        pool.enter("small")  # a second chunk of the same tenant: not a small call
        assert pool.express_for("small") is None
        pool.leave("small")
        pool.overran("small")
        assert pool.express_for("small") is None  # it overran once: the queue now
        pool.leave("small")
        pool.enter("next")
        assert pool.express_for("next") is express
        pool.release(held)

    asyncio.run(run())


def test_a_reclaimed_worker_comes_back_when_it_answers() -> None:
    async def run() -> None:
        answer = asyncio.Event()
        pool = ActorPool(lambda: _SlowHandle(answer), 1, cancel_grace=5.0)
        answer.set()
        await pool.start()
        worker = await pool.acquire("t")
        answer.clear()
        pool.reclaim(worker, object(), "cancelled while running")
        await asyncio.sleep(0.05)
        assert pool.reclaiming == 1 and pool.idle == 0  # still stopping
        answer.set()
        await asyncio.sleep(0.05)
        assert pool.reclaiming == 0 and pool.idle == 1
        assert pool.reclaimed == 1 and pool.replaced == 0

    asyncio.run(run())


def test_a_worker_that_does_not_stop_in_the_grace_period_is_replaced() -> None:
    async def run() -> None:
        answer = asyncio.Event()
        pool = ActorPool(lambda: _SlowHandle(answer), 1, cancel_grace=0.1)
        answer.set()
        await pool.start()
        worker = await pool.acquire("t")
        answer.clear()  # it never answers again
        pool.reclaim(worker, object(), "cancelled while running")
        await asyncio.sleep(0.3)
        assert worker.retired and pool.replaced == 1 and pool.reclaimed == 0

    asyncio.run(run())
