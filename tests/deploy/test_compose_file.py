"""The deployment files, checked without a Docker engine.

docker-compose.yml and the GPU overlay are parsed with PyYAML; the Dockerfile is
read instruction by instruction; the GRADSERVE_* variables they and the
entrypoints use are matched against what the server's config knows and what
docs/deployment.md documents.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradserve_server import config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCS = ROOT / "docs" / "deployment.md"
VAR = re.compile(r"\bGRADSERVE_[A-Z0-9_]+\b")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def compose_default(value: str) -> str:
    """'${NAME:-default}' -> 'default' (what compose substitutes without a .env)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# ------------------------------------------------------------------ compose


def test_services(compose: dict[str, Any]) -> None:
    assert {"server", "worker"} <= set(compose["services"])
    assert {"gradserve-data", "ray-auth"} <= set(compose["volumes"])


def test_server_publishes_grpc_and_keeps_data_on_a_named_volume(compose: dict[str, Any]) -> None:
    server = compose["services"]["server"]
    ports = [compose_default(str(p)) for p in server["ports"]]
    assert any(p.endswith(":50051") for p in ports), ports
    env = env_of(server)
    assert env["GRADSERVE_PORT"] == "50051" and env["GRADSERVE_HOST"] == "0.0.0.0"
    data_dir = env["GRADSERVE_DATA_DIR"]
    mounts = dict(str(v).split(":")[:2] for v in server["volumes"])
    assert mounts.get("gradserve-data") == data_dir
    assert "gradserve-data" in compose["volumes"]  # named, not a bind mount
    assert compose_default(str(server["shm_size"])) in {"1gb", "2gb", "4gb", "8gb"}
    assert server.get("init") is True  # reaps Ray's re-parented daemons


def test_server_healthcheck_asks_grpc_health(compose: dict[str, Any]) -> None:
    test = compose["services"]["server"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    script = next(Path(arg) for arg in test if str(arg).endswith("healthcheck.py"))
    assert script.parent == Path("/opt/gradserve/docker")
    source = (DOCKER / script.name).read_text()
    assert "grpc_health.v1" in source and "HealthCheckRequest" in source
    assert test[-1] == "127.0.0.1:50051"


def test_healthcheck_script_reports_unreachable_servers() -> None:
    # nothing listens on port 9 of loopback: exit status 1, not a traceback
    proc = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), "127.0.0.1:9", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "UNAVAILABLE" in proc.stderr and "Traceback" not in proc.stderr


def test_worker_scales(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker and "expose" not in worker
    assert compose_default(str(worker["shm_size"]))
    assert "server" in worker["depends_on"]
    assert worker["entrypoint"] == ["/opt/gradserve/docker/worker-entrypoint.sh"]
    head = env_of(worker)["GRADSERVE_RAY_HEAD"]
    assert head == f"server:{env_of(compose['services']['server'])['GRADSERVE_RAY_PORT']}"


def test_ray_token_is_shared_through_a_volume(compose: dict[str, Any]) -> None:
    server, worker = compose["services"]["server"], compose["services"]["worker"]
    token_file = env_of(server)["GRADSERVE_RAY_TOKEN_FILE"]
    assert env_of(worker)["GRADSERVE_RAY_TOKEN_FILE"] == token_file
    assert compose_default(env_of(server)["GRADSERVE_RAY_AUTH"]) == "token"
    folder = str(Path(token_file).parent)
    assert f"ray-auth:{folder}" in server["volumes"]
    assert f"ray-auth:{folder}:ro" in worker["volumes"]


def test_gpu_overlay() -> None:
    gpu = load(GPU)["services"]
    assert env_of(gpu["server"])["GRADSERVE_DEVICE"] == "cuda"
    devices = gpu["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "TORCH_INDEX_URL" in gpu["worker"]["build"]["args"]
    assert "container_name" not in gpu["worker"] and "ports" not in gpu["worker"]


# ------------------------------------------------------------------ variables


def server_config_variables() -> set[str]:
    """GRADSERVE_* variables build_parser() reads: set each and see its default move."""
    known: set[str] = set()
    baseline = vars(config.build_parser().parse_args([]))
    samples = {"DEVICE": "cuda", "HOST": "0.0.0.0", "RAY_ADDRESS": "10.0.0.1:6379"}
    for action in config.build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = "GRADSERVE_" + action.dest.upper()
        value = samples.get(action.dest.upper(), "7")
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            moved = vars(config.build_parser().parse_args([]))[action.dest] != baseline[action.dest]
        except SystemExit:  # the parser read the variable, and refused the sample value
            moved = True
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old
        if moved:
            known.add(name)
    return known


def documented_variables() -> set[str]:
    """The first column of docs/deployment.md's tables."""
    return set(re.findall(r"^\| `(GRADSERVE_[A-Z0-9_]+)` \|", DOCS.read_text(), re.M))


def used_variables() -> set[str]:
    files = [COMPOSE, GPU, DOCKERFILE, *DOCKER.glob("*.sh"), *DOCKER.glob("*.py")]
    return {v for f in files for v in VAR.findall(f.read_text())}


def test_server_config_variables_are_found() -> None:
    known = server_config_variables()
    assert {"GRADSERVE_PORT", "GRADSERVE_DATA_DIR", "GRADSERVE_RAY_ADDRESS"} <= known
    assert "GRADSERVE_MAX_LOOP_ITERATIONS" in known


def test_every_variable_is_known_and_documented() -> None:
    documented = documented_variables()
    used = used_variables()
    config_vars = server_config_variables()
    undocumented = (used | config_vars) - documented
    assert not undocumented, f"add these to docs/deployment.md: {sorted(undocumented)}"
    # a variable compose hands to the server must be one the server reads
    server_env = env_of(load(COMPOSE)["services"]["server"])
    entrypoint_only = documented - config_vars
    for name in server_env:
        assert name in config_vars or name in entrypoint_only, name
    stale = documented - used - config_vars - {"GRADSERVE_RAY_TOKEN_FILE"}
    assert not stale, f"documented but used nowhere: {sorted(stale)}"


def test_compose_passes_server_settings_the_server_reads() -> None:
    config_vars = server_config_variables()
    server_env = env_of(load(COMPOSE)["services"]["server"])
    for name in ("GRADSERVE_HOST", "GRADSERVE_PORT", "GRADSERVE_DATA_DIR", "GRADSERVE_DEVICE"):
        assert name in server_env and name in config_vars


# ------------------------------------------------------------------ Dockerfile


def test_dockerfile_base_matches_the_test_python() -> None:
    steps = instructions(DOCKERFILE)
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    image = args["PYTHON_IMAGE"]
    assert image.startswith("python:") and "slim" in image
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert image.split(":")[1].startswith(minor + "-"), (image, minor)
    froms = [a for word, a in steps if word == "FROM"]
    assert len(froms) >= 3 and all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_dockerfile_installs_the_pinned_requirements() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY requirements/ requirements/" in text
    assert "docker/install.sh /src deps" in text and "docker/install.sh /src local" in text
    assert "download.pytorch.org/whl/cpu" in text  # torch's CPU wheels
    assert "docker/install.sh /src client" in text  # the client target
    install = (DOCKER / "install.sh").read_text()
    assert '-r "$root/requirements/client.txt"' in install
    assert '-r "$root/requirements/server.txt"' in install
    assert "requirements/workers.txt" in install  # the torch pin
    server_txt = (ROOT / "requirements" / "server.txt").read_text()
    assert "-r client.txt" in server_txt and "-r workers.txt" in server_txt
    for name in ("client.txt", "workers.txt", "server.txt"):
        for line in (ROOT / "requirements" / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                assert "==" in line, f"{name}: {line!r} is not pinned"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    steps = instructions(DOCKERFILE)
    stages: list[list[tuple[str, str]]] = []
    for word, arg in steps:
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, arg))
    final = [s for s in stages if any(w == "ENTRYPOINT" for w, _ in s)]
    assert final
    for stage in final:
        users = [a for w, a in stage if w == "USER"]
        assert users and users[-1] not in {"root", "0"}


def test_dockerfile_entrypoint_scripts_exist_and_are_executable() -> None:
    steps = instructions(DOCKERFILE)
    copies = " ".join(a for w, a in steps if w == "COPY")
    for script in ("server-entrypoint.sh", "worker-entrypoint.sh"):
        assert f"docker/{script}" in copies
    for word, arg in steps:
        if word == "ENTRYPOINT" and "/opt/gradserve/docker/" in arg:
            name = Path(yaml.safe_load(arg)[0]).name
            path = DOCKER / name
            assert path.is_file() and os.access(path, os.X_OK), path
    for name in ("server-entrypoint.sh", "worker-entrypoint.sh", "install.sh"):
        path = DOCKER / name
        assert os.access(path, os.X_OK), path
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_entrypoint_scripts_pass_shellcheck() -> None:
    from shutil import which

    if which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    scripts = [str(p) for p in DOCKER.glob("*.sh")]
    proc = subprocess.run(
        ["shellcheck", "-x", "-P", str(DOCKER), *scripts],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ token logic


def run_auth(role: str, **env: str) -> dict[str, str]:
    """Source docker/lib.sh, run gs_ray_auth, and return the RAY_AUTH_* it exported."""
    script = f"source {shlex.quote(str(DOCKER / 'lib.sh'))}; gs_ray_auth {role}; env"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GRADSERVE_", "RAY_AUTH"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    pairs = (line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return {k: v for k, v in pairs if k.startswith("RAY_AUTH")}


def test_ray_token_head_generates_and_worker_reads(tmp_path: Path) -> None:
    token_file = tmp_path / "auth" / "auth_token"
    head = run_auth("head", GRADSERVE_RAY_AUTH="token", GRADSERVE_RAY_TOKEN_FILE=str(token_file))
    assert head["RAY_AUTH_MODE"] == "token" and len(head["RAY_AUTH_TOKEN"]) == 64
    assert token_file.read_text().strip() == head["RAY_AUTH_TOKEN"]
    assert token_file.stat().st_mode & 0o077 == 0  # only the owner reads it
    again = run_auth("head", GRADSERVE_RAY_AUTH="token", GRADSERVE_RAY_TOKEN_FILE=str(token_file))
    assert again == head  # a restarted head keeps its token
    worker = run_auth(
        "worker", GRADSERVE_RAY_AUTH="token", GRADSERVE_RAY_TOKEN_FILE=str(token_file)
    )
    assert worker == head


def test_ray_token_from_the_environment_wins(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    got = run_auth(
        "head",
        GRADSERVE_RAY_AUTH="token",
        GRADSERVE_RAY_TOKEN="s3cret",
        GRADSERVE_RAY_TOKEN_FILE=str(token_file),
    )
    assert got == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "s3cret"}
    assert token_file.read_text().strip() == "s3cret"  # shared with the workers


def test_ray_token_modes(tmp_path: Path) -> None:
    assert run_auth("head", GRADSERVE_RAY_AUTH="disabled") == {"RAY_AUTH_MODE": "disabled"}
    assert run_auth("worker") == {}  # auto without a token: Ray decides
    with pytest.raises(RuntimeError, match="no token"):
        run_auth("worker", GRADSERVE_RAY_AUTH="token", GRADSERVE_RAY_TOKEN_FILE=str(tmp_path / "x"))
    with pytest.raises(RuntimeError, match="must be token, disabled or auto"):
        run_auth("head", GRADSERVE_RAY_AUTH="yes")
