"""`make bench`: all six benchmarks against a real server with an embedded Ray.

1. throughput: batched grad/hessian, service vs in-process torch.func
2. checks: gradserve check vs torch.autograd.gradcheck (slow and fast mode)
3. latency: unary grad vs a bare gRPC health round trip
4. scaling: 1 and 2 workers
5. peers: the same unary and batched grads through FastAPI/uvicorn and Ray Serve
   (needs requirements/bench.txt, which `make bench` installs)
6. lanes: a unary call's time by part, fast lane off vs on (two servers of its own)
7. shm: the 200k-point batch by the wire, by shared memory, and in-process

Prints the tables and writes the raw numbers (every repetition) to
``bench-results/<time>.json`` (or ``--out``). ``--quick`` is a smoke run.
``make bench ARGS="--quick --only latency"`` passes flags through.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import checks
import lanes
import latency
import scaling
import shared_memory
import throughput
import torch
from _harness import ROOT, start_server

NAMES = ("throughput", "checks", "latency", "scaling", "peers", "lanes", "shm")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="gradserve benchmarks: ratios measured in one run")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (smoke run)")
    p.add_argument("--out", help="where to write the raw JSON (default bench-results/<time>.json)")
    p.add_argument("--only", action="append", choices=NAMES, help="run only these (repeatable)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    only = set(args.only or NAMES)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "workers": args.workers,
    }
    tables: list[str] = []
    # lanes start servers of their own: the shared one only for the parts that use it
    shared = only & {"throughput", "checks", "latency", "scaling", "peers", "shm"}
    if shared:
        print(f"starting a server with {args.workers} workers (embedded Ray) ...", flush=True)
    with start_server(args.workers) if shared else contextlib.nullcontext() as server:
        if server is not None:
            results["server_start_lines"] = server.lines[-3:]
        if "throughput" in only:
            print("1. throughput", flush=True)
            rows = throughput.run(server.address, args.workers, args.quick)
            results["throughput"] = rows
            tables.append(throughput.render(rows, args.workers))
        if "checks" in only:
            print("2. checks", flush=True)
            rows = checks.run(server.address, args.quick)
            results["checks"] = rows
            tables.append(checks.render(rows))
        if "latency" in only:
            print("3. latency", flush=True)
            lat = latency.run(server.address, args.quick)
            results["latency"] = lat
            tables.append(latency.render(lat))
        if "scaling" in only:
            print("4. scaling (2 workers)", flush=True)
            two = scaling.run_one(server.address, args.workers, args.quick)
        if "peers" in only:
            print("5. peers (FastAPI/uvicorn, Ray Serve)", flush=True)
            import peers  # its packages come from requirements/bench.txt: only when asked

            peer_rows = peers.run(server, args.workers, args.quick)
            results["peers"] = peer_rows
            peer_table = peers.render(peer_rows)
        if "shm" in only:
            print("6. shared memory", flush=True)
            points = 20_000 if args.quick else 200_000
            shm = shared_memory.run(
                server.address, server.proc.pid, args.workers, points, 3 if args.quick else 9
            )
            results["shared_memory"] = shm
            shm_table = shared_memory.render(shm)
    if "scaling" in only:
        print("4. scaling (1 worker: a second server)", flush=True)
        with start_server(1) as server:
            one = scaling.run_one(server.address, 1, args.quick)
        results["scaling"] = two + one
        tables.append(scaling.render(two + one))
    if "peers" in only:
        tables.append(peer_table)  # after scaling's, in the numbered order
    if "lanes" in only:
        print("6. lanes (fast lane off vs on: two more servers)", flush=True)
        results["lanes"] = lanes.run(args.workers, args.quick)
        tables.append(lanes.render(results["lanes"]))
    if "shm" in only:
        tables.append(shm_table)
    results["total_seconds"] = time.perf_counter() - started

    print()
    print("\n\n".join(tables))
    out = Path(args.out) if args.out else ROOT / "bench-results" / (
        time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") + ".json"
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nraw numbers: {out}  (total {results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
