"""The container healthcheck: ask the server's grpc.health.v1 service.

    python docker/healthcheck.py [HOST:PORT] [--service NAME] [--timeout S]

Exits 0 when the server answers SERVING, 1 otherwise. The default address is
127.0.0.1 and GRADSERVE_PORT (50051). The health service needs no token.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 5.0) -> str:
    """The status name the server reports, e.g. ``SERVING``."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "address", nargs="?", default=f"127.0.0.1:{os.environ.get('GRADSERVE_PORT', '50051')}"
    )
    parser.add_argument("--service", default="", help="'' is the whole server")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        status = check(args.address, args.service, args.timeout)
    except grpc.RpcError as error:
        print(f"{args.address}: {error.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
