"""The actor pool after a node loss, without Ray: replacements join when ready.

When a node dies, the cluster may have no room for the replacement actors
until another node joins; Ray keeps them pending. The pool must not hand a
pending actor to a chunk (the chunk would hang until its timeout and fail):
replacements join the pool only once they answer. The end-to-end version of
this is test_external_cluster.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gradserve_server import pool as pool_mod
from gradserve_server.pool import ActorPool


class FakeMethod:
    def __init__(self, actor: FakeActor) -> None:
        self.actor = actor

    def remote(self) -> asyncio.Future[Any]:
        return self.actor.ready


class FakeActor:
    """Stands in for a Ray actor handle; ``ready`` resolves when it is placed."""

    def __init__(self, number: int, placed: bool) -> None:
        self.ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.number = number
        self.info = FakeMethod(self)
        if placed:
            self.place()

    def place(self) -> None:
        self.ready.set_result({"name": f"actor{self.number}"})

    def fail(self) -> None:
        self.ready.set_exception(RuntimeError("creation failed"))


def make_factory(placed_first: int) -> tuple[Any, list[FakeActor]]:
    actors: list[FakeActor] = []

    def make() -> FakeActor:
        actor = FakeActor(len(actors), placed=len(actors) < placed_first)
        actors.append(actor)
        return actor

    return make, actors


def test_a_pending_replacement_is_not_handed_out_until_ready() -> None:
    async def scenario() -> None:
        make, actors = make_factory(placed_first=2)
        pool = ActorPool(make, 2)
        await pool.start(timeout=5)
        lost = await pool.acquire("a")
        pool.retire(lost, "node lost")
        assert pool.starting == 1 and pool.idle == 1 and len(pool.workers) == 2
        survivor = await pool.acquire("a")
        assert survivor.handle is not actors[2]
        waiting = asyncio.ensure_future(pool.acquire("b"))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no idle worker; the pending one is not given out
        actors[2].place()  # a node with room joined
        fresh = await asyncio.wait_for(waiting, 5)
        assert fresh.handle is actors[2] and fresh.name == "actor2"
        assert pool.starting == 0

    asyncio.run(scenario())


def test_a_replacement_that_fails_to_start_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_mod, "REPLACE_RETRY_SECONDS", 0.01)

    async def scenario() -> None:
        make, actors = make_factory(placed_first=1)
        pool = ActorPool(make, 1)
        await pool.start(timeout=5)
        pool.retire(await pool.acquire("a"), "died")
        actors[1].fail()
        for _ in range(100):
            if len(actors) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(actors) == 3  # a third actor, after the failed second
        assert [w.handle for w in pool.workers] == [actors[2]]
        actors[2].place()
        worker = await asyncio.wait_for(pool.acquire("a"), 5)
        assert worker.handle is actors[2]

    asyncio.run(scenario())
