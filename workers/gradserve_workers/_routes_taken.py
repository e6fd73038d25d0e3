"""The routes taken by the computations of one piece of work.

A check computes its derivatives in several calls of ``compute``, deep inside the
check engine; each call says which operations ran by a safe route instead of the
direct transform (``OpsResult.routes``). The check's result must report them all, as
a compute's does. Rather than thread them through every return value of the engine,
the engine notes them here and whoever runs the check collects them:

>>> with collecting() as taken:
...     note(("hessian: reverse-over-reverse-hessian (...)",))
...     note(("hessian: reverse-over-reverse-hessian (...)",))
>>> taken
['hessian: reverse-over-reverse-hessian (...)']
>>> note(("ignored: nobody collects",))

The collection is per thread (a context variable), so concurrent checks on other
threads do not mix their routes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["collecting", "note"]

_TAKEN: ContextVar[list[str] | None] = ContextVar("gradserve_routes_taken", default=None)


@contextmanager
def collecting() -> Iterator[list[str]]:
    """A list that receives, once each and in order, every route noted inside."""
    taken: list[str] = []
    token = _TAKEN.set(taken)
    try:
        yield taken
    finally:
        _TAKEN.reset(token)


def note(routes: Iterable[str]) -> None:
    """Record ``routes`` with the innermost :func:`collecting`; nothing outside one."""
    taken = _TAKEN.get()
    if taken is None:
        return
    for route in routes:
        if route not in taken:
            taken.append(route)
