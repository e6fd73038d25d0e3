"""A job's progress on stderr, drawn by tqdm; silent when stderr is not a terminal
(a CI log or a pipe gets the final status from the caller instead)."""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm

from gradserve.results import JobStatus


class ProgressBar:
    """Points done of points total (tasks when the job counts no points)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bar: tqdm[None] | None = None

    def update(self, status: JobStatus) -> None:
        by_points = status.points_total > 0
        total = status.points_total if by_points else status.tasks_total
        done = status.points_done if by_points else status.tasks_done
        if self._bar is None:
            self._bar = tqdm(
                total=total,
                desc=status.id,
                unit=" points" if by_points else " tasks",
                file=self.stream,
                disable=None,  # None: off unless the stream is a terminal
                dynamic_ncols=True,
                leave=True,
            )
        bar = self._bar
        bar.total = total
        bar.n = min(done, total)
        failed = f", {status.tasks_failed} failed" if status.tasks_failed else ""
        bar.set_postfix_str(
            f"{status.tasks_done}/{status.tasks_total} tasks{failed}, {status.state}",
            refresh=False,
        )
        bar.refresh()
        if status.done:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
