"""The contract's stubs are current, and the SDK installs without torch or ray."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generated(tmp_path: Path) -> dict[str, str]:
    from grpc_tools import protoc

    args = [
        "protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
        str(ROOT / "proto/gradserve/v1/gradserve.proto"),
    ]  # fmt: skip
    assert protoc.main(args) == 0
    return {p.name: p.read_text() for p in (tmp_path / "gradserve/v1").iterdir()}


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    fresh = _generated(tmp_path)
    committed = ROOT / "client/gradserve/v1"
    assert fresh, "protoc generated nothing"
    for name, text in fresh.items():
        assert (committed / name).read_text() == text, f"{name} drifted: run `make proto`"


@pytest.mark.timeout(600)
def test_client_installs_without_torch_or_ray(tmp_path: Path) -> None:
    # a copy, so the build leaves nothing in the checkout
    source = shutil.copytree(
        ROOT / "client", tmp_path / "client", ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True
    ).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert "torch" not in names and "ray" not in names, names
    check = subprocess.run(
        [str(py), "-c", "import gradserve, sys; gradserve.Client('127.0.0.1:1'); "
         "assert 'torch' not in sys.modules and 'ray' not in sys.modules"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert sys.executable != str(py)
