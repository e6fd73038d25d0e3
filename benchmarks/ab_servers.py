"""A/B of check round trips: a server from this tree against one from another checkout.

Both servers run at once (embedded Ray each, 2 workers) and the client's calls
alternate between them, in alternating order, so that the machine's drift hits both
sides alike; medians per case and their ratio are printed. Use it to measure a change
whose effect is smaller than the run-to-run noise (e.g. ``git worktree add /tmp/base
HEAD~1``). ``--base-env NAME=VALUE`` sets environment variables for the base server
only (a switch read by its workers).

Run: ``python benchmarks/ab_servers.py --base /tmp/base [--calls 300] [--base-env N=V]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _harness import median, start_server
from checks import CASES as CHECKS
from support.cluster import start_server as start_server_from

import gradserve

SCALAR, VECTOR = CHECKS  # checks.py's functions and wrong claims
CASES = [  # (label, source, inputs, claim)
    ("scalar n=1000", SCALAR.source, 1000, {}),
    ("scalar n=1000, wrong claim", SCALAR.source, 1000, {"grad": SCALAR.wrong_claim}),
    ("scalar n=10", SCALAR.source, 10, {}),
    ("vector n=1000", VECTOR.source, 1000, {}),
    ("vector n=1000, wrong claim", VECTOR.source, 1000, {"jacobian": VECTOR.wrong_claim}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the other checkout's root")
    p.add_argument("--calls", type=int, default=300, help="timed calls per side (scalar)")
    p.add_argument("--base-env", action="append", default=[], metavar="NAME=VALUE")
    args = p.parse_args()
    base = args.base.resolve()
    env = {"PYTHONPATH": f"{base / 'server'}:{base / 'workers'}"}
    for item in args.base_env:
        name, _, value = item.partition("=")
        env[name] = value
    x = np.random.default_rng(1000).uniform(-2.0, 2.0, 1000)
    with (
        start_server(2) as ours,
        start_server_from(None, num_workers=2, env=env) as theirs,
        gradserve.Client(ours.address) as a,
        gradserve.Client(theirs.address) as b,
    ):
        for label, source, n, claim in CASES:
            calls = args.calls if "scalar" in label else max(20, args.calls * 2 // 5)
            times: dict[str, list[float]] = {"this tree": [], "base": []}
            for i in range(calls + 20):
                pair = [("this tree", a), ("base", b)]
                for side, client in pair if i % 2 else pair[::-1]:
                    t0 = time.perf_counter()
                    client.check(source, {"x": x[:n]}, **claim)
                    if i >= 20:  # warm: compiled functions, shard timings learnt
                        times[side].append(time.perf_counter() - t0)
            new, old = median(times["this tree"]), median(times["base"])
            print(f"{label:28s} base {old * 1e3:7.2f} ms  this tree {new * 1e3:7.2f} ms  "
                  f"ratio {new / old:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
