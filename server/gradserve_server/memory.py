"""Handing freed memory back to the operating system after large requests.

glibc keeps what a process frees in its heaps (one per thread that allocated, and
gRPC and the event loop's executor have several) and returns it only from the top
of each; a burst of large streamed requests leaves RSS high long after their bytes
were freed. ``malloc_trim(0)`` releases the free pages of every heap (measured:
16-28 ms for a 300 MB heap, on an executor thread). It runs at most once per
:data:`TRIM_INTERVAL_S`, after a large reservation of bytes in flight is released
or a call fails; elsewhere (not glibc) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from typing import Any

log = logging.getLogger("gradserve.server")

# a release of at least this many bytes asks for a trim
TRIM_BYTES = 4 * 1024 * 1024
TRIM_INTERVAL_S = 1.0


def _malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()
_pending: asyncio.TimerHandle | None = None


def trim_soon() -> None:
    """Trim the heaps within a second, once for any number of calls meanwhile."""
    global _pending
    if _TRIM is None or _pending is not None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _pending = loop.call_later(TRIM_INTERVAL_S, _start, loop)


def trim_now() -> None:
    """Trim the heaps now, on the calling thread (one that is not the event loop's:
    the fast lane's, after a check that grew the process)."""
    if _TRIM is not None:
        _TRIM(0)


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _start(loop: asyncio.AbstractEventLoop) -> None:
    task = loop.run_in_executor(None, _TRIM, 0)
    task.add_done_callback(_done)


def _done(future: Any) -> None:
    global _pending
    _pending = None
    if future.exception() is not None:  # pragma: no cover - malloc_trim does not fail
        log.warning("malloc_trim failed: %s", future.exception())
