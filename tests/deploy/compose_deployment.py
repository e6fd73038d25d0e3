"""The compose deployment on a real Docker engine: `make test-deploy`.

Not part of `make test` (the file name is not test_*.py, so pytest collects it
only when named): it needs a running dockerd, docker-compose 1.29 and a base
image, which docker/test-deploy.sh provides before it runs this module.

What runs: docker-compose.yml itself, less its `ports:` (compose 1.29 refuses them
with host networking), plus an override that puts every container and build on
the host's network with loopback addresses and free ports: the server (Ray head
+ gRPC) and 2 worker containers. Then, from the host through the SDK: every
operation once, checks, and a batch job of 160,000 sampled points during which
one worker container is killed (`docker kill`); `down` and `up` again, and the
job and its results are still there; `down` leaves no containers, volumes or
processes behind but the named volumes. Values are checked against closed forms.

Environment (set by docker/test-deploy.sh): GRADSERVE_DEPLOY_STATE (a folder for
the generated compose files and report.json), GRADSERVE_PYTHON_IMAGE (the base
image), GRADSERVE_DOCKER (Debian's docker client).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import yaml
from support.certs import CA
from support.cluster import free_port

import gradserve

pytestmark = pytest.mark.timeout(1800)

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("GRADSERVE_DEPLOY_STATE", "/tmp/gradserve-deploy"))
DOCKER = os.environ.get("GRADSERVE_DOCKER", "/usr/bin/docker")
PROJECT = "gsdeploy"
IMAGE = "gradserve:latest"
CLIENT_IMAGE = "gradserve-client:latest"
IMAGE_LIMIT = 1.6e9  # bytes
WORKERS = 2
# the address Ray's nodes advertise: a loopback address, but not 127.0.0.1, which
# Ray swaps for the host's primary address (services.resolve_ip_for_localhost)
RAY_IP = "127.0.0.2"

# the batch job: 16 tasks x 10,000 points of x in R^25, sampled on the server;
# several seconds of work for three actors, so a worker dies in the middle of it
TERMS, TASKS, POINTS, WIDTH = 120, 16, 10_000, 25
FUNCTION = f"""
def f(x):
    s = 0 * x
    for i in range({TERMS}):
        s = s + sin(x + i)
    return sum(s)
"""


def closed_value(x: np.ndarray) -> np.ndarray:
    return np.sum(sum(np.sin(x + i) for i in range(TERMS)), axis=-1)


def closed_grad(x: np.ndarray) -> np.ndarray:
    return sum(np.cos(x + i) for i in range(TERMS))


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


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    ports = free_port(), free_port(), free_port()
    dep = Deployment(compose_files(*ports), *ports, compose_env())
    dep.down("--volumes")  # what an interrupted earlier run left
    before = anonymous_volumes()
    record(base_image=dep.env["GRADSERVE_PYTHON_IMAGE"], workers=WORKERS)

    started = time.monotonic()
    dep.compose("build", "server", timeout=3600)
    record(server_build_s=round(time.monotonic() - started, 1))
    started = time.monotonic()
    docker(
        "build", "--network", "host", "--target", "client", "-t", CLIENT_IMAGE,
        "--build-arg", f"PYTHON_IMAGE={dep.env['GRADSERVE_PYTHON_IMAGE']}", str(ROOT),
        timeout=3600,
    )  # fmt: skip
    record(client_build_s=round(time.monotonic() - started, 1))

    record(first_up_s=round(dep.up(), 1))
    try:
        yield dep
    finally:
        # every container's log, for a failure's post-mortem
        (STATE / "compose.log").write_text(dep.logs(tail="all"))
        dep.down("--volumes")
        leaked = anonymous_volumes() - before
        assert not leaked, f"anonymous volumes left behind: {leaked}"


# ------------------------------------------------------------------ the image


def test_the_images_are_small_and_hold_the_cpu_torch(deployment: Deployment) -> None:
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE))
    client_size = int(docker("image", "inspect", "--format", "{{.Size}}", CLIENT_IMAGE))
    record(server_image_bytes=size, client_image_bytes=client_size)
    assert size < IMAGE_LIMIT, f"{IMAGE} is {size / 1e9:.2f} GB"
    probe = (
        "import importlib.metadata as md, torch, ray\n"
        "nv = [d.metadata['Name'] for d in md.distributions()"
        " if d.metadata['Name'].lower().startswith('nvidia')]\n"
        "print(torch.__version__, torch.version.cuda, ray.__version__, nv)\n"
    )
    out = docker("run", "--rm", "--network", "host", "--entrypoint", "python", IMAGE, "-c", probe)
    version, cuda, ray_version, nvidia = out.split(maxsplit=3)
    record(image_torch=version, image_ray=ray_version)
    assert version.endswith("+cpu") and cuda == "None" and nvidia.strip() == "[]", out
    out = docker("run", "--rm", "--network", "host", CLIENT_IMAGE, "--help")
    assert "gradserve" in out.lower()


def test_three_ray_nodes_and_no_object_store_on_disk(deployment: Deployment) -> None:
    server = deployment.containers("server")[0]
    assert len(deployment.containers("worker")) == WORKERS
    count = (
        "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat /run/gradserve/ray/auth_token) "
        f"python /opt/gradserve/docker/wait_for_nodes.py {RAY_IP}:{deployment.ray_port} "
        f"{1 + WORKERS} 60"
    )
    docker("exec", server, "sh", "-c", count, timeout=120)
    logs = deployment.logs(tail=2000)
    assert "instead of /dev/shm" not in logs, "Ray's object store fell back to disk"
    with gradserve.Client(deployment.address, timeout=60) as client:
        info = client.server_info()
    assert info.workers == 1 + WORKERS  # one actor per container
    assert info.ray_address == f"{RAY_IP}:{deployment.ray_port}"
    # the server's /metrics, on the host's loopback
    url = f"http://127.0.0.1:{deployment.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as reply:
        assert "gradserve_" in reply.read().decode()


# ------------------------------------------------------------------ the SDK


def test_every_operation_once(deployment: Deployment) -> None:
    x = np.array([0.3, -1.2, 2.0, 0.7])
    v = np.array([1.0, 0.5, -2.0, 3.0])
    cube, square = "sum(x ** 3)", "x ** 2"
    close = {"rtol": 1e-12, "atol": 1e-12}
    with gradserve.Client(deployment.address, timeout=120) as c:
        np.testing.assert_allclose(c.value(cube, x), np.sum(x**3), **close)
        np.testing.assert_allclose(c.grad(cube, x), 3 * x**2, **close)
        np.testing.assert_allclose(
            c.jacobian("sin(x) * x", x), np.diag(np.cos(x) * x + np.sin(x)), **close
        )
        np.testing.assert_allclose(c.hessian(cube, x), np.diag(6 * x), **close)
        np.testing.assert_allclose(c.vjp(square, x, v), 2 * x * v, **close)
        np.testing.assert_allclose(c.jvp(square, x, v), 2 * x * v, **close)
        np.testing.assert_allclose(c.hvp(cube, x, v), 6 * x * v, **close)
        both = c.compute(cube, x, ["value", "grad", "hessian"])
        np.testing.assert_allclose(both["value"], np.sum(x**3), **close)
        np.testing.assert_allclose(both["grad"], 3 * x**2, **close)
        np.testing.assert_allclose(both["hessian"], np.diag(6 * x), **close)
        # batched: 2,000 points over the actors of all three containers
        pts = np.random.default_rng(1).uniform(-2, 2, size=(2000, 4))
        np.testing.assert_allclose(c.grad(cube, pts, batched=True), 3 * pts**2, **close)


def test_checks(deployment: Deployment) -> None:
    x = np.array([0.3, -1.2, 2.0, 0.7])
    with gradserve.Client(deployment.address, timeout=120) as c:
        assert c.check("sum(sin(x) * x)", x).passed  # autograd vs finite differences
        right = c.check("sum(x ** 3)", x, grad="3 * x ** 2")
        assert right.passed and right.max_abs_error < 1e-12
        wrong = c.check("sum(x ** 3)", x, grad="2 * x ** 2")
        assert not wrong.passed
        assert wrong.max_abs_error == pytest.approx(np.max(x**2), rel=1e-12)
        sampled = c.check(
            "sum(x ** 3)", grad="3 * x ** 2", sample=gradserve.uniform(-1, 1, shape=[3], count=500)
        )
        assert sampled.passed and len(sampled.point_passed) == 500


# ------------------------------------------------------------------ the batch job


def job_spec() -> dict[str, Any]:
    sample = {"dist": "uniform", "low": -3, "high": 3, "shape": [WIDTH], "count": POINTS}
    tasks = [
        {
            "id": f"t{k}",
            "function": FUNCTION,
            "inputs": {"x": {"sample": {**sample, "seed": k}}},
            "ops": ["value", "grad"],
        }
        for k in range(TASKS)
    ]
    return {"name": "deploy-test", "tasks": tasks}


def check_results(job: gradserve.Job) -> None:
    results = {r.task_id: r for r in job.results()}
    assert sorted(results) == sorted(f"t{k}" for k in range(TASKS))
    for k in range(TASKS):
        # the server draws with NumPy's default_rng(seed).uniform: redraw the points here
        x = np.random.default_rng(k).uniform(-3, 3, size=(POINTS, WIDTH))
        out = results[f"t{k}"].outputs
        np.testing.assert_allclose(out["value"], closed_value(x), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(out["grad"], closed_grad(x), rtol=1e-10, atol=1e-9)


JOB: dict[str, str] = {}


def test_a_job_survives_a_killed_worker_container(deployment: Deployment) -> None:
    victim = deployment.containers("worker")[0]
    with gradserve.Client(deployment.address, timeout=300) as c:
        # a job cancelled at once: cancelling works, and it leaves the workers free
        doomed = c.submit({"tasks": [{**job_spec()["tasks"][0], "id": "doomed"}]})
        assert doomed.cancel().state == "cancelled"

        started = time.monotonic()
        job = c.submit(job_spec(), idempotency_key="deploy-test")
        JOB["id"] = job.id
        deadline = time.monotonic() + 300
        status = job.status()
        while status.points_done == 0 and not status.done:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
            status = job.status()
        assert not status.done, f"the job ended before a worker could be lost: {status}"
        docker("kill", victim)
        killed_at = status.points_done
        final = job.wait(timeout=900)
        wall = time.monotonic() - started
        assert final.state == "succeeded", (final, deployment.logs())
        assert final.tasks_failed == 0
        assert final.points_done == final.points_total == TASKS * POINTS
        check_results(job)
        # the kill cost work in flight, which ran again elsewhere
        server_log = deployment.compose("logs", "--no-color", "server", timeout=60)
        retried = server_log.count("chunk retried after worker loss")
        assert retried >= 1, deployment.logs()
        listed = {j.id: j.state for j in c.jobs()}
        assert listed[job.id] == "succeeded" and listed[doomed.id] == "cancelled"
    st = deployment.state(victim)
    record(
        job_points=TASKS * POINTS,
        job_wall_s=round(wall, 1),
        killed_container=victim,
        points_done_at_kill=killed_at,
        chunks_retried=retried,
        killed_container_restarted=bool(st["Running"]),
    )


def test_the_job_and_its_results_survive_down_and_up(deployment: Deployment) -> None:
    assert JOB, "the job test did not run"
    volumes = project_volumes()
    (STATE / "compose-before-down.log").write_text(deployment.logs(tail="all"))
    deployment.down()
    assert deployment.containers(all=True) == []
    assert project_volumes() == volumes  # down keeps the named volumes
    record(second_up_s=round(deployment.up(), 1))
    with gradserve.Client(deployment.address, timeout=300) as c:
        job = c.job(JOB["id"])
        status = job.status()
        assert status.state == "succeeded" and status.points_done == TASKS * POINTS
        check_results(job)
        # the same idempotency key gives the same job, not a new one
        assert c.submit(job_spec(), idempotency_key="deploy-test").id == JOB["id"]


def container_processes(names: list[str]) -> list[psutil.Process]:
    """Every process of these containers (their init and all its descendants)."""
    pids = [int(p) for p in docker("inspect", "--format", "{{.State.Pid}}", *names).split()]
    procs = []
    for pid in pids:
        proc = psutil.Process(pid)
        procs += [proc, *proc.children(recursive=True)]
    return procs


def test_the_containers_talk_only_on_loopback(deployment: Deployment) -> None:
    """Host networking: every connection of every container process (Ray's nodes,
    gradserve, the actors) is between loopback addresses."""
    seen, off = 0, []
    for proc in container_processes(deployment.containers()):
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for conn in conns:
            for addr in (conn.laddr, conn.raddr):
                if not addr:
                    continue
                ip = ipaddress.ip_address(addr.ip)
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                    ip = ip.ipv4_mapped
                if not ip.is_unspecified:  # a listening socket on every address
                    seen += 1
                    if not ip.is_loopback:
                        off.append(f"{proc.name()}: {conn.laddr} -> {conn.raddr}")
    assert seen > 10 and not off, off


def test_down_leaves_only_the_named_volumes(deployment: Deployment) -> None:
    names = deployment.containers()
    ids = docker("inspect", "--format", "{{.Id}}", *names).split()
    procs = container_processes(names)
    assert len(procs) > 3 * 2  # entrypoints, Ray's daemons, gradserve...
    deployment.down()
    assert deployment.containers(all=True) == []
    declared = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"]
    assert project_volumes() == {f"{PROJECT}_{name}" for name in declared}
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left behind: {alive}"
    shims = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(i in " ".join(p.info["cmdline"] or ()) for i in ids)
    ]
    assert not shims, f"container shims left behind: {shims}"
    record(down_left=sorted(project_volumes()))


# ------------------------------------------------------------------ TLS and tenants


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


def test_tls_and_tenant_tokens_from_mounted_secrets(deployment: Deployment) -> None:
    """The server again, alone, from docs/operations.md's override: TLS and a token
    file mounted as compose secrets, GRADSERVE_INSECURE=0, on every address. Its
    health check turns healthy over TLS; from the host, a tenant's token over TLS
    computes and sees only its own jobs, while plaintext and token-less calls are
    refused; `down` leaves nothing but the named volumes."""
    assert deployment.containers(all=True) == [], "the previous test's down did not run"
    directory = STATE / "secrets"
    ca, tokens = tls_secrets(directory)
    dep = replace(deployment, files=[*deployment.files, tls_override(directory)])
    started = time.monotonic()
    try:
        dep.compose("up", "-d", "--no-build", "server")
        healthy = dep.wait_healthy()
        server = dep.containers("server")[0]
        env = docker("inspect", "--format", "{{json .Config.Env}}", server)
        assert '"GRADSERVE_INSECURE=0"' in env and '"GRADSERVE_HOST=0.0.0.0"' in env, env
        # the health check spoke TLS: in plaintext, the same probe fails
        probe = ["python", "/opt/gradserve/docker/healthcheck.py", dep.address]
        plain = subprocess.run(
            [DOCKER, "exec", "-e", "GRADSERVE_TLS_CERT=", server, *probe],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert plain.returncode == 1, (plain.stdout, plain.stderr)
        assert "SERVING" in docker("exec", server, *probe, timeout=60)

        tls = gradserve.TLS(ca=str(ca))
        x = np.array([0.3, -1.2, 2.0])
        with gradserve.Client(dep.address, token=tokens["alice"], tls=tls, timeout=120) as c:
            np.testing.assert_allclose(c.grad("sum(x ** 3)", x), 3 * x**2, rtol=1e-12)
            task = {"id": "t", "function": "sum(x ** 3)", "inputs": {"x": x.tolist()}}
            job = c.submit({"name": "alice", "tasks": [{**task, "ops": ["value"]}]})
            assert job.wait(timeout=120).state == "succeeded"
            # a tenant lists its own jobs: not bob's, nor the default tenant's
            # job of the plaintext deployment before (still in the data volume)
            assert [j.id for j in c.jobs()] == [job.id]
            with pytest.raises(gradserve.NotFoundError):
                c.job(JOB["id"]).status()
        bob = gradserve.Client(dep.address, token=tokens["bob"], tls=tls, timeout=60)
        refused(bob, gradserve.NotFoundError, lambda c: c.job(job.id).status())
        tokenless = gradserve.Client(dep.address, tls=tls, timeout=60)
        refused(tokenless, gradserve.UnauthenticatedError, lambda c: c.grad("sum(x ** 3)", x))
        plaintext = gradserve.Client(dep.address, token=tokens["alice"], timeout=60)
        refused(plaintext, gradserve.UnavailableError, lambda c: c.grad("sum(x ** 3)", x))
    finally:
        (STATE / "compose-tls.log").write_text(dep.logs(tail="all"))
        dep.down()
        shutil.rmtree(directory, ignore_errors=True)
    record(tls_up_healthy_s=round(healthy, 1), tls_run_s=round(time.monotonic() - started, 1))
    assert dep.containers(all=True) == []
    declared = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"]
    assert project_volumes() == {f"{PROJECT}_{name}" for name in declared}
