"""A chunk whose result was lost with its node runs again on another worker.

Found by `make test-deploy` (tests/deploy/compose_deployment.py): `docker kill` of
a worker container after its actor had finished a chunk, but before the server
read the result from that node's object store, failed the job's task with
INTERNAL (ray.exceptions.ObjectReconstructionFailedError) instead of running the
chunk again, as the server does when the actor itself dies.
"""

from __future__ import annotations

import asyncio
import logging
import types
from typing import Any

import grpc
import pytest
from ray import exceptions as rex

from gradserve_server import dispatch, errors


def lost_result() -> rex.ObjectReconstructionFailedError:
    return rex.ObjectReconstructionFailedError("f8" * 28)


class _Pool:
    """Hands out workers w0, w1, ... and records what happens to them."""

    def __init__(self) -> None:
        self.handed = 0
        self.retired: list[str] = []
        self.released: list[str] = []

    async def acquire(self, tenant: str) -> Any:
        self.handed += 1
        return types.SimpleNamespace(handle=f"w{self.handed - 1}", open_channel=None)

    def release(self, worker: Any) -> None:
        self.released.append(worker.handle)

    def retire(self, worker: Any, reason: str) -> None:
        self.retired.append(worker.handle)

    # the express lane's bookkeeping (main's pool.py): no express actor here
    def enter(self, tenant: str) -> None:
        pass

    def leave(self, tenant: str) -> None:
        pass

    def express_for(self, tenant: str) -> None:
        return None


def test_a_chunk_whose_result_was_lost_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    async def submit_on(handle: str) -> str:
        if handle == "w0":  # w0's node died holding the result
            raise lost_result()
        return f"result from {handle}"

    pool = _Pool()
    with caplog.at_level(logging.WARNING, logger="gradserve.dispatch"):
        got = asyncio.run(dispatch.run_chunk(pool, "job", submit_on, 10.0))  # type: ignore[arg-type]
    assert got == "result from w1"
    assert pool.retired == ["w0"] and pool.released == ["w1"]
    assert "chunk retried after worker loss" in caplog.text


def test_results_lost_every_time_are_unavailable_not_internal() -> None:
    async def always_lost(handle: str) -> str:
        raise lost_result()

    pool = _Pool()
    with pytest.raises(errors.ServiceError) as caught:
        asyncio.run(dispatch.run_chunk(pool, "job", always_lost, 10.0))  # type: ignore[arg-type]
    assert errors.to_status(caught.value).code is grpc.StatusCode.UNAVAILABLE
    assert pool.retired == ["w0", "w1", "w2"]
    assert errors.to_status(lost_result()).code is grpc.StatusCode.UNAVAILABLE
