"""When a job's stream breaks, whether and when to open it again: one policy for the
sync and the async handles, which differ only in how they pause."""

from __future__ import annotations

import time

from gradserve.errors import (
    AbortedError,
    DeadlineExceededError,
    GradserveError,
    UnavailableError,
)

# A wait or a results stream rides out a server restart for this long.
RECONNECT_SECONDS = 60.0
RETRY_PAUSE = 0.5


class Reconnect:
    """Ride out a server restart (UNAVAILABLE) for up to RECONNECT_SECONDS, and, for
    a results stream, a stream the server closed because its reader fell behind
    (ABORTED: it resumes at its next task); raise anything else."""

    def __init__(self, job_id: str, timeout: float | None = None, resumable: bool = False) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.resumable = resumable
        self._since: float | None = None

    def delivered(self) -> None:
        """The stream is working again: a later outage gets the whole window."""
        self._since = None

    def pause(self, error: GradserveError) -> float:
        """Raise ``error`` (or a clearer one), or return how long to pause before retrying."""
        if isinstance(error, DeadlineExceededError) and self.timeout is not None:
            raise DeadlineExceededError(
                f"job {self.job_id} did not finish within {self.timeout:g} s",
                request_id=error.request_id,
            ) from None
        resume = isinstance(error, AbortedError) and self.resumable
        if not isinstance(error, UnavailableError) and not resume:
            raise error
        first = self._since is None
        self._since = self._since or time.monotonic()
        if time.monotonic() - self._since > RECONNECT_SECONDS:
            if resume:
                raise error
            raise UnavailableError(
                f"job {self.job_id}: {error.message}", request_id=error.request_id
            ) from None
        # a reader that fell behind resumes at once (it was delivered to until now)
        return 0.0 if resume and first else RETRY_PAUSE
