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
    "gradserve is listening on {host} with NO AUTHENTICATION (no tokens and no mutual "
    "TLS): anyone who can reach port {port} can run computations on this cluster and "
    "read, list and cancel every job. Set --auth-token-file (with --tls-cert/--tls-key), "
    "or --tls-client-ca for mutual TLS (docs/operations.md)"
)
_CLEAR_TOKENS = (
    "gradserve is listening on {host} WITHOUT TLS: the bearer tokens travel in clear "
    "text, so anyone on the network path can read one and use it. Set --tls-cert and "
    "--tls-key (docs/operations.md)"
)
_BANNER = "!" * 78


def _loudly(message: str) -> None:
    log.warning("%s\n%s\n%s", _BANNER, message, _BANNER)


def guard_exposure(config: ServerConfig, tls: bool, mutual: bool, tokens: bool) -> None:
    """A non-loopback bind needs callers to authenticate: tokens, or mutual TLS (every
    certificate holder is then admin). Without either it is refused unless --insecure;
    tokens over plaintext are warned about loudly. TLS alone authenticates no one."""
    if is_loopback(config.host):
        return
    if not (tokens or mutual):
        message = _EXPOSED.format(host=config.host, port=config.port)
        if not config.insecure:
            raise SetupError(message + ", or pass --insecure ($GRADSERVE_INSECURE=1) to accept it.")
        _loudly(message + ". (--insecure was given)")
    elif tokens and not tls:
        _loudly(_CLEAR_TOKENS.format(host=config.host))


_OPEN_METRICS = (
    "/metrics is served on {host}:{port} with no authentication: anyone who reaches it "
    "sees request rates, tenant names and job counts. Publish that port to your "
    "Prometheus only, or set --metrics-host 127.0.0.1 (docs/operations.md)"
)


def serve_metrics(config: ServerConfig) -> metrics.Endpoint | None:
    """Start the /metrics endpoint when --metrics-port is set (None: off). A
    non-loopback --metrics-host is warned about loudly: the endpoint has no auth."""
    if not config.metrics_port:
        return None
    try:
        endpoint = metrics.Endpoint(config.metrics_host, config.metrics_port)
    except OSError as error:
        raise SetupError(f"{error} (--metrics-port)") from None
    if not is_loopback(config.metrics_host):
        _loudly(_OPEN_METRICS.format(host=config.metrics_host, port=endpoint.port))
    return endpoint
