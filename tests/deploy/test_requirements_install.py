"""What the Dockerfile installs, installed the same way into fresh venvs.

No Docker engine runs here, so the image's install steps are checked by running
them: docker/install.sh (the build stage's `RUN`) into a new venv, then the
entrypoints' programs from that venv; and the client target's steps into
another, which must end up without torch or ray. pip's configured indexes on
this machine stand in for the CPU wheel index the Dockerfile names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


def make_venv(path: Path) -> tuple[Path, dict[str, str]]:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_NO_COMPILE"] = "1"  # bytecode is an image-build nicety, slow here
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return path / "bin" / "python", env


def run(cmd: list[str], env: dict[str, str], timeout: float = 400) -> str:
    # an empty working directory: `python -c` puts it first on sys.path, and a folder
    # like /tmp holds Ray's session dir `ray`, which would import as a namespace package
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
        )
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_install_script_builds_the_server_image_environment(tmp_path: Path) -> None:
    python, env = make_venv(tmp_path / "image")
    run(["bash", str(ROOT / "docker" / "install.sh"), str(ROOT)], env)
    probe = (
        "import sys, torch, ray, gradserve, gradserve_server.main, gradserve_workers.actor\n"
        "print(sys.version_info[:2], torch.__version__, ray.__version__)\n"
        "print(gradserve.__file__)\n"
    )
    out = run([str(python), "-c", probe], env)
    assert f"({sys.version_info.major}, {sys.version_info.minor})" in out
    pins = {
        line.split("==")[0]: line.split("==")[1].strip()
        for name in ("workers.txt", "server.txt", "client.txt")
        for line in (ROOT / "requirements" / name).read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert f" {pins['torch']}" in out and pins["ray"] in out
    # installed into the venv, not pointing back at the checkout
    assert str(tmp_path) in out.splitlines()[-1]
    assert "+cu" not in out  # a CPU build of torch
    bin_dir = python.parent
    for program in ("gradserve", "ray"):
        assert (bin_dir / program).exists(), program  # what the entrypoints run
    run([str(bin_dir / "gradserve"), "serve", "--help"], env, timeout=120)
    run([str(bin_dir / "ray"), "--version"], env, timeout=120)
    help_text = run([str(python), str(ROOT / "docker" / "healthcheck.py"), "--help"], env)
    assert "grpc.health" in help_text or "health" in help_text
    frozen = run([str(python), "-m", "pip", "freeze"], env)
    assert not any(line.lower().startswith("nvidia-") for line in frozen.splitlines())


def test_client_target_installs_without_torch_or_ray(tmp_path: Path) -> None:
    python, env = make_venv(tmp_path / "client")
    # the Dockerfile's client-build stage, step by step
    run([str(python), "-m", "pip", "install", "-r", str(ROOT / "requirements" / "client.txt")], env)
    run([str(python), "-m", "pip", "install", "--no-deps", str(ROOT / "client")], env)
    run([str(python), "-m", "pip", "check"], env)
    out = run(
        [
            str(python),
            "-c",
            "import importlib.util as u, gradserve; "
            "print(gradserve.__version__, u.find_spec('torch'), u.find_spec('ray'))",
        ],
        env,
    )
    assert out.split() == ["0.1.0", "None", "None"]
    run([str(python.parent / "gradserve"), "--help"], env, timeout=60)
