"""Real processes for end-to-end tests: a Ray head on loopback and gradserve servers.

Nothing here is a mock: the servers are the real `gradserve_server.main` in a
subprocess, joined to a real Ray cluster started with `ray start`. Processes are
stopped by pid (never `ray stop`, which would end every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_matching(marker: str) -> list[psutil.Process]:
    """Every process (but this one) whose command line contains ``marker``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or ())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if marker in cmdline and proc.pid != os.getpid():
            found.append(proc)
    return found


def kill_matching(marker: str) -> int:
    """SIGKILL every process whose command line contains ``marker``; how many."""
    victims = processes_matching(marker)
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(victims, timeout=10)
    return len(victims)


def ray_env(token: str) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = token
    return env


@dataclass
class RayNode:
    address: str
    temp_dir: str
    head: bool
    token: str

    def env(self) -> dict[str, str]:
        """What a node or driver needs to join: the cluster's auth token.

        Ray 2.60 turns token authentication on where it finds a token (its
        environment or ~/.ray/auth_token), so the tests always set one of their
        own explicitly instead of depending on what the machine has.
        """
        return ray_env(self.token)

    def stop(self) -> None:
        kill_matching(self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_ray_head(num_cpus: int = 8, object_store_mb: int = 400, tries: int = 3) -> RayNode:
    """A Ray head on loopback; CPUs are logical, so several servers' actors fit.

    The port is free when chosen but may be taken before Ray binds it (another
    process, or one of Ray's own ports on a busy machine): a failed start is tried
    again on a fresh port, and the last failure says what Ray printed."""
    for attempt in range(1, tries + 1):
        temp_dir = tempfile.mkdtemp(prefix="gsray")  # short: Ray's socket paths are length-bound
        port = free_port()
        token = secrets.token_hex(32)
        cmd = [
            RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
            f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_mb * 1024 * 1024}",
            f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ray_env(token))
        if proc.returncode == 0:
            return RayNode(f"127.0.0.1:{port}", temp_dir, head=True, token=token)
        # (no `ray stop`: it would stop every cluster on the machine, the session's too)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if attempt == tries:
            raise RuntimeError(
                f"ray start --head failed {tries} times; the last said:\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
    raise AssertionError("unreachable")


def start_ray_worker_node(head: RayNode, num_cpus: int = 2, object_store_mb: int = 200) -> RayNode:
    temp_dir = tempfile.mkdtemp(prefix="gsrayw")
    cmd = [
        RAY, "start", f"--address={head.address}", "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_mb * 1024 * 1024}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120, env=head.env())
    return RayNode(head.address, temp_dir, head=False, token=head.token)


@dataclass
class ServerProcess:
    address: str
    proc: subprocess.Popen[str]
    data_dir: str
    lines: list[str] = field(default_factory=list)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> int:
        self.kill(signal.SIGTERM)
        return int(self.proc.returncode)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    ray: RayNode | None,
    *,
    data_dir: str | None = None,
    num_workers: int = 2,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
    command: Sequence[str] | None = None,
) -> ServerProcess:
    """Start `gradserve serve` on a free loopback port and wait until it serves."""
    data_dir = data_dir or tempfile.mkdtemp(prefix="gsdata")
    base = list(command) if command else [sys.executable, "-m", "gradserve_server.main"]
    cmd = [*base, "--host", "127.0.0.1", "--port", "0", "--data-dir", data_dir,
           "--num-workers", str(num_workers), *extra]  # fmt: skip
    if ray is not None:
        cmd += ["--ray-address", ray.address]
    run_env = dict(ray.env() if ray else os.environ)
    if ray is None:
        run_env.pop("RAY_ADDRESS", None)  # embedded: never join a cluster named outside
    run_env.update(env or {})
    run_env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=run_env
    )
    server = ServerProcess("", proc, data_dir)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)
            if "serving on" in line and not ready.is_set():
                server.address = line.split("serving on", 1)[1].split()[0]
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"server did not start:\n{server.output[-4000:]}")
    return server
