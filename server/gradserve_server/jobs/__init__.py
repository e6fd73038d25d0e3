"""Batch jobs: stored durably in the data directory, run on the shared actor pool,
resumed after a restart. See docs/jobs.md."""

from gradserve_server.jobs.manager import JobManager

__all__ = ["JobManager"]
