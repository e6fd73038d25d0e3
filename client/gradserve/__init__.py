"""gradserve: derivatives and gradient checks as a service.

>>> import gradserve
>>> with gradserve.Client() as client:                          # doctest: +SKIP
...     client.grad("2 * dot(x, x)", {"x": [0.0, 1.0, 2.0, 3.0]})
array([ 0.,  4.,  8., 12.])
"""

from gradserve._async_client import AsyncClient
from gradserve._client import Client
from gradserve._config import TLS
from gradserve.errors import (
    DeadlineExceededError,
    GradserveError,
    InvalidArgumentError,
    InvalidSpecError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from gradserve.jobs import AsyncJob, Job
from gradserve.results import (
    Certificate,
    CheckReport,
    ComputeResult,
    JobStatus,
    Kink,
    Metadata,
    ServerInfo,
    TaskResult,
    WorstElement,
)
from gradserve.sampling import Sample, normal, uniform
from gradserve.shm import SharedMemoryRegion

__version__ = "0.1.0"

__all__ = [
    "TLS",
    "AsyncClient",
    "AsyncJob",
    "Certificate",
    "CheckReport",
    "Client",
    "ComputeResult",
    "DeadlineExceededError",
    "GradserveError",
    "InvalidArgumentError",
    "InvalidSpecError",
    "Job",
    "JobStatus",
    "Kink",
    "Metadata",
    "NotFoundError",
    "ResourceExhaustedError",
    "Sample",
    "ServerInfo",
    "SharedMemoryRegion",
    "TaskResult",
    "UnauthenticatedError",
    "UnavailableError",
    "WorstElement",
    "__version__",
    "normal",
    "uniform",
]
