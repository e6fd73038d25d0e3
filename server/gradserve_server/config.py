"""Server configuration: flags, with GRADSERVE_* environment variables as defaults."""

from __future__ import annotations

import argparse
import os
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
    # registered functions (the gradserve.functions entry points) the workers import
    functions: tuple[str, ...] = ()


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"GRADSERVE_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradserve serve",
        description="Run the gradserve gRPC server (embedded local Ray unless --ray-address).",
    )
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(_env("PORT", "50051") or 50051))
    p.add_argument(
        "--ray-address",
        default=_env("RAY_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster (host:port or 'auto') instead of starting one",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=int(_env("NUM_WORKERS", "0") or 0) or None,
        help="Ray actors to start (default: one per CPU in the cluster)",
    )
    p.add_argument("--device", default=_env("DEVICE", "cpu"), choices=["cpu", "cuda", "auto"])
    p.add_argument("--data-dir", default=_env("DATA_DIR") or str(default_data_dir()))
    p.add_argument(
        "--max-message-bytes", type=int, default=int(_env("MAX_MESSAGE_BYTES", str(16 << 20)) or 0)
    )
    p.add_argument(
        "--chunk-timeout", type=float, default=float(_env("CHUNK_TIMEOUT", "120") or 120)
    )
    p.add_argument("--max-points", type=int, default=int(_env("MAX_POINTS", "10000000") or 0))
    p.add_argument(
        "--max-inflight-chunks-per-job",
        type=int,
        default=int(_env("MAX_INFLIGHT_CHUNKS_PER_JOB", "0") or 0),
        help="chunks of one job running or being stored at once (default: 2 x workers)",
    )
    p.add_argument("--auth-token", default=_env("AUTH_TOKEN"))
    p.add_argument("--object-store-bytes", type=int, default=None)
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    for name, default in LIMIT_DEFAULTS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=int(_env(name.upper(), str(default)) or default),
        )
    p.add_argument(
        "--functions",
        default=_env("FUNCTIONS", ""),
        help="registered functions to enable, NAME[,NAME...] or 'all' (installed "
        "packages' 'gradserve.functions' entry points; clients call them as fn='@NAME')",
    )
    return p


def _functions(parser: argparse.ArgumentParser, spec: str) -> tuple[str, ...]:
    from gradserve_workers.registry import resolve_names

    try:
        return resolve_names(spec or None)
    except ValueError as error:
        parser.error(str(error))


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    return ServerConfig(
        host=args.host,
        port=args.port,
        ray_address=args.ray_address or None,
        num_workers=args.num_workers,
        device=args.device,
        data_dir=Path(args.data_dir),
        max_message_bytes=args.max_message_bytes,
        chunk_timeout_s=args.chunk_timeout,
        max_points=args.max_points,
        max_inflight_chunks_per_job=max(0, args.max_inflight_chunks_per_job),
        auth_token=args.auth_token or None,
        object_store_bytes=args.object_store_bytes,
        limits={name: getattr(args, name) for name in LIMIT_DEFAULTS},
        log_level=args.log_level,
        functions=_functions(parser, args.functions),
    )
