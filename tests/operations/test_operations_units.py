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
from gradserve_server.config import (
    build_parser,
    non_negative_int,
    parse_config,
    parse_duration,
)
from gradserve_server.jobs.rows import NewTask
from gradserve_server.jobs.store import JobStore
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
        ("Default tok-0123456789abcdef\n", "line 1: the tenant name 'default' is reserved"),
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
    if action.type in (int, non_negative_int):
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


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("GRADSERVE_JOB_TTL", "forever", "not a duration"),
        ("GRADSERVE_DEVICE", "tpu", "choose from cpu, cuda, auto"),
        ("GRADSERVE_PORT", "50051x", "invalid int value"),
        ("GRADSERVE_CHUNK_TIMEOUT", "soon", "invalid float value"),
        ("GRADSERVE_MAX_REPLY_BYTES", "-1", "must be 0 (no limit) or more"),
        ("GRADSERVE_LOG_FORMAT", "xml", "choose from text, json"),
    ],
)
def test_a_bad_variable_is_a_clean_usage_error_that_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str,
    value: str, says: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as info:
        parse_config([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"gradserve serve: error: ${variable}={value!r}" in err and says in err, err
    with pytest.raises(SystemExit):  # a negative budget is refused as a flag too
        parse_config(["--max-stream-bytes", "-5"])


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
    assert "NO AUTHENTICATION" in out.stderr and "--insecure" in out.stderr
    assert "serving on" not in out.stdout


def test_the_guard_lets_loopback_authenticated_and_insecure_binds_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = network.guard_exposure
    for host in ("127.0.0.1", "localhost", "::1"):
        guard(parse_config(["--host", host]), tls=False, mutual=False, tokens=False)
    exposed = parse_config(["--host", "0.0.0.0"])
    with caplog.at_level(logging.WARNING):
        guard(exposed, tls=True, mutual=True, tokens=False)
        guard(exposed, tls=True, mutual=False, tokens=True)
    assert not caplog.text
    # TLS alone authenticates no one: every caller would be an anonymous admin
    with pytest.raises(network.SetupError, match="NO AUTHENTICATION"):
        guard(exposed, tls=True, mutual=False, tokens=False)
    with pytest.raises(network.SetupError):
        guard(parse_config(["--host", "10.1.2.3"]), tls=False, mutual=False, tokens=False)
    with caplog.at_level(logging.WARNING):
        insecure = parse_config(["--host", "0.0.0.0", "--insecure"])
        guard(insecure, tls=False, mutual=False, tokens=False)
    assert "NO AUTHENTICATION" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # tokens that anyone on the path can read
        guard(exposed, tls=False, mutual=False, tokens=True)
    assert "WITHOUT TLS" in caplog.text and "clear text" in caplog.text


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
    assert network.serve_metrics(parse_config([])) is None  # off by default


class _LoopOnly(dict):  # type: ignore[type-arg]
    """The pool's waiters, which only the event loop's thread may read."""

    def __init__(self, owner: int, contents: dict) -> None:  # type: ignore[type-arg]
        super().__init__(contents)
        self.owner = owner

    def _check(self) -> None:
        import threading

        assert threading.get_ident() == self.owner, "read from another thread"

    def items(self):  # type: ignore[no-untyped-def]
        self._check()
        return super().items()

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._check()
        return super().__iter__()


def test_metrics_scrapes_never_read_the_pool_and_a_second_server_starts_clean() -> None:
    import threading
    import urllib.request

    port = free_port()

    async def run() -> list[str]:
        pages = []
        for _ in range(2):  # a second server in the same process: no duplicate series
            endpoint = network.serve_metrics(parse_config(["--metrics-port", str(port)]))
            assert endpoint is not None and endpoint.port == port
            pool = ActorPool(_Handle, 1)
            await pool.start()
            endpoint.watch(pool, None, every_s=0.01)
            held = await pool.acquire(pool_key("alice", "c"))
            waiter = asyncio.ensure_future(pool.acquire(pool_key("bob", "c")))
            await asyncio.sleep(0.05)  # the loop copies the gauges
            waiters = pool._waiters
            pool._waiters = _LoopOnly(threading.get_ident(), waiters)  # type: ignore[assignment]
            url = f"http://127.0.0.1:{port}/metrics"

            def scrape(url: str = url) -> str:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    return str(reply.read().decode())

            pages.append(await asyncio.to_thread(scrape))
            pool._waiters = waiters
            waiter.cancel()
            pool.release(held)
            thread = endpoint._thread
            endpoint.close()
            assert not thread.is_alive()
        return pages

    for page in asyncio.run(run()):
        assert 'gradserve_queue_depth{tenant="bob"} 1.0' in page, page
        assert 'gradserve_workers{state="alive"} 1.0' in page


# ------------------------------------------------------------- the tenant check


def test_the_tenant_check_leaves_the_event_loop_free_and_clips_the_id(tmp_path: Path) -> None:
    import threading
    import time
    from types import SimpleNamespace

    from gradserve_server import calls
    from gradserve_server.errors import ServiceError
    from gradserve_server.servicer import GradientServicer

    store = JobStore(tmp_path)
    service = SimpleNamespace(config=SimpleNamespace(stream_stall_s=1.0))
    servicer = GradientServicer(service, SimpleNamespace(store=store))  # type: ignore[arg-type]
    long_id = "j" * 10_000
    store.create_job(long_id, "", None, "h", [NewTask("t", b"", 1)], tenant="alice")

    def busy_store() -> None:  # as a 100,000-task insert holds the store's lock
        with store._lock:
            time.sleep(0.4)

    async def run() -> tuple[int, calls.Call, str]:
        call = calls.Call("GetJob", identity=Identity("bob"))
        calls.begin(call)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        holder = threading.Thread(target=busy_store)
        holder.start()
        time.sleep(0.05)
        try:
            with pytest.raises(ServiceError) as info:
                await servicer._owned(long_id)  # alice's: bob is told there is no such job
        finally:
            ticker.cancel()
            holder.join()
        return ticks, call, str(info.value)

    try:
        ticks, call, refused = asyncio.run(run())
    finally:
        store.close()
    assert ticks >= 10, "the event loop stood still while the store was busy"
    assert call.notes["job"].startswith("j" * 200) and len(call.notes["job"]) < 300
    assert "no job 'jjj" in refused and len(refused) < 400


# ------------------------------------------------------------- shutdown order


def test_shutdown_drains_calls_before_it_closes_the_job_store(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from gradserve_server.jobs import JobManager
    from gradserve_server.main import shut_down

    jobs = JobManager(parse_config(["--data-dir", str(tmp_path)]), SimpleNamespace())  # type: ignore[arg-type]
    seen: list[object] = []

    class Draining:
        """A server with one call in flight that reads the store as it finishes."""

        async def stop(self, grace: float) -> None:
            await asyncio.sleep(0.05)
            seen.append(jobs.store.job_tenant("job-x"))

    asyncio.run(shut_down(Draining(), jobs, drain_s=1.0))
    assert seen == [None]  # the store answered the draining call
    with pytest.raises(sqlite3.ProgrammingError):  # and is closed once it is done
        jobs.store.job_tenant("job-x")


def test_a_caller_nobody_identified_has_no_rights() -> None:
    from gradserve_server import calls
    from gradserve_server.auth import ANONYMOUS

    async def inside() -> tuple[Identity, Identity]:
        calls.begin(calls.Call("GetJob"))  # begun, not yet admitted by the interceptor
        return calls.identity(), calls.current().identity  # type: ignore[union-attr]

    outside = asyncio.run(asyncio.to_thread(calls.identity))  # a context with no call
    for who in (outside, *asyncio.run(inside())):
        assert not who.admin and who.tenant != ANONYMOUS.tenant


def test_a_refused_callers_request_is_never_parsed(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import grpc

    from gradserve_server.interceptor import CallInterceptor

    path = tmp_path / "tokens"
    path.write_text("alice alice-token-0123456789\n")
    path.chmod(0o600)
    parsed: list[bytes] = []

    def parse(data: bytes) -> bytes:
        parsed.append(data)
        return data

    async def handle(request: bytes, context: object) -> bytes:
        raise AssertionError("a refused call reached its handler")

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=parse)

    async def intercepted(metadata: tuple[tuple[str, str], ...]) -> grpc.RpcMethodHandler:
        details = SimpleNamespace(method="/gradserve.v1.GradientService/Compute",
                                  invocation_metadata=metadata)  # fmt: skip
        return await CallInterceptor(Authenticator(path)).intercept_service(
            continuation,
            details,  # type: ignore[arg-type]
        )

    for refused in ((), (("authorization", "Bearer nope-nope-nope-nope"),)):
        handler = asyncio.run(intercepted(refused))
        handler.request_deserializer(b"\x0a" * 1000)
    assert parsed == []
    handler = asyncio.run(intercepted((("authorization", "Bearer alice-token-0123456789"),)))
    handler.request_deserializer(b"ok")
    assert parsed == [b"ok"]
