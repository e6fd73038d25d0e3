"""gradserve's gRPC server: validation, chunk planning, the actor pool, the job store."""

__version__ = "0.1.0"
