"""How the server meets the network: TLS credentials, tokens, and the exposure guard.

Everything here runs before Ray starts, so a bad certificate path or token file,
or an exposed bind without protection, fails in a second with a clear message.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

from gradserve_server import metrics
from gradserve_server.auth import Authenticator, TokenFileError
from gradserve_server.config import ServerConfig

log = logging.getLogger("gradserve.server")


class SetupError(Exception):
    """A setting the server cannot start with; the message says which and why."""


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or '' / '0.0.0.0' / '::': reachable from elsewhere


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SetupError(f"cannot read {what} {path}: {error.strerror or error}") from None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials (mutual when --tls-client-ca), or None for plaintext."""
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise SetupError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise SetupError("TLS needs both --tls-cert and --tls-key")
    cert = _read(config.tls_cert, "the certificate (--tls-cert)")
    key = _read(config.tls_key, "the private key (--tls-key)")
    for data, what, marker in ((cert, config.tls_cert, b"CERTIFICATE"),
                               (key, config.tls_key, b"PRIVATE KEY")):  # fmt: skip
        if b"-----BEGIN" not in data or marker not in data:
            raise SetupError(f"{what} is not a PEM {marker.decode().lower()}")
    client_ca = None
    if config.tls_client_ca is not None:
        client_ca = _read(config.tls_client_ca, "the client CA bundle (--tls-client-ca)")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def authenticator(config: ServerConfig) -> Authenticator | None:
    """Tokens from --auth-token-file and/or --auth-token; None when neither is set."""
    if config.auth_token_file is None and not config.auth_token:
        return None
    try:
        return Authenticator(config.auth_token_file, config.auth_token)
    except TokenFileError as error:
        raise SetupError(str(error)) from None


_EXPOSED = (
    "gradserve is listening on {host} with NO TLS AND NO TOKENS: anyone who can reach "
    "port {port} can run computations on this cluster and read, list and cancel every "
    "job. Set --tls-cert/--tls-key and --auth-token-file (docs/operations.md)"
)


def guard_exposure(config: ServerConfig, tls: bool, tokens: bool) -> None:
    """Refuse a non-loopback bind with neither TLS nor tokens unless --insecure."""
    if tls or tokens or is_loopback(config.host):
        return
    message = _EXPOSED.format(host=config.host, port=config.port)
    if not config.insecure:
        raise SetupError(message + ", or pass --insecure ($GRADSERVE_INSECURE=1) to accept it.")
    banner = "!" * 78
    log.warning("%s\n%s\n(--insecure was given)\n%s", banner, message, banner)


def serve_metrics(config: ServerConfig) -> int:
    """Start the /metrics endpoint when --metrics-port is set; its port (0: off)."""
    if not config.metrics_port:
        return 0
    try:
        return metrics.serve(config.host, config.metrics_port)
    except OSError as error:
        raise SetupError(f"{error} (--metrics-port)") from None
