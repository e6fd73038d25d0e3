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
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import psutil
import pytest
import yaml
from support.cluster import free_port

import gradserve

from .compose_support import (
    CLIENT_IMAGE,
    DOCKER,
    IMAGE,
    PROJECT,
    RAY_IP,
    ROOT,
    STATE,
    WORKERS,
    Deployment,
    anonymous_volumes,
    compose_env,
    compose_files,
    container_processes,
    docker,
    project_volumes,
    record,
    refused,
    tls_override,
    tls_secrets,
)

pytestmark = pytest.mark.timeout(1800)

IMAGE_LIMIT = 1.6e9  # bytes

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
    close: dict[str, Any] = {"rtol": 1e-12, "atol": 1e-12}
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
