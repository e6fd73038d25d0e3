"""Run the deployment's own entrypoints (docker/*.sh) as plain processes.

The containers run exactly these scripts; here they run on loopback with
temporary directories and free ports, so the tests exercise what the images do.
Every process is stopped by pid or by the temp dir in its command line (its
node's marker), never by name and never with `ray stop`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from support.cluster import free_port, kill_matching

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
VENV_BIN = Path(sys.executable).parent

sys.path.insert(0, str(DOCKER))
from healthcheck import check as health_check  # noqa: E402


def base_env(**overrides: str) -> dict[str, str]:
    """The environment of an entrypoint: this venv first on PATH, no stray GRADSERVE_*/RAY_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GRADSERVE_", "RAY_AUTH", "RAY_ADDRESS"))
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["GRADSERVE_NODE_IP"] = "127.0.0.1"
    env.update(overrides)
    return env


@dataclass
class Entrypoint:
    """One docker/*-entrypoint.sh process (its own session) and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    temp_dir: Path
    env: dict[str, str] = field(repr=False)

    @property
    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (what `docker stop` sends) and wait; SIGKILL what is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        kill_matching(str(self.temp_dir))  # anything it failed to stop
        return self.proc.returncode


def start_entrypoint(name: str, script: str, env: dict[str, str], temp_dir: Path) -> Entrypoint:
    log = temp_dir.parent / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", str(DOCKER / script)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(temp_dir.parent),
            start_new_session=True,
        )
    return Entrypoint(name, proc, log, temp_dir, env)


@dataclass
class LoopbackCluster:
    """docker/server-entrypoint.sh (Ray head + gradserve) and worker entrypoints."""

    root: Path
    ray_port: int
    grpc_port: int
    token_file: Path
    server: Entrypoint | None = None
    workers: list[Entrypoint] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    def common_env(self, **overrides: str) -> dict[str, str]:
        return base_env(
            GRADSERVE_RAY_AUTH="token",
            GRADSERVE_RAY_TOKEN_FILE=str(self.token_file),
            GRADSERVE_WAIT_TIMEOUT="90",
            **overrides,
        )

    def start_server(self, *, num_cpus: int, wait_for_nodes: int = 1) -> Entrypoint:
        temp = self.root / "h"  # short: Ray's socket paths are length-bound
        env = self.common_env(
            GRADSERVE_RAY_PORT=str(self.ray_port),
            GRADSERVE_RAY_TEMP_DIR=str(temp),
            GRADSERVE_RAY_NUM_CPUS=str(num_cpus),
            GRADSERVE_RAY_OBJECT_STORE_BYTES=str(300 << 20),
            GRADSERVE_RAY_EXTRA_ARGS=f"--ray-client-server-port={free_port()}",
            GRADSERVE_WAIT_FOR_NODES=str(wait_for_nodes),
            GRADSERVE_HOST="127.0.0.1",
            GRADSERVE_PORT=str(self.grpc_port),
            GRADSERVE_DATA_DIR=str(self.root / "data"),
        )
        self.server = start_entrypoint("server", "server-entrypoint.sh", env, temp)
        return self.server

    def start_worker(self, *, num_cpus: int) -> Entrypoint:
        index = len(self.workers)
        temp = self.root / f"w{index}"
        env = self.common_env(
            GRADSERVE_RAY_HEAD=self.ray_address,
            GRADSERVE_RAY_TEMP_DIR=str(temp),
            GRADSERVE_RAY_NUM_CPUS=str(num_cpus),
            GRADSERVE_RAY_OBJECT_STORE_BYTES=str(200 << 20),
        )
        worker = start_entrypoint(f"worker{index}", "worker-entrypoint.sh", env, temp)
        self.workers.append(worker)
        return worker

    def wait_serving(self, timeout: float = 150.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.server is not None
            if not self.server.alive():
                raise RuntimeError(f"server entrypoint exited:\n{self.logs()}")
            try:
                if health_check(self.address, timeout=2.0) == "SERVING":
                    return
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not SERVING after {timeout:.0f}s:\n{self.logs()}")
            time.sleep(0.5)

    def ray_env(self) -> dict[str, str]:
        """What a Ray driver needs to join this cluster (its token)."""
        env = base_env()
        if self.token_file.exists():
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN"] = self.token_file.read_text().strip()
        return env

    def actor_placement(self) -> dict[str, object]:
        """Alive GradActors per node, from Ray's GCS (a short-lived driver)."""
        out = subprocess.run(
            [sys.executable, "-c", _PLACEMENT_PROBE, self.ray_address],
            capture_output=True,
            text=True,
            env=self.ray_env(),
            timeout=90,
            check=True,
        )
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for ep in [self.server, *self.workers]:
            if ep is not None:
                parts.append(f"--- {ep.name} ---\n{ep.output[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def new_cluster() -> LoopbackCluster:
    root = Path(tempfile.mkdtemp(prefix="gsdep"))
    return LoopbackCluster(root, free_port(), free_port(), root / "auth" / "ray_token")


_PLACEMENT_PROBE = r"""
import json, sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
from ray._private import state
head = [n["NodeID"] for n in ray.nodes()
        if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})]
alive_nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
per_node = {}
for info in state.actors().values():
    if info.get("ActorClassName", "").endswith("GradActor") and info.get("State") == "ALIVE":
        node = info["Address"]["NodeID"]
        per_node[node] = per_node.get(node, 0) + 1
ray.shutdown()
print(json.dumps({"head": head[0] if head else "", "nodes": alive_nodes, "actors": per_node}))
"""
