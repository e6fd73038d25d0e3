"""The tests' Ray head launcher tries again on a fresh port when `ray start` fails
(a free port chosen and released can be taken before Ray binds it), and says what
Ray printed when it gives up. `ray start` itself is stood in for: a real failing
start takes ~40 s to give up, and the session's cluster shows the real one works."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from support import cluster


def fake_ray(monkeypatch: pytest.MonkeyPatch, codes: list[int]) -> list[list[str]]:
    """`ray start` answering with ``codes`` in turn; returns the commands it got."""
    calls: list[list[str]] = []
    answers: Iterator[int] = iter(codes)

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        code = next(answers)
        return subprocess.CompletedProcess(cmd, code, "", "" if code == 0 else "port taken")

    monkeypatch.setattr(cluster.subprocess, "run", run)
    ports = iter(range(40001, 40010))
    monkeypatch.setattr(cluster, "free_port", lambda: next(ports))
    return calls


def test_a_failed_start_is_tried_again_on_a_fresh_port(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_ray(monkeypatch, [1, 0])
    node = cluster.start_ray_head()
    assert [c[:3] for c in calls] == [[cluster.RAY, "start", "--head"]] * 2
    assert "--port=40001" in calls[0] and "--port=40002" in calls[1]
    assert node.address == "127.0.0.1:40002"
    node.stop()


def test_giving_up_says_what_ray_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_ray(monkeypatch, [1, 1])
    with pytest.raises(RuntimeError, match=r"failed 2 times; the last said:\n\n?port taken"):
        cluster.start_ray_head(tries=2)
    assert len(calls) == 2
