"""Server configuration: one table of settings (:data:`SETTINGS`, a row per flag)
from which the flags, their GRADSERVE_* variables, :class:`ServerConfig` and the docs
checks (tests/server/test_config_table.py) are driven."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # one pipelined ComputeStream: request rows arrived and chunks in flight (their
    # inputs and replies), out of max_inflight_bytes; 0: no pipelining (held whole)
    "stream_window_bytes": 32 << 20,
    # a job's stored results and specs, one tenant's jobs' together, and all jobs'
    # together (enforced by the job manager)
    "max_job_bytes": 1 << 30,
    "max_tenant_stored_bytes": 4 << 30,
    "max_stored_bytes": 16 << 30,
}
# the budgets whose 0 means something else than "no limit"
_BUDGET_HELP = {
    "stream_window_bytes": "bytes one pipelined ComputeStream holds (rows arrived, chunks "
    "in flight), out of --max-inflight-bytes; 0: no pipelining (streams held whole)",
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
    # the fast lane (fastlane.py): calls of at most this many elements (estimated from
    # shapes) run in the server's process, stopped there after fast_lane_s; 0: off
    fast_lane_elements: int = 100_000
    fast_lane_s: float = 0.05
    # small and shared-memory chunk calls reach actors on this host by a direct
    # channel (channel.py) instead of Ray's actor call; False: Ray's alone
    channel: bool = True


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


def _same(value: Any) -> Any:
    return value


def _positive(floor: float) -> Callable[[Any], Any]:
    return lambda value: max(floor, value)


def _is_one(value: str) -> bool:
    return value == "1"


def _or_none(value: Any) -> Any:
    return value or None


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _functions(spec: str) -> tuple[str, ...]:
    from gradserve_workers.registry import resolve_names

    return resolve_names(spec or None)  # ValueError: a usage error naming the flag


@dataclass(frozen=True)
class Setting:
    """One row of the server's settings: its flag, variable, type, default, help and
    section, and where its value goes in :class:`ServerConfig`.

    ``name`` is the flag (``--max-points``), the variable (``$GRADSERVE_MAX_POINTS``)
    and the parsed value's name (``max_points``) at once.
    """

    name: str
    help: str
    section: str  # a key of SECTIONS: the page that documents it
    type: Callable[[str], Any] = str
    default: str | Callable[[], str] | None = None  # as the variable's text; None: unset
    shown: str | None = ""  # the default as --help says it ("" : the default's text)
    choices: tuple[str, ...] = ()
    switch: bool = False  # a flag without a value (its variable: 1, true, yes or on)
    fallback: str | None = None  # another variable read when this one is unset
    # where the value goes: a ServerConfig field ("chunk_timeout_s"; "": the name), a
    # key of its limits or budgets ("limits.max_nodes") or a field of its WorkerBudgets
    # ("workers.express_seconds"); and how the parsed value becomes it
    field: str = ""
    convert: Callable[[Any], Any] = _same

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return "GRADSERVE_" + self.name.upper()

    @property
    def target(self) -> str:
        return self.field or self.name

    def help_text(self) -> str:
        variable = f"${self.variable}" + ("=1" if self.switch else "")
        if self.fallback:
            variable += f" or ${self.fallback}"
        shown = self.default if self.shown == "" and isinstance(self.default, str) else self.shown
        return f"{self.help} ({variable}" + (f", default {shown})" if shown else ")")

    def default_text(self) -> str | None:
        """The default argparse converts: the variable's text, else the row's."""
        raw = os.environ.get(self.variable) or (
            os.environ.get(self.fallback) if self.fallback else None
        )
        return raw or (self.default() if callable(self.default) else self.default)


# The page of docs/ that documents each section's flags (every variable is also in
# docs/deployment.md's tables).
SECTIONS = {
    "serve": "deployment.md",
    "limits": "limits.md",
    "budgets": "limits.md",
    "workers": "limits.md",
    "jobs": "jobs.md",
    "operations": "operations.md",
}

SETTINGS: tuple[Setting, ...] = (
    Setting("host", "address to listen on; a non-loopback one needs TLS or tokens, or "
            "--insecure", "serve", default="127.0.0.1"),
    Setting("port", "gRPC port; 0 picks a free one", "serve", int, "50051"),
    Setting("ray_address", "join this Ray cluster (host:port or 'auto') instead of "
            "starting one", "serve", fallback="RAY_ADDRESS", convert=_or_none),
    Setting("num_workers", "Ray actors to start; 0: one per CPU in the cluster", "serve",
            int, "0", shown=None, convert=_or_none),
    Setting("device", "where workers compute", "serve", default="cpu",
            choices=("cpu", "cuda", "auto")),
    Setting("data_dir", "job store and result files", "serve",
            default=lambda: str(default_data_dir()), shown="~/.local/share/gradserve",
            convert=_path),
    Setting("max_message_bytes", "largest gRPC message either way", "limits", int,
            str(16 << 20), shown="16 MiB"),
    Setting("chunk_timeout", "seconds one chunk may run before its worker is replaced",
            "limits", float, "120", field="chunk_timeout_s"),
    Setting("max_points", "points per request", "limits", int, "10000000"),
    Setting("max_inflight_chunks_per_job", "chunks of one job running or being stored "
            "at once; 0: 2 x workers", "jobs", int, "0", shown=None, convert=_positive(0)),
    Setting("auth_token", "one shared bearer token with admin rights (visible in ps: "
            "prefer --auth-token-file)", "operations", convert=_or_none),
    Setting("object_store_bytes", "object store of the embedded Ray; 0: Ray's default",
            "serve", int, "0", shown=None, convert=_or_none),
    Setting("log_level", "DEBUG, INFO, WARNING or ERROR", "serve", default="INFO"),
    Setting("job_ttl", "delete ended jobs and their results this long after they end "
            "(seconds, or 30m, 12h, 7d; 0 keeps them)", "jobs", parse_duration, "0",
            field="job_ttl_s"),
    Setting("max_active_jobs_per_tenant", "queued or running jobs one tenant may have; "
            "0: no limit", "jobs", int, "100", convert=_positive(0)),
    Setting("express_workers", "actors kept for small calls while every worker is busy; "
            "0: none", "workers", int, "1", field="workers.express_workers",
            convert=_positive(0)),
    Setting("express_seconds", "a call on an express actor longer than this waits for a "
            "regular worker", "workers", float, "0.5", field="workers.express_seconds",
            convert=_positive(0.01)),
    Setting("cancel_grace", "seconds a cancelled chunk's worker has to stop before it is "
            "killed", "workers", float, "2", field="workers.cancel_grace_s",
            convert=_positive(0.1)),
    Setting("fast_lane_elements", "compute and check calls of at most this many elements "
            "(inputs and outputs, estimated from shapes) run on a thread of the server instead "
            "of a Ray worker; 0: the fast lane is off", "workers", non_negative_int, "100000",
            field="workers.fast_lane_elements"),
    Setting("fast_lane_seconds", "a fast-lane call running longer than this is stopped and "
            "runs again on Ray", "workers", float, "0.05", field="workers.fast_lane_s",
            convert=_positive(0.001)),
    Setting("worker_channel", "send small and shared-memory chunk calls to workers on "
            "this host by a direct Unix socket instead of Ray's actor call; 0: Ray's alone",
            "workers", default="1", choices=("0", "1"), field="workers.channel",
            convert=_is_one),
    *(
        Setting(name, "function language limit", "limits", int, str(default),
                field=f"limits.{name}")
        for name, default in LIMIT_DEFAULTS.items()
    ),
    Setting("stream_stall_seconds", "close a server stream whose reader takes nothing for "
            "this long", "limits", float, "30", field="stream_stall_s"),
    Setting("functions", "registered functions to enable, NAME[,NAME...] or 'all' "
            "(installed packages' 'gradserve.functions' entry points; clients call them as "
            "fn='@NAME')", "serve", default="", convert=_functions),
    *(
        Setting(name, _BUDGET_HELP.get(name, "budget in bytes; 0: no limit"), "budgets",
                non_negative_int, str(default), field=f"budgets.{name}")
        for name, default in BUDGET_DEFAULTS.items()
    ),
    Setting("tls_cert", "PEM certificate chain to serve TLS with; needs --tls-key",
            "operations", convert=_path),
    Setting("tls_key", "PEM private key of --tls-cert", "operations", convert=_path),
    Setting("tls_client_ca", "PEM CA bundle: clients must present a certificate it "
            "signed (mutual TLS)", "operations", convert=_path),
    Setting("auth_token_file", "tokens, one 'TENANT TOKEN [admin]' a line, '#' comments; "
            "re-read on SIGHUP", "operations", convert=_path),
    Setting("insecure", "allow a non-loopback --host with neither TLS nor tokens: anyone "
            "who reaches the port can run code and read every job", "operations",
            switch=True, convert=bool),
    Setting("metrics_port", "serve Prometheus /metrics on --metrics-host at this port; "
            "0: off", "operations", int, "0", shown=None, convert=_positive(0)),
    Setting("metrics_host", "address /metrics listens on; it has no auth, so a "
            "non-loopback one is warned about loudly", "operations", default="127.0.0.1"),
    Setting("log_format", "text, or one JSON object a line", "operations", str.lower,
            "text", choices=("text", "json")),
    Setting("shared_memory", "take tensors from shared-memory regions of clients on this "
            "host; 0 refuses them", "serve", default="1", choices=("0", "1"),
            convert=_is_one),
    Setting("max_shm_regions", "shared-memory regions one tenant may register; 0: no "
            "limit", "limits", non_negative_int, "64"),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The flags of :data:`SETTINGS`, their variables read now; every flag's help names
    its variable (a test fails on one that does not)."""
    p = _ServeParser(
        prog="gradserve serve",
        description="Run the gradserve gRPC server (embedded local Ray unless --ray-address). "
        "Every flag can be set by the GRADSERVE_* variable its help names; a flag wins.",
    )
    for s in SETTINGS:
        if s.switch:
            on = (os.environ.get(s.variable) or "").strip().lower() in ("1", "true", "yes", "on")
            p.add_argument(s.flag, action="store_true", default=on, help=s.help_text())
            continue
        default = s.default_text()
        p.add_argument(
            s.flag,
            type=s.type,
            default=default,
            choices=list(s.choices) or None,
            help=s.help_text(),
        )
    return p


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, dict[str, Any]] = {"": {}, "limits": {}, "budgets": {}, "workers": {}}
    for s in SETTINGS:
        try:
            value = s.convert(args[s.name])
        except ValueError as error:  # e.g. an unknown registered function
            parser.error(str(error))
        group, _, key = s.target.rpartition(".")
        values[group][key] = value
    return ServerConfig(
        **values[""],
        limits=values["limits"],
        budgets=values["budgets"],
        workers=WorkerBudgets(**values["workers"]),
    )
