"""Operations without a cluster: token files, the serve flags, the exposure guard,
TLS settings, fair turns by tenant, the job store's tenants, log lines, progress."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster import free_port

from gradserve.cli import build_parser as cli_parser
from gradserve.progress import ProgressBar
from gradserve.results import JobStatus
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import network
from gradserve_server.auth import Authenticator, Identity, TokenFileError, parse_token_file
from gradserve_server.config import build_parser, parse_config, parse_duration
from gradserve_server.jobs.store import JobStore, NewTask
from gradserve_server.logs import JsonFormatter, TextFormatter
from gradserve_server.pool import ActorPool, pool_key

# ------------------------------------------------------------- token files


def test_token_file_lines_comments_and_admins() -> None:
    text = (
        "# who may call\n"
        "\n"
        "alice  alice-token-0123456789   # the team's CI\n"
        "alice  alice-rotated-0123456789\n"
        "ops    ops-token-0123456789abc admin\n"
    )
    entries = dict(parse_token_file(text))
    assert entries == {
        "alice-token-0123456789": Identity("alice"),
        "alice-rotated-0123456789": Identity("alice"),
        "ops-token-0123456789abc": Identity("ops", admin=True),
    }


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("alice\n", "line 1: write 'TENANT TOKEN'"),
        ("# ok\nalice tok-0123456789abcdef root\n", "line 2: write 'TENANT TOKEN' or"),
        ("a/b tok-0123456789abcdef\n", "tenant 'a/b' must be"),
        ("a tok-0123456789abcdef\nb tok-0123456789abcdef\n", "also 'a''s"),
    ],
)
def test_token_file_mistakes_name_the_line(text: str, says: str) -> None:
    with pytest.raises(TokenFileError, match=re.escape(says)):
        parse_token_file(text, "tokens")


def test_identify_refuses_doubled_malformed_and_unknown_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("alice alice-token-0123456789\n")
    path.chmod(0o600)
    auth = Authenticator(path, shared_token="shared-token-0123456789")
    assert auth.identify(["Bearer alice-token-0123456789"]) == Identity("alice")
    assert auth.identify([b"bearer alice-token-0123456789"]) == Identity("alice")
    # the one shared token is the default tenant's, with every right it always had
    assert auth.identify(["Bearer shared-token-0123456789"]) == Identity("", admin=True)
    assert "several" in str(auth.identify(["Bearer a", "Bearer alice-token-0123456789"]))
    assert "no token" in str(auth.identify([]))
    assert "Bearer <token>" in str(auth.identify(["alice-token-0123456789"]))
    assert auth.identify(["Bearer alice-token-012345678"]) == "unknown token"
    # a reload that fails keeps what was in force
    path.write_text("broken\n")
    assert auth.reload() is False
    assert auth.identify(["Bearer alice-token-0123456789"]) == Identity("alice")
    path.write_text("bob bob-token-0123456789abc\n")
    assert auth.reload() is True
    assert auth.identify(["Bearer alice-token-0123456789"]) == "unknown token"


# ------------------------------------------------------------- serve flags


def _sample(action: argparse.Action) -> tuple[str, object]:
    """A valid value for the flag's variable, and what parsing should make of it."""
    if action.choices:
        choice = list(action.choices)[-1]
        return str(choice), choice
    if action.nargs == 0:  # store_true
        return "1", True
    if action.type is int:
        return "7", 7
    if action.type is float:
        return "7.5", 7.5
    if action.type is parse_duration:
        return "2h", 7200.0
    return "some-value", "some-value"


def test_every_serve_flag_is_documented_and_its_variable_is_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        assert action.help, f"{flag} has no help text"
        named = re.search(r"\$(GRADSERVE_[A-Z0-9_]+)", action.help)
        assert named, f"{flag}: its help names no $GRADSERVE_* variable"
        text, expected = _sample(action)
        monkeypatch.setenv(named.group(1), text)
        assert getattr(build_parser().parse_args([]), action.dest) == expected, flag
        monkeypatch.delenv(named.group(1))


def test_the_cli_has_a_command_for_every_op() -> None:
    sub = next(a for a in cli_parser()._actions if isinstance(a, argparse._SubParsersAction))
    ops = {name.removeprefix("OP_").lower() for name, _ in pb.Op.items()} - {"unspecified"}
    assert ops <= set(sub.choices), ops - set(sub.choices)


# ------------------------------------------------------------- exposure and TLS settings


def test_an_exposed_bind_without_tls_or_tokens_is_refused_before_ray_starts(
    tmp_path: Path,
) -> None:
    cmd = [sys.executable, "-m", "gradserve_server.main", "--host", "0.0.0.0",
           "--port", str(free_port()), "--data-dir", str(tmp_path)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "NO TLS AND NO TOKENS" in out.stderr and "--insecure" in out.stderr
    assert "serving on" not in out.stdout


def test_the_guard_lets_loopback_protected_and_insecure_binds_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        network.guard_exposure(parse_config(["--host", host]), tls=False, tokens=False)
    exposed = parse_config(["--host", "0.0.0.0"])
    network.guard_exposure(exposed, tls=True, tokens=False)
    network.guard_exposure(exposed, tls=False, tokens=True)
    with pytest.raises(network.SetupError):
        network.guard_exposure(parse_config(["--host", "10.1.2.3"]), tls=False, tokens=False)
    with caplog.at_level(logging.WARNING):
        insecure = parse_config(["--host", "0.0.0.0", "--insecure"])
        network.guard_exposure(insecure, tls=False, tokens=False)
    assert "NO TLS AND NO TOKENS" in caplog.text


def test_tls_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    pem = tmp_path / "not.pem"
    pem.write_text("hello")
    for argv, says in (
        (["--tls-cert", str(pem)], "both --tls-cert and --tls-key"),
        (["--tls-client-ca", str(pem)], "needs --tls-cert"),
        (["--tls-cert", str(pem), "--tls-key", str(tmp_path / "gone")], "cannot read"),
        (["--tls-cert", str(pem), "--tls-key", str(pem)], "is not a PEM certificate"),
    ):
        with pytest.raises(network.SetupError, match=says):
            network.server_credentials(parse_config(argv))


# ------------------------------------------------------------- fair turns by tenant


class _Handle:
    class _Info:
        @staticmethod
        def remote() -> asyncio.Future[dict[str, str]]:
            future = asyncio.get_running_loop().create_future()
            future.set_result({"name": "w"})
            return future

    info = _Info()


def test_tenants_take_turns_before_their_streams_do() -> None:
    async def run() -> list[str]:
        pool = ActorPool(_Handle, 1)
        await pool.start()
        waits: list[tuple[str, float]] = []
        pool.on_acquire = lambda key, s: waits.append((key, s))
        held = await pool.acquire(pool_key("alice", "call-0"))
        order: list[str] = []

        async def want(key: str) -> None:
            worker = await pool.acquire(key)
            order.append(key)
            pool.release(worker)

        # alice queues four jobs' chunks, then bob one call
        keys = [pool_key("alice", f"job-{i}") for i in range(4)] * 2 + [pool_key("bob", "c")]
        waiters = []
        for key in keys:
            waiters.append(asyncio.ensure_future(want(key)))
            await asyncio.sleep(0)
        assert pool.waiting_by_tenant() == {"alice": 8, "bob": 1}
        pool.release(held)
        await asyncio.gather(*waiters)
        assert len(waits) == 10 and waits[0] == (pool_key("alice", "call-0"), 0.0)
        return order

    order = asyncio.run(run())
    assert order[1] == "bob/c"  # one tenant's many jobs do not push another back
    assert order[0] == "alice/job-0"
    # within alice, her jobs take turns: job-0..3, then job-0..3 again
    alice = [k for k in order if k.startswith("alice/")]
    assert alice == [f"alice/job-{i}" for i in range(4)] * 2


# ------------------------------------------------------------- the job store's tenants


def test_a_database_from_before_tenants_gets_the_column_and_keeps_its_jobs(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " name TEXT NOT NULL, state TEXT NOT NULL, idempotency_key TEXT UNIQUE,"
        " spec_hash TEXT NOT NULL, created_at REAL NOT NULL,"
        " started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0);"
        "INSERT INTO jobs (id, name, state, idempotency_key, spec_hash, created_at)"
        " VALUES ('job-old', '', 'succeeded', 'k', 'h', 1.0);"
        "PRAGMA user_version=1;"
    )
    db.close()
    store = JobStore(tmp_path)
    try:
        assert store.job_tenant("job-old") == ""  # the default tenant's, as every job was
        task = [NewTask("t", b"", 1)]
        assert store.create_job("job-a", "", "k", "h2", task, tenant="alice") == ("job-a", True)
        assert store.create_job("job-a2", "", "k", "h2", task, tenant="alice")[0] == "job-a"
        assert store.job_tenant("job-a") == "alice" and store.job_tenant("nope") is None
        row = store.get_job("job-a")
        assert row is not None and row.idempotency_key == "k"  # shown unscoped
        assert [r.id for r in store.list_jobs([], None, 10, tenant="alice")] == ["job-a"]
        assert [r.id for r in store.list_jobs([], None, 10, tenant="")] == ["job-old"]
        assert {r.id for r in store.list_jobs([], None, 10)} == {"job-a", "job-old"}
        assert store.count_by_state() == {"succeeded": 1, "queued": 1}
    finally:
        store.close()


# ------------------------------------------------------------- logs and progress


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord("gradserve.requests", logging.INFO, "", 0, "request", (), None)
    record.fields = fields
    return record


def test_log_lines_carry_their_fields_as_json_or_key_value() -> None:
    record = _record(request_id="abc", tenant="alice", status="OK", ms=1.5, error="a b")
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "request" and line["tenant"] == "alice" and line["ms"] == 1.5
    text = TextFormatter().format(record)
    assert text.endswith('request request_id=abc tenant=alice status=OK ms=1.5 error="a b"')


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _status(done: int, state: str) -> JobStatus:
    job = pb.Job(id="job-1", state=pb.JobState.Value(f"JOB_STATE_{state.upper()}"),
                 tasks_total=2, tasks_done=done, points_total=10, points_done=5 * done)  # fmt: skip
    return JobStatus._from_proto(job)


def test_progress_is_drawn_on_a_terminal_and_silent_elsewhere() -> None:
    for stream, drawn in ((_Terminal(), True), (io.StringIO(), False)):
        bar = ProgressBar(stream)
        bar.update(_status(1, "running"))
        bar.update(_status(2, "succeeded"))
        out = stream.getvalue()
        assert ("10/10" in out and "2/2 tasks, succeeded" in out) is drawn, out
        assert bool(out) is drawn


def test_an_internal_error_quotes_the_calls_request_id() -> None:
    from gradserve_server import calls
    from gradserve_server.errors import to_status

    async def failing_call() -> tuple[str, str]:
        call = calls.Call("Compute")
        calls.begin(call)
        return call.request_id, to_status(RuntimeError("a bug")).message

    request_id, message = asyncio.run(failing_call())
    assert message == f"internal error {request_id}; see the server log"


def test_a_metrics_port_in_use_is_refused_before_ray_starts() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = parse_config(["--metrics-port", str(port)])
        with pytest.raises(network.SetupError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            network.serve_metrics(config)
    assert network.serve_metrics(parse_config([])) == 0  # off by default
