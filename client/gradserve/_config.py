"""What both clients are configured with: the address, the token, the default
timeout and TLS, and the channel options these become."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gradserve.errors import GradserveError, InvalidArgumentError

DEFAULT_ADDRESS = "127.0.0.1:50051"
# The receive limit of the client's channel; larger replies are streamed.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TLS:
    """How to reach a server over TLS: each field optional, paths to PEM files.

    ``ca``: the CA bundle that signed the server's certificate (default: the
    system's CAs); ``cert`` and ``key``: this client's certificate and key, for a
    server that asks for them (mutual TLS); ``server_name``: the name to verify in
    the server's certificate when it differs from the address's host.

    >>> TLS(ca="ca.pem").ca
    'ca.pem'
    """

    ca: str | os.PathLike[str] | None = None
    cert: str | os.PathLike[str] | None = None
    key: str | os.PathLike[str] | None = None
    server_name: str | None = None

    @classmethod
    def from_env(cls) -> TLS | None:
        """From $GRADSERVE_TLS_CA / _CERT / _KEY / _SERVER_NAME; None when none is set."""
        names = ("CA", "CERT", "KEY", "SERVER_NAME")
        values = [os.environ.get(f"GRADSERVE_TLS_{n}") or None for n in names]
        return cls(*values) if any(values) else None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise InvalidArgumentError(
                "TLS: a client certificate needs its key, and a key its cert"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca, "CA bundle"),
            private_key=_read_pem(self.key, "client key"),
            certificate_chain=_read_pem(self.cert, "client certificate"),
        )


def _read_pem(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise GradserveError(f"TLS: cannot read the {what} {path}: {error.strerror}") from None


def channel_security(
    tls: TLS | bool | None,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """Credentials (None: plaintext) and channel options for ``tls``."""
    if tls is None:
        tls = TLS.from_env()
    if tls is None or tls is False:
        return None, []
    if tls is True:
        tls = TLS()
    if not isinstance(tls, TLS):
        raise InvalidArgumentError("tls must be gradserve.TLS(...), True or None")
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return tls.credentials(), options


class ClientConfig:
    """The settings of one client, resolved against the environment once."""

    def __init__(
        self,
        address: str | None,
        token: str | None,
        timeout: float | None,
        tls: TLS | bool | None,
    ) -> None:
        self.address = address or os.environ.get("GRADSERVE_ADDRESS") or DEFAULT_ADDRESS
        token = token if token is not None else os.environ.get("GRADSERVE_TOKEN")
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.timeout = timeout
        self.credentials, security_options = channel_security(tls)
        self.channel_options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *security_options,
        ]

    def deadline(self, timeout: float | None) -> float | None:
        """A call's timeout: its own, else the client's default."""
        return self.timeout if timeout is None else timeout
