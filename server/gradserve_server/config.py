"""Server configuration: flags, with GRADSERVE_* environment variables as defaults."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The function-language limits the server enforces, with their defaults; each
# is also a flag (--max-loop-iterations) and a variable (GRADSERVE_MAX_LOOP_ITERATIONS).
LIMIT_DEFAULTS: dict[str, int] = {
    "max_source_chars": 20_000,
    "max_nodes": 5_000,
    "max_depth": 40,
    "max_loop_iterations": 10_000,
    "max_tensor_elements": 10_000_000,
    "max_input_elements": 1_000_000,
}


# The server's byte budgets (see gradserve_server.budgets and docs/limits.md), with their
# defaults; each is also a flag (--max-reply-bytes) and a variable (GRADSERVE_MAX_REPLY_BYTES).
# 0 turns a budget off.
BUDGET_DEFAULTS: dict[str, int] = {
    # one call's reply (Compute or ComputeStream), estimated from shapes before work
    "max_reply_bytes": 256 << 20,
    # one call's input bytes: a ComputeStream's declared tensors, a Check's sampled points
    "max_request_bytes": 256 << 20,
    # all calls together: bytes held for incoming streams and replies
    "max_inflight_bytes": 1 << 30,
    # all server streams together: pieces written but not yet taken by their readers
    "max_stream_bytes": 64 << 20,
    # a job's stored results and specs, one tenant's jobs' together, and all jobs'
    # together (enforced by the job manager)
    "max_job_bytes": 1 << 30,
    "max_tenant_stored_bytes": 4 << 30,
    "max_stored_bytes": 16 << 30,
}


# -- worker budgets: memory, CPU time, the express lane, cancellation ------------------
# (docs/limits.md). The two per-call budgets are language limits: they travel to the
# workers with the others, and the language runtime checks them between operations.
LIMIT_DEFAULTS.update({"max_call_bytes": 2 * 1024**3, "max_call_seconds": 30})


@dataclass(frozen=True)
class WorkerBudgets:
    """How the pool shares its workers (see pool.py)."""

    express_workers: int = 1  # extra actors for small calls while all others are busy
    express_seconds: float = 0.5  # an express call longer than this moves to the queue
    cancel_grace_s: float = 2.0  # a cancelled chunk's worker is killed after this long


def add_worker_budget_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--express-workers",
        type=int,
        default=_env("EXPRESS_WORKERS", "1"),
        help="actors kept for small calls while every worker is busy; 0: none "
        "($GRADSERVE_EXPRESS_WORKERS, default 1)",
    )
    p.add_argument(
        "--express-seconds",
        type=float,
        default=_env("EXPRESS_SECONDS", "0.5"),
        help="a call on an express actor longer than this waits for a regular worker "
        "($GRADSERVE_EXPRESS_SECONDS, default 0.5)",
    )
    p.add_argument(
        "--cancel-grace",
        type=float,
        default=_env("CANCEL_GRACE", "2"),
        help="seconds a cancelled chunk's worker has to stop before it is killed "
        "($GRADSERVE_CANCEL_GRACE, default 2)",
    )


def worker_budgets(args: argparse.Namespace) -> WorkerBudgets:
    return WorkerBudgets(
        express_workers=max(0, args.express_workers),
        express_seconds=max(0.01, args.express_seconds),
        cancel_grace_s=max(0.1, args.cancel_grace),
    )


# -- end of worker budgets ---------------------------------------------------------------


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "gradserve"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    ray_address: str | None = None
    num_workers: int | None = None  # None: one per CPU of the Ray cluster
    device: str = "cpu"  # cpu | cuda | auto
    data_dir: Path = field(default_factory=default_data_dir)
    max_message_bytes: int = 16 * 1024 * 1024
    chunk_timeout_s: float = 120.0
    max_points: int = 10_000_000  # per request
    max_inflight_chunks_per_job: int = 0  # 0: the number of workers
    auth_token: str | None = None
    object_store_bytes: int | None = None  # embedded Ray only
    limits: Mapping[str, int] = field(default_factory=lambda: dict(LIMIT_DEFAULTS))
    log_level: str = "INFO"
    # --- jobs: retention (docs/jobs.md); ended jobs and their results are deleted
    # this long after they end. 0 (the default) keeps them: retention is opt-in, so
    # upgrading never deletes what a user was told is done
    job_ttl_s: float = 0.0
    # queued or running jobs one tenant may have (0: no limit)
    max_active_jobs_per_tenant: int = 100
    # the byte budgets of budgets.Budgets (see BUDGET_DEFAULTS and docs/limits.md)
    budgets: Mapping[str, int] = field(default_factory=lambda: dict(BUDGET_DEFAULTS))
    # network, identity and observability (docs/operations.md)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed
    auth_token_file: Path | None = None
    insecure: bool = False  # allow a non-loopback bind with neither TLS nor tokens
    metrics_port: int = 0  # 0: no metrics endpoint
    metrics_host: str = "127.0.0.1"  # /metrics has no auth: loopback unless asked
    log_format: str = "text"  # text | json
    # a server stream whose reader takes nothing for this long is closed
    stream_stall_s: float = 30.0
    workers: WorkerBudgets = field(default_factory=WorkerBudgets)
    # registered functions (the gradserve.functions entry points) the workers import
    functions: tuple[str, ...] = ()
    # shared memory for clients on this host (docs/sdk.md), and its regions per tenant
    shared_memory: bool = True
    max_shm_regions: int = 64


def _env(name: str, default: str | None = None) -> str | None:
    """The variable's raw text (unset or empty: ``default``). Flags take it as their
    default *as a string*, so argparse converts and checks it like a typed flag."""
    return os.environ.get(f"GRADSERVE_{name}") or default


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 (no limit) or more")
    return value


_VARIABLE = re.compile(r"\$(GRADSERVE_[A-Z0-9_]+)")


class _ServeParser(argparse.ArgumentParser):
    """Checks each flag's variable as strictly as the flag, and names the variable."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        for action in self._actions:
            named = _VARIABLE.search(action.help or "")
            raw = os.environ.get(named.group(1)) if named else None
            if not raw or not named or action.nargs == 0:
                continue
            try:
                value = self._get_value(action, raw)
            except argparse.ArgumentError as error:
                self.error(f"${named.group(1)}={raw!r}: {error.message}")
            if action.choices is not None and value not in action.choices:
                choices = ", ".join(map(str, action.choices))
                self.error(f"${named.group(1)}={raw!r}: choose from {choices}")
        return super().parse_known_args(args, namespace)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``30s``, ``15m``, ``12h`` or ``7d``.

    >>> parse_duration("7d"), parse_duration("90"), parse_duration("1.5h")
    (604800.0, 90.0, 5400.0)
    """
    text = text.strip().lower()
    scale = _DURATION_UNITS.get(text[-1:], 0)
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds, or a number and s, m, h or d"
        ) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be finite and >= 0")
    return seconds


def _env_flag(name: str) -> bool:
    return (_env(name) or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    """Every flag's help names its variable (a test fails on one that does not)."""
    p = _ServeParser(
        prog="gradserve serve",
        description="Run the gradserve gRPC server (embedded local Ray unless --ray-address). "
        "Every flag can be set by the GRADSERVE_* variable its help names; a flag wins.",
    )
    p.add_argument(
        "--host",
        default=_env("HOST", "127.0.0.1"),
        help="address to listen on; a non-loopback one needs TLS or tokens, or --insecure "
        "($GRADSERVE_HOST, default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=_env("PORT", "50051"),
        help="gRPC port; 0 picks a free one ($GRADSERVE_PORT, default 50051)",
    )
    p.add_argument(
        "--ray-address",
        default=_env("RAY_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster (host:port or 'auto') instead of starting one "
        "($GRADSERVE_RAY_ADDRESS or $RAY_ADDRESS)",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=_env("NUM_WORKERS", "0"),
        help="Ray actors to start; 0: one per CPU in the cluster ($GRADSERVE_NUM_WORKERS)",
    )
    p.add_argument(
        "--device",
        default=_env("DEVICE", "cpu"),
        choices=["cpu", "cuda", "auto"],
        help="where workers compute ($GRADSERVE_DEVICE, default cpu)",
    )
    p.add_argument(
        "--data-dir",
        default=_env("DATA_DIR") or str(default_data_dir()),
        help="job store and result files ($GRADSERVE_DATA_DIR, default ~/.local/share/gradserve)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=_env("MAX_MESSAGE_BYTES", str(16 << 20)),
        help="largest gRPC message either way ($GRADSERVE_MAX_MESSAGE_BYTES, default 16 MiB)",
    )
    p.add_argument(
        "--chunk-timeout",
        type=float,
        default=_env("CHUNK_TIMEOUT", "120"),
        help="seconds one chunk may run before its worker is replaced "
        "($GRADSERVE_CHUNK_TIMEOUT, default 120)",
    )
    p.add_argument(
        "--max-points",
        type=int,
        default=_env("MAX_POINTS", "10000000"),
        help="points per request ($GRADSERVE_MAX_POINTS, default 10000000)",
    )
    p.add_argument(
        "--max-inflight-chunks-per-job",
        type=int,
        default=_env("MAX_INFLIGHT_CHUNKS_PER_JOB", "0"),
        help="chunks of one job running or being stored at once; 0: 2 x workers "
        "($GRADSERVE_MAX_INFLIGHT_CHUNKS_PER_JOB)",
    )
    p.add_argument(
        "--auth-token",
        default=_env("AUTH_TOKEN"),
        help="one shared bearer token with admin rights (visible in ps: prefer "
        "--auth-token-file) ($GRADSERVE_AUTH_TOKEN)",
    )
    p.add_argument(
        "--object-store-bytes",
        type=int,
        default=_env("OBJECT_STORE_BYTES", "0"),
        help="object store of the embedded Ray; 0: Ray's default ($GRADSERVE_OBJECT_STORE_BYTES)",
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR ($GRADSERVE_LOG_LEVEL, default INFO)",
    )
    # --- jobs: retention
    p.add_argument(
        "--job-ttl",
        type=parse_duration,
        default=_env("JOB_TTL", "0"),
        help="delete ended jobs and their results this long after they end "
        "(seconds, or 30m, 12h, 7d; 0 keeps them; default 0) ($GRADSERVE_JOB_TTL)",
    )
    p.add_argument(
        "--max-active-jobs-per-tenant",
        type=int,
        default=_env("MAX_ACTIVE_JOBS_PER_TENANT", "100"),
        help="queued or running jobs one tenant may have; 0: no limit "
        "($GRADSERVE_MAX_ACTIVE_JOBS_PER_TENANT, default 100)",
    )
    add_worker_budget_flags(p)
    for name, default in LIMIT_DEFAULTS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=_env(name.upper(), str(default)),
            help=f"function language limit ($GRADSERVE_{name.upper()}, default {default})",
        )
    p.add_argument(
        "--stream-stall-seconds",
        type=float,
        default=_env("STREAM_STALL_SECONDS", "30"),
        help="close a server stream whose reader takes nothing for this long "
        "($GRADSERVE_STREAM_STALL_SECONDS, default 30)",
    )
    p.add_argument(
        "--functions",
        default=_env("FUNCTIONS", ""),
        help="registered functions to enable, NAME[,NAME...] or 'all' (installed "
        "packages' 'gradserve.functions' entry points; clients call them as fn='@NAME') "
        "($GRADSERVE_FUNCTIONS)",
    )
    for name, default in BUDGET_DEFAULTS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=non_negative_int,
            default=_env(name.upper(), str(default)),
            help=f"budget in bytes; 0: no limit ($GRADSERVE_{name.upper()}, default {default})",
        )
    p.add_argument(
        "--shared-memory",
        action=argparse.BooleanOptionalAction,
        default=(_env("SHARED_MEMORY") or "1").strip().lower() in ("1", "true", "yes", "on"),
        help="take tensors from shared-memory regions of clients on this host; "
        "--no-shared-memory refuses them ($GRADSERVE_SHARED_MEMORY=0, default on)",
    )
    p.add_argument(
        "--max-shm-regions",
        type=non_negative_int,
        default=_env("MAX_SHM_REGIONS", "64"),
        help="shared-memory regions one tenant may register; 0: no limit "
        "($GRADSERVE_MAX_SHM_REGIONS, default 64)",
    )
    _add_operations_flags(p)
    return p


def _functions(parser: argparse.ArgumentParser, spec: str) -> tuple[str, ...]:
    from gradserve_workers.registry import resolve_names

    try:
        return resolve_names(spec or None)
    except ValueError as error:
        parser.error(str(error))


def _add_operations_flags(p: argparse.ArgumentParser) -> None:
    """TLS, tokens, the bind guard, metrics and logs (docs/operations.md)."""
    p.add_argument(
        "--tls-cert",
        default=_env("TLS_CERT"),
        help="PEM certificate chain to serve TLS with; needs --tls-key ($GRADSERVE_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key",
        default=_env("TLS_KEY"),
        help="PEM private key of --tls-cert ($GRADSERVE_TLS_KEY)",
    )
    p.add_argument(
        "--tls-client-ca",
        default=_env("TLS_CLIENT_CA"),
        help="PEM CA bundle: clients must present a certificate it signed (mutual TLS) "
        "($GRADSERVE_TLS_CLIENT_CA)",
    )
    p.add_argument(
        "--auth-token-file",
        default=_env("AUTH_TOKEN_FILE"),
        help="tokens, one 'TENANT TOKEN [admin]' a line, '#' comments; re-read on SIGHUP "
        "($GRADSERVE_AUTH_TOKEN_FILE)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=_env_flag("INSECURE"),
        help="allow a non-loopback --host with neither TLS nor tokens: anyone who reaches "
        "the port can run code and read every job ($GRADSERVE_INSECURE=1)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_env("METRICS_PORT", "0"),
        help="serve Prometheus /metrics on --metrics-host at this port; 0: off "
        "($GRADSERVE_METRICS_PORT)",
    )
    p.add_argument(
        "--metrics-host",
        default=_env("METRICS_HOST", "127.0.0.1"),
        help="address /metrics listens on; it has no auth, so a non-loopback one is "
        "warned about loudly ($GRADSERVE_METRICS_HOST, default 127.0.0.1)",
    )
    p.add_argument(
        "--log-format",
        default=_env("LOG_FORMAT", "text"),
        type=str.lower,
        choices=["text", "json"],
        help="text, or one JSON object a line ($GRADSERVE_LOG_FORMAT, default text)",
    )


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    return ServerConfig(
        host=args.host,
        port=args.port,
        ray_address=args.ray_address or None,
        num_workers=args.num_workers or None,
        device=args.device,
        data_dir=Path(args.data_dir),
        max_message_bytes=args.max_message_bytes,
        chunk_timeout_s=args.chunk_timeout,
        max_points=args.max_points,
        max_inflight_chunks_per_job=max(0, args.max_inflight_chunks_per_job),
        auth_token=args.auth_token or None,
        object_store_bytes=args.object_store_bytes or None,
        limits={name: getattr(args, name) for name in LIMIT_DEFAULTS},
        log_level=args.log_level,
        # --- jobs: retention
        job_ttl_s=args.job_ttl,
        max_active_jobs_per_tenant=max(0, args.max_active_jobs_per_tenant),
        budgets={name: getattr(args, name) for name in BUDGET_DEFAULTS},
        tls_cert=_path(args.tls_cert),
        tls_key=_path(args.tls_key),
        tls_client_ca=_path(args.tls_client_ca),
        auth_token_file=_path(args.auth_token_file),
        insecure=bool(args.insecure),
        metrics_port=max(0, args.metrics_port),
        metrics_host=args.metrics_host,
        log_format=args.log_format,
        stream_stall_s=args.stream_stall_seconds,
        workers=worker_budgets(args),
        functions=_functions(parser, args.functions),
        shared_memory=args.shared_memory,
        max_shm_regions=max(0, args.max_shm_regions),
    )


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
