"""Peers: gradserve side by side with what a user would build instead, in one run.

Four sides compute the same two things on the same inputs:

- ``in-process``: ``torch.func`` in this process (no service at all; the floor).
- ``gradserve``: the SDK (``gradserve.Client``) against a real server with W workers.
- ``fastapi``: a plain FastAPI app in one uvicorn process (torch with W threads).
- ``ray-serve``: a Ray Serve deployment (one replica, W CPUs, W torch threads) on a
  Ray of its own, called through Serve's HTTP proxy, which is how clients outside
  the Ray cluster call it (a DeploymentHandle only works from inside the cluster).

The two HTTP peers are called with ``httpx.Client`` (one keep-alive connection each):
the unary call as JSON, the batch as raw float64 bytes both ways (see
``_peer_host.py`` for the routes). The workloads are issue 18's:

1. unary ``grad("dot(x, x)")`` at one point of 10 inputs: p50 and p99 per side, calls
   interleaved in rounds so drift on a busy machine hits every side alike;
2. batched grad of the 10-dimensional Rosenbrock function at 200,000 points:
   points per second (median of the repetitions), sides alternating.

Ratios are against gradserve: for latency ``side / gradserve`` (above 1: slower than
gradserve), for throughput ``side / gradserve`` in points per second (above 1: faster).
Memory is each side's processes after the calls: the sum of RSS (shared pages, such as
torch's libraries and Ray's object store, counted once per process) and of PSS (shared
pages split among the processes sharing them), the larger seen over the rounds. The
in-process side's figure is this benchmark process, which also holds the clients.

Everything runs on 127.0.0.1; every process started here is ended by pid (and the
peers stop by themselves when this process goes away). Needs the packages in
``requirements/bench.txt`` (``make bench`` installs them).

    python benchmarks/peers.py --quick     # smoke run, ~2-3 minutes
    python benchmarks/peers.py             # the full run
    make bench ARGS="--only peers"         # the same inside run_all
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
from _harness import (
    ROOT,
    fmt_rate,
    fmt_time,
    median,
    percentile,
    spread,
    start_server,
    table,
)
from support.cluster import ServerProcess, free_port
from throughput import rosenbrock

import gradserve

HOST = Path(__file__).resolve().parent / "_peer_host.py"
UNARY_SOURCE = "dot(x, x)"
ROSENBROCK_SOURCE = "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)"
UNARY_DIM = 10
BATCH_DIM = 10
BATCH_POINTS = 200_000
SIDES = ("in-process", "gradserve", "fastapi", "ray-serve")


@dataclass
class Peer:
    """A peer's host process; its descendants (Ray's processes) are found by pid."""

    name: str
    proc: subprocess.Popen[str]
    base_url: str
    temp_dir: str | None = None
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM the host (it stops Serve and its Ray), then SIGKILL what is left of
        the processes it had started, each by pid."""
        try:
            family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(True)]
        except psutil.NoSuchProcess:
            family = []
        if self.proc.poll() is None:
            if self.proc.stdin:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            self.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _launch(name: str, kind: str, threads: int) -> Peer:
    port = free_port()
    cmd = [sys.executable, str(HOST), kind, "--port", str(port), "--threads", str(threads)]
    temp_dir = None
    if kind == "serve":
        temp_dir = tempfile.mkdtemp(prefix="gspeer")  # short: Ray's socket paths are bounded
        cmd += ["--temp-dir", temp_dir]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_peer_env(),
    )  # fmt: skip
    peer = Peer(name, proc, f"http://127.0.0.1:{port}", temp_dir)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            peer.lines.append(line)
            if line.strip() == "READY":
                peer.ready.set()

    threading.Thread(target=pump, daemon=True).start()
    return peer


def _peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@contextlib.contextmanager
def running_peers(threads: int, timeout: float = 240.0) -> Iterator[dict[str, Peer]]:
    """Both HTTP peers, started side by side, up and answering; stopped on exit."""
    peers = {"fastapi": _launch("fastapi", "fastapi", threads),
             "ray-serve": _launch("ray-serve", "serve", threads)}  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        for peer in peers.values():
            while not peer.ready.wait(0.2):
                if peer.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{peer.name} did not start:\n{''.join(peer.lines)[-4000:]}")
        yield peers
    finally:
        for peer in peers.values():
            peer.stop()


def memory(pid: int, descendants: bool = True) -> tuple[int, int, int]:
    """(RSS sum, PSS sum, process count) of a process and (unless told not to) all its
    descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if descendants else ())]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    rss = pss = n = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
            n += 1
    return rss, pss, n


Call = Callable[[np.ndarray], np.ndarray]


@dataclass
class Side:
    name: str
    unary: Call
    batch: Call
    pid: int
    tree: bool = True  # its processes: pid and its descendants, or pid alone


def _http_calls(client: httpx.Client) -> tuple[Call, Call]:
    def unary(x: np.ndarray) -> np.ndarray:
        r = client.post("/grad", json={"x": x.tolist()})
        r.raise_for_status()
        return np.asarray(r.json()["grad"], dtype=np.float64)

    def batch(x: np.ndarray) -> np.ndarray:
        r = client.post(
            "/grad_batch", params={"dim": x.shape[1]}, content=x.astype("<f8").tobytes(),
            headers={"content-type": "application/octet-stream"},
        )  # fmt: skip
        r.raise_for_status()
        return np.frombuffer(r.content, dtype="<f8").reshape(x.shape)

    return unary, batch


def _in_process_calls() -> tuple[Call, Call]:
    g = torch.func.grad(lambda t: torch.dot(t, t))
    vg = torch.func.vmap(torch.func.grad(rosenbrock))
    return (lambda x: g(torch.from_numpy(x)).numpy()), (lambda x: vg(torch.from_numpy(x)).numpy())


def _gradserve_calls(client: gradserve.Client) -> tuple[Call, Call]:
    def unary(x: np.ndarray) -> np.ndarray:
        return np.asarray(client.grad(UNARY_SOURCE, x))

    def batch(x: np.ndarray) -> np.ndarray:
        return np.asarray(client.grad(ROSENBROCK_SOURCE, x, batched=True))

    return unary, batch


def _timed_once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(sides: list[Side], quick: bool, threads: int) -> dict[str, Any]:
    """Unary latency and batch throughput of every side, interleaved; raw numbers."""
    rng = np.random.default_rng(0)
    x = np.linspace(-1.0, 1.0, UNARY_DIM)
    points = rng.uniform(-1.5, 1.5, size=(BATCH_POINTS, BATCH_DIM))
    want_batch = sides[0].batch(points)  # the in-process answer
    calls = 100 if quick else 500
    per_round = 20 if quick else 50
    warmup = 10 if quick else 30
    reps = 2 if quick else 5
    out: dict[str, Any] = {s.name: {"unary_s": [], "batch_s": [], "rss": 0, "pss": 0,
                                    "processes": 0} for s in sides}  # fmt: skip

    def note_memory() -> None:
        for s in sides:
            rss, pss, n = memory(s.pid, s.tree)
            row = out[s.name]
            row["rss"], row["pss"] = max(row["rss"], rss), max(row["pss"], pss)
            row["processes"] = max(row["processes"], n)

    for s in sides:  # right answers first, and a warm-up of each path
        got = s.unary(x)
        out[s.name]["unary_agree"] = bool(np.allclose(got, 2 * x, rtol=1e-12, atol=0))
        got = s.batch(points)
        out[s.name]["batch_agree"] = bool(np.allclose(got, want_batch, rtol=1e-9, atol=1e-9))
        for _ in range(warmup):
            s.unary(x)
    note_memory()
    for _ in range(calls // per_round):
        for s in sides:
            out[s.name]["unary_s"] += [_timed_once(lambda: s.unary(x))  # noqa: B023
                                       for _ in range(per_round)]  # fmt: skip
    note_memory()
    for _ in range(reps):
        for s in sides:
            out[s.name]["batch_s"].append(_timed_once(lambda: s.batch(points)))  # noqa: B023
        note_memory()
    base = out["gradserve"]
    for s in sides:
        row = out[s.name]
        row["unary_p50"] = percentile(row["unary_s"], 50)
        row["unary_p99"] = percentile(row["unary_s"], 99)
        row["batch_median_s"] = median(row["batch_s"])
        row["batch_spread"] = spread(row["batch_s"])
        row["pts_per_s"] = BATCH_POINTS / row["batch_median_s"]
    for s in sides:
        row = out[s.name]
        row["unary_p50_vs_gradserve"] = row["unary_p50"] / base["unary_p50"]
        row["unary_p99_vs_gradserve"] = row["unary_p99"] / base["unary_p99"]
        row["pts_per_s_vs_gradserve"] = row["pts_per_s"] / base["pts_per_s"]
    return {
        "load_average": os.getloadavg(),  # the machine's state: quote only quiet runs
        "versions": {pkg: importlib.metadata.version(pkg)
                     for pkg in ("torch", "ray", "fastapi", "uvicorn", "httpx", "grpcio")},
        "unary": {"function": UNARY_SOURCE, "dim": UNARY_DIM, "calls": calls},
        "batch": {"function": ROSENBROCK_SOURCE, "dim": BATCH_DIM, "points": BATCH_POINTS,
                  "reps": reps},
        "threads": threads,
        "sides": out,
    }  # fmt: skip


def run(server: ServerProcess, workers: int, quick: bool) -> dict[str, Any]:
    """Start the peers next to a running gradserve server, measure every side, stop them."""
    torch.set_num_threads(workers)
    print("  starting the peers (FastAPI/uvicorn, Ray Serve) ...", flush=True)
    with (
        running_peers(workers) as peers,
        gradserve.Client(server.address) as gs,
        httpx.Client(base_url=peers["fastapi"].base_url, timeout=120.0) as fa,
        httpx.Client(base_url=peers["ray-serve"].base_url, timeout=120.0) as rs,
    ):
        sides = [
            # this process alone: the servers and peers are its children
            Side("in-process", *_in_process_calls(), pid=os.getpid(), tree=False),
            Side("gradserve", *_gradserve_calls(gs), pid=server.proc.pid),
            Side("fastapi", *_http_calls(fa), pid=peers["fastapi"].proc.pid),
            Side("ray-serve", *_http_calls(rs), pid=peers["ray-serve"].proc.pid),
        ]
        return measure(sides, quick, workers)


def render(r: dict[str, Any]) -> str:
    mib = 1024 * 1024
    rows = []
    for name in SIDES:
        s = r["sides"][name]
        agree = "yes" if s["unary_agree"] and s["batch_agree"] else "NO"
        rows.append([
            name, fmt_time(s["unary_p50"]), fmt_time(s["unary_p99"]),
            f"{s['unary_p50_vs_gradserve']:.2f}", f"{s['unary_p99_vs_gradserve']:.2f}",
            fmt_rate(s["pts_per_s"]), f"{s['pts_per_s_vs_gradserve']:.2f}",
            f"{s['rss'] / mib:.0f}", f"{s['pss'] / mib:.0f}", str(s["processes"]), agree,
        ])  # fmt: skip
    u, b = r["unary"], r["batch"]
    load = ", ".join(f"{x:.1f}" for x in r["load_average"])
    return table(
        f"5. Peers ({r['threads']} workers/threads each): unary grad of {u['function']} "
        f"at {u['dim']} inputs ({u['calls']} calls) and batched grad of Rosenbrock, "
        f"d={b['dim']}, {b['points']:,} points (median of {b['reps']}); ratios are "
        f"side / gradserve; load average {load}",
        ["side", "p50", "p99", "p50 x", "p99 x", "pts/s", "pts/s x", "RSS MiB", "PSS MiB",
         "procs", "agree"],
        rows,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer calls and repetitions")
    p.add_argument("--workers", type=int, default=2, help="gradserve workers = peers' threads")
    p.add_argument("--out", help="where to write the raw JSON (default bench-results/)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    print(f"starting a gradserve server with {args.workers} workers (embedded Ray) ...",
          flush=True)  # fmt: skip
    with start_server(args.workers) as server:
        r = run(server, args.workers, args.quick)
    r["quick"] = args.quick
    r["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    r["total_seconds"] = time.perf_counter() - started
    print(render(r))
    out = Path(args.out) if args.out else ROOT / "bench-results" / (
        time.strftime("%Y%m%d-%H%M%S") + "-peers" + ("-quick" if args.quick else "") + ".json"
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1, default=str))
    print(f"\nraw numbers: {out}  (total {r['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
