"""Session fixtures (a pytest plugin, see the root conftest.py): one real Ray cluster on
loopback and one real gradserve server, shared by tests/ and examples/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import gradserve
from support.cluster import RayNode, ServerProcess, start_ray_head, start_server


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayNode]:
    node = start_ray_head()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def server(ray_head: RayNode) -> Iterator[ServerProcess]:
    proc = start_server(ray_head)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def address(server: ServerProcess) -> str:
    return server.address


@pytest.fixture
def client(address: str) -> Iterator[gradserve.Client]:
    with gradserve.Client(address, timeout=120) as c:
        yield c
