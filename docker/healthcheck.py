"""The container healthcheck: ask the server's grpc.health.v1 service.

    python docker/healthcheck.py [HOST:PORT] [--service NAME] [--timeout S]

Exits 0 when the server answers SERVING, 1 otherwise. The default address is
127.0.0.1 and GRADSERVE_PORT (50051). The health service needs no token.

It speaks TLS when the server does, from the server's own variables:

- TLS is on when GRADSERVE_TLS_CERT (the server's certificate) or
  GRADSERVE_HEALTHCHECK_TLS_CA is set.
- The server is verified with GRADSERVE_HEALTHCHECK_TLS_CA, else GRADSERVE_TLS_CA,
  else the server's own chain file GRADSERVE_TLS_CERT (enough when the chain holds
  its CA or the certificate is self-signed).
- Under mutual TLS (GRADSERVE_TLS_CLIENT_CA set) it presents
  GRADSERVE_HEALTHCHECK_TLS_CERT/_KEY, else the server's own pair
  (GRADSERVE_TLS_CERT/_KEY: enough when the client CA signed it for client use).
- The certificate must name 127.0.0.1, or set GRADSERVE_HEALTHCHECK_TLS_SERVER_NAME
  (or GRADSERVE_TLS_SERVER_NAME) to a name it holds.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class TLS:
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        pair = (self.key.read_bytes(), self.cert.read_bytes()) if self.cert and self.key else None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=pair[0] if pair else None,
            certificate_chain=pair[1] if pair else None,
        )


def tls_from_env(env: Mapping[str, str] = os.environ) -> TLS | None:
    """The TLS settings the server's variables imply (None: plaintext)."""

    def get(*names: str) -> str | None:
        return next((env[n] for n in names if env.get(n)), None)

    ca = get("GRADSERVE_HEALTHCHECK_TLS_CA", "GRADSERVE_TLS_CA", "GRADSERVE_TLS_CERT")
    if not (env.get("GRADSERVE_TLS_CERT") or env.get("GRADSERVE_HEALTHCHECK_TLS_CA")) or not ca:
        return None
    cert = key = None
    if env.get("GRADSERVE_TLS_CLIENT_CA"):  # mutual TLS: the server asks for a certificate
        cert = get("GRADSERVE_HEALTHCHECK_TLS_CERT", "GRADSERVE_TLS_CERT")
        key = get("GRADSERVE_HEALTHCHECK_TLS_KEY", "GRADSERVE_TLS_KEY")
    name = get("GRADSERVE_HEALTHCHECK_TLS_SERVER_NAME", "GRADSERVE_TLS_SERVER_NAME")
    return TLS(Path(ca), Path(cert) if cert else None, Path(key) if key else None, name)


def check(address: str, service: str = "", timeout: float = 5.0, tls: TLS | None = None) -> str:
    """The status name the server reports, e.g. ``SERVING``."""
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        channel = grpc.secure_channel(address, tls.credentials(), options=options)
    with channel:
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
        status = check(args.address, args.service, args.timeout, tls_from_env())
    except OSError as error:  # a certificate file that cannot be read
        print(f"{args.address}: {error}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"{args.address}: {error.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
