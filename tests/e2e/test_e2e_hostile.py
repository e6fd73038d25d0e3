"""The hostile catalogue of the function language, sent through the SDK to the real
server: each gets the exact error class, the server keeps answering valid calls,
and no file or process appears."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from support.cluster import RayNode, ServerProcess

import gradserve
from gradserve_workers import lang

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lang"))
from hostile_catalogue import CATALOGUE

EXPECTED = {
    "SpecError": gradserve.InvalidSpecError,
    "LimitExceededError": gradserve.ResourceExhaustedError,
    "FunctionRuntimeError": gradserve.InvalidArgumentError,
}


def _inputs_for(source: str) -> dict[str, np.ndarray]:
    """Every input the function declares gets a float64 vector of shape (3,).

    The names come from the language's own torch-free validator; where it refuses
    the source the server will too, before looking at the inputs.
    """
    try:
        names = lang.parse_and_validate(source).inputs
    except lang.LangError:
        names = ("x",)
    return {name: np.array([0.5, -1.0, 2.0]) for name in names}


def _process_tree(pid: int) -> set[int]:
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


def _files(root: str) -> set[str]:
    return {os.path.join(r, n) for r, _, names in os.walk(root) for n in names}


def _pwned(*roots: str) -> list[str]:
    """Files the catalogue's escape attempts would create ('pwned', 'a'), anywhere
    the server or its Ray workers could write relative paths."""
    hits = []
    for root in roots:
        for name in ("pwned", "a"):
            path = Path(root) / name
            if path.exists():
                hits.append(str(path))
    return hits


@pytest.fixture(scope="module")
def before(server: ServerProcess) -> tuple[set[int], set[str]]:
    return _process_tree(server.proc.pid), _files(server.data_dir)


@pytest.mark.parametrize(("case", "source", "expected"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_hostile_input_is_refused_cleanly(
    client: gradserve.Client, case: str, source: str, expected: str, before: object
) -> None:
    with pytest.raises(gradserve.GradserveError) as info:
        client.value(source, _inputs_for(source), timeout=60)
    err = info.value
    assert isinstance(err, EXPECTED[expected]), f"{case}: {type(err).__name__}: {err}"
    assert err.code != "INTERNAL" and "Traceback" not in str(err)


def test_server_still_serves_and_nothing_was_created(
    client: gradserve.Client,
    server: ServerProcess,
    ray_head: RayNode,
    before: tuple[set[int], set[str]],
) -> None:
    np.testing.assert_allclose(client.grad("2 * dot(x, x)", {"x": [1.0, 2.0]}), [4.0, 8.0])
    procs, files = before
    assert _process_tree(server.proc.pid) - procs == set()
    assert _files(server.data_dir) - files == set()
    worker_dirs = {psutil.Process(p).cwd() for p in _ray_worker_pids(ray_head)}
    assert worker_dirs, "found no Ray worker processes to look at"
    assert _pwned(os.getcwd(), server.data_dir, str(Path.home()), "/tmp", *worker_dirs) == []


def _ray_worker_pids(ray_head: RayNode) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if "default_worker.py" in cmdline and ray_head.temp_dir in cmdline:
            pids.append(proc.pid)
    return pids
