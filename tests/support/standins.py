"""Stand-ins shared by unit tests of the server's pool, dispatch and channel (never of
our own components in end-to-end tests), and a program that runs until it is stopped."""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Generator, Iterator
from typing import Any

# ~50 ms of matmul per iteration at 200 x 200, within every language limit: minutes in
# all, unless the call is stopped (cancelled, or past its deadline)
RUNAWAY = """
def f(x):
    for i in range(10000):
        x = sin(x @ x)
    return sum(x)
"""


class Ready:
    """An awaitable holding its value already, as a Ray ref to a finished call."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        if False:  # pragma: no cover - makes this a generator
            yield
        return self.value


@contextlib.contextmanager
def stand_in_actor_socket() -> Iterator[tuple[socket.socket, str]]:
    """A listening Unix socket with a fresh abstract name, where a test plays the
    actor's end of a direct channel by hand (unique: suites running at once on one
    host share the abstract namespace)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address = f"\0gradserve-test-{secrets.token_hex(8)}"
    listener.bind(address)
    listener.listen(1)
    try:
        yield listener, address
    finally:
        listener.close()
