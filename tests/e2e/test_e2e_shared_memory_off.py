"""The SDK against a server that takes no shared memory (--shared-memory 0), as a
server on another host answers: True raises, "auto" goes by the wire."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import numpy as np
import pytest
from support.cluster import RayNode, start_server

import gradserve
from gradserve.errors import FailedPreconditionError


@pytest.fixture(scope="module")
def no_shm(ray_head: RayNode) -> Iterator[str]:
    proc = start_server(ray_head, num_workers=1, extra=["--shared-memory", "0"])
    try:
        yield proc.address
    finally:
        proc.stop()


def _ours() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("gradserve")}


def test_true_raises_and_auto_goes_by_the_wire(no_shm: str) -> None:
    x = np.random.default_rng(0).normal(size=(50, 3))
    before = _ours()
    with gradserve.Client(no_shm, timeout=60, shared_memory=True) as client:
        with pytest.raises(FailedPreconditionError) as info:
            client.grad("sum(x * x)", {"x": x}, batched=True)
        assert "--shared-memory 0" in str(info.value)
        # the same client, one call by the wire
        got = client.grad("sum(x * x)", {"x": x}, batched=True, shared_memory=False)
        assert np.array_equal(got, 2 * x)
    with gradserve.Client(no_shm, timeout=60, shared_memory="auto") as client:
        assert np.array_equal(client.grad("sum(x * x)", {"x": x}, batched=True), 2 * x)
        assert client.shared_memory_off is not None and "shared memory" in client.shared_memory_off
        assert np.array_equal(client.grad("sum(x * x)", {"x": x}, batched=True), 2 * x)

    async def by_async() -> np.ndarray:
        async with gradserve.AsyncClient(no_shm, timeout=60, shared_memory="auto") as client:
            return await client.grad("sum(x * x)", {"x": x}, batched=True)  # type: ignore[no-any-return]

    assert np.array_equal(asyncio.run(by_async()), 2 * x)
    assert _ours() == before  # the segments made for the refused calls are gone too
