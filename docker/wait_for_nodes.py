"""Wait until a Ray cluster has N alive nodes: ``wait_for_nodes.py HOST:PORT N TIMEOUT_S``.

Exit status 0 when they joined, 1 on timeout. Token auth comes from RAY_AUTH_*
in the environment, as for any Ray driver.
"""

from __future__ import annotations

import logging
import sys
import time


def main(argv: list[str]) -> int:
    address, wanted, timeout = argv[0], int(argv[1]), float(argv[2])
    import ray

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            alive = sum(1 for node in ray.nodes() if node.get("Alive"))
            if alive >= wanted:
                print(f"{alive} Ray nodes", file=sys.stderr)
                return 0
            if time.monotonic() > deadline:
                print(f"only {alive} of {wanted} Ray nodes joined", file=sys.stderr)
                return 1
            time.sleep(1.0)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
