"""Driving the compose deployment for compose_deployment.py (`make test-deploy`): the
docker and docker-compose commands, the compose files and environment it runs with,
the project's volumes and processes, the TLS secrets and their override, and the
report the run leaves in GRADSERVE_DEPLOY_STATE."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from support.certs import CA
from support.cluster import free_port

import gradserve

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("GRADSERVE_DEPLOY_STATE", "/tmp/gradserve-deploy"))
DOCKER = os.environ.get("GRADSERVE_DOCKER", "/usr/bin/docker")
PROJECT = "gsdeploy"
IMAGE = "gradserve:latest"
CLIENT_IMAGE = "gradserve-client:latest"
WORKERS = 2
# the address Ray's nodes advertise: a loopback address, but not 127.0.0.1, which
# Ray swaps for the host's primary address (services.resolve_ip_for_localhost)
RAY_IP = "127.0.0.2"


REPORT: dict[str, Any] = {}


def record(**items: Any) -> None:
    REPORT.update(items)
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "report.json").write_text(json.dumps(REPORT, indent=2, sort_keys=True) + "\n")


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


def docker(*args: str, timeout: float = 300) -> str:
    return run([DOCKER, *args], timeout=timeout)


# ------------------------------------------------------------------ compose


@dataclass
class Deployment:
    """The compose project: its files, ports and the commands on it."""

    files: list[Path]
    grpc_port: int
    ray_port: int
    metrics_port: int
    env: dict[str, str] = field(repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def compose(self, *args: str, timeout: float = 600) -> str:
        files = [a for f in self.files for a in ("-f", str(f))]
        return run(
            ["docker-compose", "-p", PROJECT, "--project-directory", str(ROOT), *files, *args],
            env=self.env,
            timeout=timeout,
        )

    def containers(self, service: str | None = None, *, all: bool = False) -> list[str]:
        """Names of the project's containers (of one service)."""
        flt = ["--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            flt += ["--filter", f"label=com.docker.compose.service={service}"]
        out = docker("ps", *(["-a"] if all else []), *flt, "--format", "{{.Names}}")
        return sorted(out.split())

    def state(self, container: str) -> dict[str, Any]:
        return dict(json.loads(docker("inspect", "--format", "{{json .State}}", container)))

    def wait_healthy(self, timeout: float = 420) -> float:
        """Seconds until the server container reports healthy."""
        started = time.monotonic()
        while True:
            servers = self.containers("server")
            if servers:
                st = self.state(servers[0])
                health = (st.get("Health") or {}).get("Status")
                if health == "healthy":
                    return time.monotonic() - started
                assert st["Status"] in {"running", "restarting", "created"}, (st, self.logs())
            assert time.monotonic() - started < timeout, f"not healthy in {timeout}s\n{self.logs()}"
            time.sleep(2)

    def logs(self, tail: int | str = 60) -> str:
        try:
            return self.compose("logs", "--no-color", f"--tail={tail}", timeout=60)
        except AssertionError as error:
            return str(error)

    def up(self) -> float:
        started = time.monotonic()
        self.compose("up", "-d", "--no-build", "--scale", f"worker={WORKERS}")
        self.wait_healthy()
        return time.monotonic() - started

    def down(self, *extra: str) -> None:
        self.compose("down", "--timeout", "90", *extra, timeout=300)


def compose_files(grpc_port: int, ray_port: int, metrics_port: int) -> list[Path]:
    """docker-compose.yml less `ports:`, and the host-network override."""
    STATE.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in base["services"].values():
        service.pop("ports", None)
        service["build"]["context"] = str(ROOT)
    copy = STATE / "docker-compose.yml"
    copy.write_text(yaml.safe_dump(base, sort_keys=False))
    host = {"network_mode": "host", "build": {"network": "host"}}
    override = {
        "services": {
            "server": {
                **host,
                "environment": {
                    "GRADSERVE_HOST": "127.0.0.1",
                    "GRADSERVE_PORT": str(grpc_port),
                    "GRADSERVE_NODE_IP": RAY_IP,
                    "GRADSERVE_RAY_PORT": str(ray_port),
                    "GRADSERVE_RAY_EXTRA_ARGS": f"--ray-client-server-port={free_port()}",
                    # on the host's network: a free port, on loopback (the image's
                    # 0.0.0.0:9464 would be every interface of the host, and taken)
                    "GRADSERVE_METRICS_HOST": "127.0.0.1",
                    "GRADSERVE_METRICS_PORT": str(metrics_port),
                },
                "healthcheck": {
                    "test": [
                        "CMD",
                        "python",
                        "/opt/gradserve/docker/healthcheck.py",
                        f"127.0.0.1:{grpc_port}",
                    ],
                    "interval": "5s",
                },
            },
            "worker": {
                **host,
                "environment": {
                    "GRADSERVE_RAY_HEAD": f"{RAY_IP}:{ray_port}",
                    "GRADSERVE_NODE_IP": RAY_IP,
                },
            },
        }
    }
    hostnet = STATE / "docker-compose.hostnet.yml"
    hostnet.write_text(yaml.safe_dump(override, sort_keys=False))
    return [copy, hostnet]


def compose_env() -> dict[str, str]:
    env = dict(os.environ)
    # Debian's client first: compose builds through it, with the engine's BuildKit
    env["PATH"] = f"{Path(DOCKER).parent}{os.pathsep}{env['PATH']}"
    env.update(
        DOCKER_BUILDKIT="1",
        COMPOSE_DOCKER_CLI_BUILD="1",
        GRADSERVE_IMAGE=IMAGE,
        GRADSERVE_WAIT_FOR_NODES=str(1 + WORKERS),
        GRADSERVE_WAIT_TIMEOUT="180",
        # one actor per container: 3 torch processes on this shared 2-core machine
        GRADSERVE_SERVER_NUM_CPUS="1",
        GRADSERVE_WORKER_NUM_CPUS="1",
    )
    env.setdefault("GRADSERVE_PYTHON_IMAGE", "python:3.11-slim-bookworm")
    return env


def project_volumes() -> set[str]:
    out = docker("volume", "ls", "--format", "{{.Name}}")
    return {v for v in out.split() if v.startswith(f"{PROJECT}_")}


def anonymous_volumes() -> set[str]:
    out = docker("volume", "ls", "--filter", "dangling=true", "--format", "{{.Name}}")
    return {v for v in out.split() if re.fullmatch(r"[0-9a-f]{64}", v)}


def container_processes(names: list[str]) -> list[psutil.Process]:
    """Every process of these containers (their init and all its descendants)."""
    pids = [int(p) for p in docker("inspect", "--format", "{{.State.Pid}}", *names).split()]
    procs = []
    for pid in pids:
        proc = psutil.Process(pid)
        procs += [proc, *proc.children(recursive=True)]
    return procs


CONTAINER_UID = 10001  # the image's gradserve user: it must read the mounted secrets


def tls_secrets(directory: Path) -> tuple[Path, dict[str, str]]:
    """A CA, the server's chain (its certificate, then the CA's: the health check
    verifies with it) and key, and a token file of two tenants, as docs/operations.md
    mounts them; the CA's path and the tokens by tenant."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    ca = CA(directory, "deploy-ca")
    pair = ca.issue("server", server=True)
    chain = directory / "server.crt"
    chain.write_bytes(pair.cert.read_bytes() + ca.path.read_bytes())
    tokens = {tenant: secrets.token_hex(32) for tenant in ("alice", "bob")}
    token_file = directory / "tokens"
    token_file.write_text("".join(f"{t} {tok}\n" for t, tok in tokens.items()))
    for path, mode in ((chain, 0o644), (pair.key, 0o600), (token_file, 0o600)):
        os.chown(path, CONTAINER_UID, CONTAINER_UID)
        path.chmod(mode)
    return ca.path, tokens


def tls_override(directory: Path) -> Path:
    """docs/operations.md's compose-secrets override, on the host's network: the
    server listens on every address, which the server allows only with tokens or
    mutual TLS now that GRADSERVE_INSECURE is 0."""
    override = {
        "services": {
            "server": {
                "environment": {
                    "GRADSERVE_HOST": "0.0.0.0",
                    "GRADSERVE_TLS_CERT": "/run/secrets/server.crt",
                    "GRADSERVE_TLS_KEY": "/run/secrets/server.key",
                    "GRADSERVE_AUTH_TOKEN_FILE": "/run/secrets/tokens",
                    "GRADSERVE_INSECURE": "0",
                    # the server alone: its own actor answers the calls below
                    "GRADSERVE_WAIT_FOR_NODES": "1",
                },
                "secrets": ["server.crt", "server.key", "tokens"],
            }
        },
        "secrets": {
            "server.crt": {"file": str(directory / "server.crt")},
            "server.key": {"file": str(directory / "server.key")},
            "tokens": {"file": str(directory / "tokens")},
        },
    }
    path = STATE / "docker-compose.tls.yml"
    path.write_text(yaml.safe_dump(override, sort_keys=False))
    return path


def refused(
    client: gradserve.Client, error: type[Exception], call: Callable[[gradserve.Client], Any]
) -> None:
    with client, pytest.raises(error):
        call(client)
