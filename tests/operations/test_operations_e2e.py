"""Running on a network: mutual TLS, tenants from a token file, SIGHUP, metrics, logs.

One extra real server (joined to the session's Ray cluster) serves this module with
everything on: TLS with a client CA, a token file with two tenants and an admin,
/metrics on a free port, and JSON logs. Certificates are made here, at test time.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.certs import CA, Pair
from support.cluster import RayNode, ServerProcess, free_port, start_server

import gradserve
from gradserve import cli
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789abc"}
ROOT = "root-token-0123456789abcdef"
JOB = {"tasks": [{"function": "sum(x * x)", "inputs": {"x": [1.0, 2.0]}, "ops": ["grad"]}]}


@dataclass
class Site:
    server: ServerProcess
    ca: CA
    client: Pair
    token_file: Path
    metrics_url: str

    def tls(self, ca: Path | None = None, client: Pair | None = None) -> gradserve.TLS:
        pair = client or self.client
        return gradserve.TLS(ca=str(ca or self.ca.path), cert=str(pair.cert), key=str(pair.key))

    def connect(self, token: str | None, tls: gradserve.TLS | None = None) -> gradserve.Client:
        return gradserve.Client(self.server.address, token=token, tls=tls or self.tls(), timeout=60)

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.server.output.splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


def _token_file(path: Path, extra: str = "") -> None:
    path.write_text(
        "# tenant token [admin]\n"
        + "".join(f"{t} {tok}\n" for t, tok in TOKENS.items())
        + f"ops {ROOT} admin   # sees every job\n"
        + extra
    )
    path.chmod(0o600)


@pytest.fixture(scope="module")
def site(ray_head: RayNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("ops")
    ca = CA(d, "gradserve-test-ca")
    server_pair = ca.issue("gradserve-server", server=True)
    client_pair = ca.issue("gradserve-client", server=False)
    token_file = d / "tokens"
    _token_file(token_file)
    proc = start_server(
        ray_head,
        extra=[
            "--tls-cert", str(server_pair.cert), "--tls-key", str(server_pair.key),
            "--tls-client-ca", str(ca.path), "--auth-token-file", str(token_file),
            "--metrics-port", str(free_port()), "--log-format", "json",
        ],
    )  # fmt: skip
    try:
        match = re.search(r"metrics on (http://\S+/metrics)", proc.output)
        assert match, proc.output
        yield Site(proc, ca, client_pair, token_file, match.group(1))
    finally:
        proc.stop()


def _grad_works(client: gradserve.Client) -> None:
    np.testing.assert_allclose(client.grad("2 * dot(x, x)", {"x": [1.0, 2.0]}), [4.0, 8.0])


# ------------------------------------------------------------- TLS


def test_mutual_tls_with_the_right_ca_and_a_client_certificate(site: Site) -> None:
    assert "mutual TLS, tokens for 3 tenants" in site.server.output
    with site.connect(TOKENS["alice"]) as client:
        _grad_works(client)


def test_a_server_certificate_from_another_ca_is_refused(site: Site, tmp_path: Path) -> None:
    other = CA(tmp_path, "someone-else")
    with (
        site.connect(TOKENS["alice"], site.tls(ca=other.path)) as client,
        pytest.raises(gradserve.UnavailableError),
    ):
        client.grad("sum(x)", {"x": [1.0]}, timeout=10)


def test_mutual_tls_refuses_a_client_without_a_certificate(site: Site, tmp_path: Path) -> None:
    no_cert = gradserve.TLS(ca=str(site.ca.path))
    with site.connect(TOKENS["alice"], no_cert) as client, pytest.raises(gradserve.GradserveError):
        client.grad("sum(x)", {"x": [1.0]}, timeout=10)
    # a certificate that another CA signed is no better
    stranger = CA(tmp_path, "stranger").issue("mallory", server=False)
    with (
        site.connect(TOKENS["alice"], site.tls(client=stranger)) as client,
        pytest.raises(gradserve.GradserveError),
    ):
        client.grad("sum(x)", {"x": [1.0]}, timeout=10)


def test_plaintext_is_refused(site: Site) -> None:
    with grpc.insecure_channel(site.server.address) as channel:
        stub = pb_grpc.GradientServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------- tokens and tenants


def test_tenants_see_only_their_own_jobs_and_an_admin_sees_all(site: Site) -> None:
    with (
        site.connect(TOKENS["alice"]) as alice,
        site.connect(TOKENS["bob"]) as bob,
        site.connect(ROOT) as root,
    ):
        job = alice.submit(JOB, idempotency_key="nightly")
        assert job.wait(timeout=60).state == "succeeded"
        theirs = bob.submit(JOB, idempotency_key="nightly")  # the same key is bob's own
        assert theirs.id != job.id
        for attempt in (
            lambda: bob.job(job.id).status(),
            lambda: bob.job(job.id).cancel(),
            lambda: list(bob.job(job.id).results()),
            lambda: bob.job(job.id).wait(timeout=10),
            lambda: bob.job(job.id).delete(),
        ):
            with pytest.raises(gradserve.NotFoundError, match=f"no job '{job.id}'"):
                attempt()
        assert job.id in {s.id for s in alice.jobs()}
        assert job.id not in {s.id for s in bob.jobs()}
        assert theirs.id not in {s.id for s in alice.jobs()}
        assert {job.id, theirs.id} <= {s.id for s in root.jobs()}
        assert root.job(job.id).status().state == "succeeded"
        results = list(alice.job(job.id).results())
        np.testing.assert_allclose(results[0].outputs["grad"], [2.0, 4.0])


def test_missing_unknown_and_doubled_tokens_are_refused(site: Site) -> None:
    for token in (None, "not-a-token-of-anyone"):
        with site.connect(token) as client, pytest.raises(gradserve.UnauthenticatedError):
            client.server_info()
    creds = site.tls().credentials()
    with grpc.secure_channel(site.server.address, creds) as channel:
        stub = pb_grpc.GradientServiceStub(channel)
        doubled = (
            ("authorization", f"Bearer {TOKENS['alice']}"),
            ("authorization", f"Bearer {TOKENS['bob']}"),
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=doubled, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "several authorization headers" in (info.value.details() or "")


def test_sighup_reloads_the_token_file(site: Site) -> None:
    carol = "carol-token-0123456789xyz"
    with site.connect(carol) as client, pytest.raises(gradserve.UnauthenticatedError):
        client.server_info()
    _token_file(site.token_file, f"carol {carol}\n")
    site.server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    with site.connect(carol) as client:
        while True:
            try:
                client.server_info()
                break
            except gradserve.UnauthenticatedError:
                assert time.monotonic() < deadline, "the new token never worked"
                time.sleep(0.2)
    # a broken file keeps the tokens in force
    site.token_file.write_text("carol\n")
    site.server.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    with site.connect(carol) as client:
        client.server_info()
    assert "token file not reloaded" in site.server.output
    _token_file(site.token_file)


# ------------------------------------------------------------- metrics and logs


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return values


def _sum(
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in values.items() if n == name and want <= set(lab))


def test_metrics_scrape_moves_with_calls(site: Site) -> None:
    before = _scrape(site.metrics_url)
    with site.connect(TOKENS["alice"]) as client:
        _grad_works(client)
        _grad_works(client)
        assert client.check("sum(sin(x))", {"x": [0.1, 0.2]}).passed
        with pytest.raises(gradserve.InvalidArgumentError):
            client.value("sum(x", {"x": [1.0]})
    after = _scrape(site.metrics_url)

    def moved(name: str, **labels: str) -> float:
        return _sum(after, name, **labels) - _sum(before, name, **labels)

    ok_grads = {"rpc": "Compute", "op": "grad", "status": "OK"}
    assert moved("gradserve_requests_total", **ok_grads) == 2
    assert moved("gradserve_request_duration_seconds_count", **ok_grads) == 2
    assert moved("gradserve_requests_total", rpc="Compute", status="INVALID_ARGUMENT") == 1
    assert moved("gradserve_check_verdicts_total", verdict="passed") == 1
    # each grad and the check ran on a worker (a chunk) or in the server's fast lane
    fast = moved("gradserve_fast_lane_calls_total", tenant="alice")
    assert 0 <= fast <= 3
    assert moved("gradserve_chunks_dispatched_total", tenant="alice") >= 3 - fast
    assert moved("gradserve_queue_wait_seconds_count", tenant="alice") >= 3 - fast
    assert moved("gradserve_received_bytes_total", rpc="Compute") > 0
    assert moved("gradserve_sent_bytes_total", rpc="Compute") > 0
    assert _sum(after, "gradserve_workers", state="alive") == 2
    # both on this host: each reached by its direct channel (worker_channel's default)
    assert _sum(after, "gradserve_workers", state="channel") == 2
    assert _sum(after, "gradserve_jobs", state="succeeded") >= 1
    assert "gradserve_workers_replaced_total" in {n for n, _ in after}
    assert all(name.startswith("gradserve_") for name, _ in after)


def test_a_request_id_is_in_the_error_and_in_the_servers_log_line(site: Site) -> None:
    with site.connect(TOKENS["bob"]) as client, pytest.raises(gradserve.InvalidSpecError) as info:
        client.grad("sum(x * )", {"x": [1.0]})
    request_id = info.value.request_id
    assert request_id and re.fullmatch(r"[0-9a-f]{16}", request_id)
    deadline = time.monotonic() + 10
    while not (lines := [r for r in site.log_lines() if r.get("request_id") == request_id]):
        assert time.monotonic() < deadline, "no log line for the call"
        time.sleep(0.1)
    (line,) = lines
    assert line["tenant"] == "bob" and line["rpc"] == "Compute" and line["op"] == "grad"
    assert line["status"] == "INVALID_ARGUMENT" and isinstance(line["ms"], float)
    assert line["message"] == "request" and line["level"] == "INFO"
    ok = [r for r in site.log_lines() if r.get("status") == "OK" and r.get("rpc") == "Compute"]
    assert ok and {"points", "chunks"} <= set(ok[-1])
    assert "Traceback" not in site.server.output  # client errors log no tracebacks


# ------------------------------------------------------------- the CLI over mutual TLS


def test_cli_over_mutual_tls_runs_vjp_jvp_and_hvp(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    # in-process: the same main() the console script runs, without an interpreter start each
    def gs(*args: str) -> tuple[int, str, str]:
        code = cli.main(
            ["--address", site.server.address, "--token", TOKENS["alice"],
             "--tls-ca", str(site.ca.path), "--tls-cert", str(site.client.cert),
             "--tls-key", str(site.client.key), *args]
        )  # fmt: skip
        out = capsys.readouterr()
        return code, out.out, out.err

    def printed(*args: str) -> np.ndarray:
        code, out, err = gs(*args)
        assert code == 0, err
        return np.fromstring(out.strip(" []\n"), sep=" ")

    f = "sin(x) * 3"  # J = diag(3 cos x)
    x = [0.5, 1.0]
    got = printed("vjp", f, "-i", "x=[0.5, 1.0]", "--cotangent", "[1, 2]")
    np.testing.assert_allclose(got, 3 * np.cos(x) * [1, 2], rtol=1e-5)  # 6 decimals printed
    got = printed("jvp", f, "-i", "x=[0.5, 1.0]", "--tangent", "[2, 1]")
    np.testing.assert_allclose(got, 3 * np.cos(x) * [2, 1], rtol=1e-5)
    # H of sum(x^3) is diag(6x)
    got = printed("hvp", "sum(x * x * x)", "-i", "x=[0.5, 1.0]", "--vector", "[1, 1]")
    np.testing.assert_allclose(got, 6 * np.array(x), rtol=1e-5)
    code, _, err = gs("--token", "nope-nope-nope-nope", "grad", "sum(x)", "-i", "x=[1]")
    assert code == 3 and "UNAUTHENTICATED" in err
    assert re.search(r"\(request [0-9a-f]{16}\)", err)


def test_async_client_over_mutual_tls(site: Site) -> None:
    async def run() -> None:
        async with gradserve.AsyncClient(
            site.server.address, token=TOKENS["bob"], tls=site.tls(), timeout=60
        ) as client:
            grad = await client.grad("2 * dot(x, x)", {"x": [1.0, 2.0]})
            np.testing.assert_allclose(grad, [4.0, 8.0])
            mine = [s.id for s in await client.jobs()]
        with site.connect(TOKENS["bob"]) as sync:
            assert mine == [s.id for s in sync.jobs()]

    asyncio.run(run())


# ------------------------------------------------------------- the container's health check


def test_the_container_healthcheck_speaks_mutual_tls_from_the_servers_variables(
    site: Site,
) -> None:
    # support.entrypoints puts docker/ on the path first
    from support.entrypoints import health_check  # noqa: I001

    from healthcheck import tls_from_env

    env = {
        "GRADSERVE_TLS_CERT": "/run/secrets/server.crt",
        "GRADSERVE_TLS_CLIENT_CA": str(site.ca.path),
        "GRADSERVE_HEALTHCHECK_TLS_CA": str(site.ca.path),
        "GRADSERVE_HEALTHCHECK_TLS_CERT": str(site.client.cert),
        "GRADSERVE_HEALTHCHECK_TLS_KEY": str(site.client.key),
    }
    tls = tls_from_env(env)
    assert tls is not None and tls.cert == site.client.cert
    assert health_check(site.server.address, timeout=10, tls=tls) == "SERVING"
    with pytest.raises(grpc.RpcError):  # plaintext, as it always spoke, finds no server
        health_check(site.server.address, timeout=5)
    assert tls_from_env({}) is None
