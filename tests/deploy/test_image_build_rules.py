"""Rules for the image build and the compose deployment, checked without Docker.

Each rule is a defect the deployment had when it first ran on a real engine
(issue 19): the build context carried host-built binaries, the Dockerfile
fetched its frontend from Docker Hub and used BuildKit-only flags, the image
could get a CUDA build of torch, Ray's object store did not fit in the
containers' /dev/shm, and the image declared an anonymous volume. `make
test-deploy` (docker/test-deploy.sh) checks the same on a running deployment.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml"]


# ------------------------------------------------------------ .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (moby/patternmatcher) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*" and pattern[i + 1 : i + 2] == "*":
            i += 1
            if pattern[i + 1 : i + 2] == "/":
                i += 1
            out += ".*" if i + 1 == len(pattern) else "(.*/)?"
        elif ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!`, regex) per rule, in file order."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, _pattern_regex(line)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `path` out of the build context: the last rule that
    matches the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            verdict = not negate
    return verdict


def test_the_ignore_matcher_follows_docker() -> None:
    rules = dockerignore_rules("build\n**/x.so\n*.md\n!README.md\n")
    assert excluded("build/lib/a.py", rules) and not excluded("w/build/a.py", rules)
    assert excluded("x.so", rules) and excluded("a/b/x.so", rules)
    assert excluded("NOTES.md", rules) and not excluded("README.md", rules)
    assert not excluded("docs/NOTES.md", rules)  # '*' stops at '/'


HOST_BUILT = [
    # what `pip install -e ./workers` (make .venv) leaves in a checkout
    "workers/build/lib/gradserve_workers/check/__init__.py",
    "server/build/lib/gradserve_server/main.py",
    "client/dist/gradserve-0.1.0-py3-none-any.whl",
    "workers/gradserve_workers.egg-info/PKG-INFO",
    "client/gradserve/__pycache__/_client.cpython-311.pyc",
    ".venv/bin/python",
    ".git/HEAD",
    "build/x",
]


def test_dockerignore_leaves_host_built_files_out() -> None:
    """A host-built library or build folder in the context would be packaged into
    the image instead of the sources."""
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text())
    kept = [p for p in HOST_BUILT if not excluded(p, rules)]
    assert not kept, f".dockerignore lets these into the image build: {kept}"


def test_dockerignore_keeps_every_source_the_image_copies() -> None:
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text())
    tracked = subprocess.run(
        ["git", "ls-files", "client", "workers", "server", "requirements", "docker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "workers/gradserve_workers/actor.py" in tracked
    dropped = [p for p in tracked if excluded(p, rules)]
    assert not dropped, f".dockerignore drops sources the image needs: {dropped}"
    # the wheelhouse's wheels are the offline build's inputs
    assert not excluded("docker/wheelhouse/torch-2.13.0+cpu-cp311-cp311-linux.whl", rules)
    assert not excluded("docker/wheelhouse/SHA256SUMS", rules)


# ------------------------------------------------------------ Dockerfile syntax

# flags the legacy builder does not know (and `RUN <<EOF` heredocs)
BUILDKIT_ONLY = re.compile(r"--(chmod|link|mount|network|security|parents|exclude)\b|<<")


def parser_directives(text: str) -> dict[str, str]:
    """Docker's parser directives: `# key=value` lines at the very top."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(\S+)\s*$", line)
        if not m:
            break
        found[m.group(1).lower()] = m.group(2)
    return found


def test_dockerfile_fetches_no_frontend_and_needs_no_buildkit() -> None:
    text = DOCKERFILE.read_text()
    directives = parser_directives(text)
    assert "syntax" not in directives, (
        f"`# syntax={directives.get('syntax')}` pulls a frontend image from Docker Hub "
        "at build time: offline and mirrored builds fail"
    )
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert not BUILDKIT_ONLY.search(line), f"BuildKit-only: {line.strip()}"
    assert parser_directives("# syntax=docker/dockerfile:1\nFROM x\n") == {
        "syntax": "docker/dockerfile:1"
    }


# ------------------------------------------------------------ torch's build


def _stub_python(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A `python` that records pip's arguments instead of installing, and runs
    anything else (install.sh's check of the installed torch) with this test's
    Python and, in front of it, a stand-in `torch` module of the CPU build
    (what pip would have installed, without seconds of importing the real one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        f"__version__ = '{torch_pin()}+cpu'\n\n\nclass version:\n    cuda = None\n"
    )
    log = tmp_path / "pip.log"
    stub = bin_dir / "python"
    record = f'echo "$*" >>{shlex.quote(str(log))}; exit 0'
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ "$1" == -m && "$2" == pip ]]; then {record}; fi\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_", "GRADSERVE_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(fake.parent)
    return log, env


def run_install(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log, base = _stub_python(tmp_path)
    proc = subprocess.run(
        ["bash", str(DOCKER / "install.sh"), str(ROOT), "deps"],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=120,
    )
    return proc, log.read_text().splitlines() if log.exists() else []


def torch_pin() -> str:
    text = (ROOT / "requirements" / "workers.txt").read_text()
    match = re.search(r"^torch==(\S+)", text, re.M)
    assert match
    return match.group(1)


def test_the_image_asks_for_the_cpu_build_of_torch_from_any_index(tmp_path: Path) -> None:
    """Plain PyPI's Linux torch is the CUDA build (a 5.5 GB image): the requirement
    names the +cpu build, which such an index does not have, so the build fails
    instead of growing."""
    proc, calls = run_install(tmp_path, TORCH_INDEX_URL="https://pypi.org/simple")
    assert proc.returncode == 0, proc.stderr
    torch_calls = [c for c in calls if re.search(r"\btorch==", c)]
    assert torch_calls == [
        f"-m pip install --no-input --index-url https://pypi.org/simple torch=={torch_pin()}+cpu"
    ]
    assert "(CUDA None)" in proc.stderr  # install.sh checked the torch it got


def test_the_image_refuses_a_torch_that_is_not_the_asked_build(tmp_path: Path) -> None:
    proc, calls = run_install(tmp_path, TORCH_VARIANT="cu128")
    assert proc.returncode != 0
    assert any(c.endswith(f"torch=={torch_pin()}+cu128") for c in calls)
    assert "has no CUDA, but TORCH_VARIANT=cu128" in proc.stderr
    assert not any("requirements/server.txt" in c for c in calls)  # stopped there


def test_the_dockerfile_builds_the_cpu_image_by_default() -> None:
    args = re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.M)
    assert ("TORCH_VARIANT", "cpu") in args
    assert ("TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu") in args
    assert 'TORCH_VARIANT="${TORCH_VARIANT}"' in DOCKERFILE.read_text()


# ------------------------------------------------------------ object store vs /dev/shm

UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def docker_bytes(size: str) -> int:
    """Docker's size strings ('2gb', '512m', '1073741824') in bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)b?\s*", size.lower())
    assert m, f"not a Docker size: {size!r}"
    return int(float(m.group(1)) * UNITS[m.group(2)])


def compose_default(value: Any) -> str:
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def test_docker_bytes() -> None:
    assert docker_bytes("2gb") == 2 << 30 and docker_bytes("64m") == 64 << 20
    assert docker_bytes("1073741824") == 1 << 30


def test_rays_object_store_fits_in_every_containers_shm() -> None:
    """Unset, Ray sizes its object store at 30% of the machine's memory; with more
    than /dev/shm holds, every node falls back to a disk-backed store."""
    checked = 0
    for path in COMPOSE_FILES:
        services = yaml.safe_load(path.read_text())["services"]
        for name, service in services.items():
            if "shm_size" not in service:
                continue
            shm = docker_bytes(compose_default(service["shm_size"]))
            env = {k: compose_default(v) for k, v in (service.get("environment") or {}).items()}
            store = env.get("GRADSERVE_RAY_OBJECT_STORE_BYTES", "")
            assert store, f"{path.name}: {name} has shm_size but no object store size"
            # Ray's minimum is 75 MiB; leave /dev/shm room for torch's own use
            assert 75 << 20 <= docker_bytes(store) <= 0.9 * shm, (path.name, name, store, shm)
            checked += 1
    assert checked >= 2  # server and worker


def test_the_entrypoints_pass_the_object_store_size_to_ray() -> None:
    lib = shlex.quote(str(DOCKER / "lib.sh"))
    script = f"source {lib}; a=(); gs_ray_resource_args a; echo ${{a[@]}}"
    out = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "GRADSERVE_RAY_OBJECT_STORE_BYTES": "1073741824"},
        check=True,
        timeout=30,
    ).stdout
    assert out.split() == ["--object-store-memory=1073741824"]


# ------------------------------------------------------------ volumes


def test_the_image_declares_no_anonymous_volume() -> None:
    """A VOLUME instruction gives every container of the image (every worker too) an
    anonymous volume on each `up`, which `down` leaves behind; the data directory is
    the compose file's named volume instead."""
    instructions = re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
    volumes = [i for i in instructions if re.match(r"\s*VOLUME\b", i, re.I)]
    assert not volumes, volumes
    compose = yaml.safe_load(COMPOSE_FILES[0].read_text())
    server = compose["services"]["server"]
    data_dir = server["environment"]["GRADSERVE_DATA_DIR"]
    assert f"gradserve-data:{data_dir}" in server["volumes"]
    # the image makes the folder, owned by its user: a fresh named volume copies that
    assert re.search(rf"mkdir -p [^\n]*{data_dir}\b", DOCKERFILE.read_text())
    assert re.search(rf"chown -R gradserve:gradserve [^\n]*{data_dir}\b", DOCKERFILE.read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            assert source in compose["volumes"], f"{name}: {volume} is not a named volume"


@pytest.mark.parametrize(
    "script", ["engine.sh", "prepare-wheelhouse.sh", "stand-in-base.sh", "test-deploy.sh"]
)
def test_deploy_scripts_parse(script: str) -> None:
    path = DOCKER / script
    assert os.access(path, os.X_OK), path
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
