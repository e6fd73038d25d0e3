"""Stand-ins shared by unit tests of the server's pool and dispatch (never of our own
components in end-to-end tests), and a program that runs until it is stopped."""

from __future__ import annotations

from collections.abc import Generator
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
