"""The `gradserve` command line against the real server, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradserve.cli import UsageError, parse_value


def gs(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gradserve.cli", "--address", address, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_grad_prints_the_array(address: str) -> None:
    out = gs(address, "grad", "2 * dot(x, x)", "--input", "x=[0, 1, 2, 3]")
    assert out.returncode == 0, out.stderr
    assert np.allclose(np.fromstring(out.stdout.strip(" []\n"), sep=" "), [0, 4, 8, 12])


def test_value_over_a_linspace_batch(address: str) -> None:
    out = gs(address, "value", "sin(x)", "--input", "x=linspace(0, 1, 3)", "--batched")
    assert out.returncode == 0, out.stderr
    assert np.allclose(np.fromstring(out.stdout.strip(" []\n"), sep=" "), np.sin([0, 0.5, 1]))


def test_hessian_from_a_npy_file(address: str, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([1.0, 2.0]))
    out = gs(address, "hessian", "2 * dot(x, x)", "--input", f"x={tmp_path / 'x.npy'}")
    assert out.returncode == 0, out.stderr
    assert "4." in out.stdout and "0." in out.stdout


def test_several_inputs_print_by_name(address: str) -> None:
    out = gs(address, "grad", "dot(x, y)", "-i", "x=[1, 2]", "-i", "y=[3, 4]")
    assert out.returncode == 0, out.stderr
    assert "x:" in out.stdout and "y:" in out.stdout


def test_check_exit_codes_for_ci(address: str) -> None:
    ok = gs(address, "check", "2 * dot(x, x)", "-i", "x=[1, 2]", "--grad", "4 * x")
    bad = gs(address, "check", "2 * dot(x, x)", "-i", "x=[1, 2]", "--grad", "3 * x")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert bad.returncode == 1
    assert "claimed" in bad.stdout.lower() or "fail" in bad.stdout.lower()


def test_spec_error_is_shown_with_its_position(address: str) -> None:
    out = gs(address, "value", "sin(x", "-i", "x=[1]")
    assert out.returncode == 2
    assert "line 1" in out.stderr


def test_unreachable_server_is_a_clear_error() -> None:
    out = gs("127.0.0.1:1", "--timeout", "2", "value", "x", "-i", "x=[1]")
    assert out.returncode == 3
    assert "UNAVAILABLE" in out.stderr or "DEADLINE" in out.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[1, 2]", [1.0, 2.0]), ("3", 3.0), ("arange(0, 1, 0.5)", [0.0, 0.5])],
)
def test_parse_value(text: str, expected: object) -> None:
    np.testing.assert_allclose(parse_value(text), expected)


@pytest.mark.parametrize("text", ["linspace(0, 1)", "nope", "missing.npy", "arange(a, b)"])
def test_parse_value_errors_say_what_to_write(text: str) -> None:
    with pytest.raises(UsageError):
        parse_value(text)
