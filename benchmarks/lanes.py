"""Lanes: where a unary call's time goes, with the fast lane off and on, in one run.

Two servers run side by side (2 workers each, embedded Ray): one with
``--fast-lane-elements 0`` (every call on Ray), one with the default fast lane.
In rounds, each server gets a ``grpc.health.v1`` round trip (the floor) and the
SDK's unary ``compute("dot(x, x)", x, ["grad"])`` at 10 inputs, interleaved, so
drift on a busy machine hits every column alike; ratios are within one server.

The breakdown of a call's median:

- client SDK: building and serialising the request, parsing the reply (in this
  process, timed alone);
- gRPC + interceptor + servicer: the client's total minus the server's own time
  (``metadata.wall_seconds``, from validation to the metadata built) minus the SDK's;
  the health round trip is the part of it any call pays;
- decode/validate/plan: ``ComputeService.admit_compute``, its codec's ``compute``,
  ``spec`` and ``plan`` on the same request (in this process, timed alone);
- the lane's hop: the server's time minus decode/validate/plan minus the compute;
  for Ray, the actor call's round trip (pickle, the actor's queue, the reply);
- compute: ``metadata.compute_seconds`` (the worker's call: thread hop, compile
  cache, the op, the certificate where cheap);
- encode: the reply's proto (in this process, timed alone).

    python benchmarks/lanes.py [--quick] [--out lanes.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
from _harness import fmt_time, percentile, start_server, table
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gradserve
from gradserve._core import compute_request, decode_compute
from gradserve.v1 import gradserve_pb2 as pb

SOURCE = "dot(x, x)"
DIM = 10
LANES = {"ray": ["--fast-lane-elements", "0"], "fast": []}


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextlib.contextmanager
def _servers(workers: int) -> Iterator[dict[str, Any]]:
    started: dict[str, Any] = {}
    try:
        for name, flags in LANES.items():
            started[name] = start_server(workers, extra=flags)
        yield started
    finally:
        for server in started.values():
            server.stop()


def in_process(x: np.ndarray, reps: int) -> dict[str, float]:
    """Medians of the parts that need no server: the SDK's request and reply, the
    server's decode/validate/plan and its reply encoding."""
    from gradserve_server.config import ServerConfig
    from gradserve_server.encoding import outputs_to_proto
    from gradserve_server.service import ComputeService

    pool = types.SimpleNamespace(workers=[0, 1], idle=2)
    service = ComputeService(ServerConfig(), pool)  # type: ignore[arg-type]
    req = compute_request(SOURCE, {"x": x}, ["grad"]).unary()
    resp = pb.ComputeResponse(metadata=pb.ComputeMetadata(points=1, lane="fast"))
    outputs_to_proto({"grad": {"": 2 * x}}, resp.results)
    wire = resp.SerializeToString()

    def sdk() -> None:
        compute_request(SOURCE, {"x": x}, ["grad"]).unary().SerializeToString()
        decode_compute(pb.ComputeResponse.FromString(wire))

    def bind() -> None:
        header = service.admit_compute(req, unary=True)  # the servicer's admission
        decoded = service.codec.compute(req, header=header)
        service.spec(decoded)
        service.plan(decoded)

    def encode() -> None:
        out = pb.ComputeResponse(metadata=pb.ComputeMetadata(points=1))
        outputs_to_proto({"grad": {"": 2 * x}}, out.results)
        out.ByteSize()

    parts = {"sdk": sdk, "bind": bind, "encode": encode}
    for fn in parts.values():
        for _ in range(50):
            fn()
    out = {name: percentile([_timed(fn) for _ in range(reps)], 50) for name, fn in parts.items()}
    return out


def measure(servers: dict[str, Any], calls: int, rounds: int) -> dict[str, Any]:
    x = np.linspace(-1.0, 1.0, DIM)
    sides: dict[str, dict[str, Any]] = {}
    stack = contextlib.ExitStack()
    with stack:
        handles = {}
        for name, server in servers.items():
            channel = stack.enter_context(grpc.insecure_channel(server.address))
            health = health_pb2_grpc.HealthStub(channel)
            client = stack.enter_context(gradserve.Client(server.address))
            handles[name] = (health, client)
            sides[name] = {"health_s": [], "call_s": [], "wall_s": [], "compute_s": [], "lanes": {}}
            for _ in range(50):  # warm: compile caches, actors, pages
                health.Check(health_pb2.HealthCheckRequest())
                client.compute(SOURCE, x, ["grad"])
        per_round = max(1, calls // rounds)
        for _ in range(rounds):
            for name, (health, client) in handles.items():
                side = sides[name]
                for _ in range(per_round):
                    side["health_s"].append(
                        _timed(lambda h=health: h.Check(health_pb2.HealthCheckRequest()))
                    )
                    t0 = time.perf_counter()
                    r = client.compute(SOURCE, x, ["grad"])
                    side["call_s"].append(time.perf_counter() - t0)
                    side["wall_s"].append(r.metadata.wall_seconds)
                    side["compute_s"].append(r.metadata.compute_seconds)
                    side["lanes"][r.metadata.lane] = side["lanes"].get(r.metadata.lane, 0) + 1
                    assert np.allclose(r["grad"], 2 * x)
    parts = in_process(x, 2000)
    out: dict[str, Any] = {"calls": calls, "in_process": parts, "sides": sides}
    for side in sides.values():
        for key in ("health", "call", "wall", "compute"):
            side[f"{key}_p50"] = percentile(side[f"{key}_s"], 50)
            side[f"{key}_p99"] = percentile(side[f"{key}_s"], 99)
        side["ratio_p50"] = side["call_p50"] / side["health_p50"]
        side["ratio_p99"] = side["call_p99"] / side["health_p99"]
        side["breakdown"] = {
            "client SDK (request + reply)": parts["sdk"],
            "gRPC + interceptor + servicer (beyond the SDK and the server's own time)": (
                side["call_p50"] - side["wall_p50"] - parts["sdk"]
            ),
            "  of which any gRPC call pays (health round trip)": side["health_p50"],
            "decode, validate, plan": parts["bind"],
            "the lane's hop (Ray: the actor call's round trip)": (
                side["wall_p50"] - parts["bind"] - side["compute_p50"]
            ),
            "compute (on the worker / the lane's thread)": side["compute_p50"],
            "encode the reply": parts["encode"],
        }
    return out


def health_while_busy(address: str, seconds: float) -> dict[str, Any]:
    """Health round trips on their own, then while another client keeps the fast lane
    computing (batched grads of 4,000 points x 10, ~84,000 elements: under the
    default threshold): what a lane call costs the event loop."""
    import threading

    x = np.random.default_rng(0).normal(size=(4000, DIM))
    out: dict[str, Any] = {}
    with grpc.insecure_channel(address) as channel, gradserve.Client(address) as client:
        health = health_pb2_grpc.HealthStub(channel)
        lanes: dict[str, int] = {}

        def rtts() -> list[float]:
            got = []
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                got.append(_timed(lambda: health.Check(health_pb2.HealthCheckRequest())))
                time.sleep(0.002)
            return got

        out["idle_s"] = rtts()
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                lane = client.compute(SOURCE, x, ["grad"], batched=True).metadata.lane
                lanes[lane] = lanes.get(lane, 0) + 1

        worker = threading.Thread(target=load)
        worker.start()
        try:
            time.sleep(0.5)
            out["busy_s"] = rtts()
        finally:
            stop.set()
            worker.join()
        out["busy_lanes"] = lanes
    for key in ("idle", "busy"):
        out[f"{key}_p50"] = percentile(out[f"{key}_s"], 50)
        out[f"{key}_p99"] = percentile(out[f"{key}_s"], 99)
        out[f"{key}_max"] = max(out[f"{key}_s"])
    return out


def render(r: dict[str, Any]) -> str:
    sides = r["sides"]
    rows = [
        [name, fmt_time(s["health_p50"]), fmt_time(s["call_p50"]), fmt_time(s["call_p99"]),
         f"{s['ratio_p50']:.2f}", f"{s['ratio_p99']:.2f}",
         ", ".join(f"{k or '-'}: {v}" for k, v in s["lanes"].items())]
        for name, s in sides.items()
    ]  # fmt: skip
    first = table(
        f"Unary grad of {SOURCE} at {DIM} inputs ({r['calls']} calls per server), by lane",
        ["server", "health p50", "call p50", "call p99", "p50 / health", "p99 / health", "lanes"],
        rows,
    )
    names = list(sides)
    parts = list(sides[names[0]]["breakdown"])
    rows = [[p, *(fmt_time(sides[n]["breakdown"][p]) for n in names)] for p in parts]
    rows.append(["total (client, p50)", *(fmt_time(sides[n]["call_p50"]) for n in names)])
    second = table("Where the median call's time goes", ["part", *names], rows)
    b = r["health_while_busy"]
    third = table(
        "Health round trips while the fast lane computes batched grads "
        f"(lanes of those calls: {b['busy_lanes']})",
        ["", "p50", "p99", "max"],
        [[k, fmt_time(b[f"{k}_p50"]), fmt_time(b[f"{k}_p99"]), fmt_time(b[f"{k}_max"])]
         for k in ("idle", "busy")],
    )  # fmt: skip
    return first + "\n\n" + second + "\n\n" + third


def run(workers: int, quick: bool) -> dict[str, Any]:
    """Both servers started here (``workers`` each), measured, stopped."""
    calls, rounds = (200, 4) if quick else (1000, 10)
    with _servers(workers) as servers:
        r = measure(servers, calls, rounds)
        r["health_while_busy"] = health_while_busy(servers["fast"].address, 3 if quick else 10)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    r = run(2, args.quick)
    print(render(r))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
