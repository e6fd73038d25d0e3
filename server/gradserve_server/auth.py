"""Who is calling: bearer tokens from a file (or one shared token), each naming a tenant.

The token file has one token a line, ``TENANT TOKEN``, optionally followed by
``admin``; ``#`` starts a comment. It is re-read on SIGHUP: a file that no longer
parses keeps the tokens in force (and says why in the log), so a typo never locks
every caller out. A tenant may have several tokens (rotation); one token may not
belong to two tenants.

Every comparison is constant-time: the presented token's SHA-256 is compared with
every known token's, with no early exit.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gradserve.auth")

# Tenants name pool queues ("TENANT/STREAM") and metric labels: no slash, no spaces.
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# Shorter tokens are accepted with a warning: they can be guessed.
MIN_TOKEN_CHARS = 16
# The tenant of unauthenticated servers and of the one shared --auth-token; jobs
# stored before tenants existed belong to it too.
DEFAULT_TENANT = ""


# How logs and metrics show DEFAULT_TENANT; token files may not name a tenant so.
DEFAULT_LABEL = "default"


def tenant_label(tenant: str) -> str:
    """The tenant as logs and metrics show it."""
    return tenant or DEFAULT_LABEL


@dataclass(frozen=True)
class Identity:
    tenant: str
    admin: bool = False

    @property
    def label(self) -> str:
        return tenant_label(self.tenant)


# No authentication configured: a single-user server where every caller sees all.
# Given only by the interceptor of a server without tokens, never by default.
ANONYMOUS = Identity(DEFAULT_TENANT, admin=True)
# Whoever has not been identified (code outside a call, a call not yet admitted): no
# rights, and a tenant no token file can name (tenants start with a letter or digit).
NOBODY = Identity("-unidentified", admin=False)


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    identity: Identity


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def parse_token_file(text: str, where: str = "token file") -> list[tuple[str, Identity]]:
    """(token, identity) for each line of a token file's text."""
    entries: list[tuple[str, Identity]] = []
    owners: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        for i, f in enumerate(fields):
            if f.startswith("#"):
                fields = fields[:i]
                break
        if not fields:
            continue
        at = f"{where}, line {number}"
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != "admin"):
            raise TokenFileError(f"{at}: write 'TENANT TOKEN' or 'TENANT TOKEN admin'")
        tenant, token = fields[0], fields[1]
        if not _TENANT.match(tenant):
            raise TokenFileError(
                f"{at}: tenant {tenant!r} must be 1-64 letters, digits, '_', '.', '@' or '-'"
            )
        if tenant.lower() == DEFAULT_LABEL:
            raise TokenFileError(
                f"{at}: the tenant name {DEFAULT_LABEL!r} is reserved (it is how logs and "
                "metrics show the shared tenant of --auth-token): choose another"
            )
        if token in owners and owners[token] != tenant:
            raise TokenFileError(f"{at}: this token is also {owners[token]!r}'s")
        if len(token) < MIN_TOKEN_CHARS:
            log.warning("%s: tenant %s has a token of under %d characters", at, tenant,
                        MIN_TOKEN_CHARS)  # fmt: skip
        owners[token] = tenant
        entries.append((token, Identity(tenant, admin=len(fields) == 3)))
    return entries


class Authenticator:
    """Maps an ``authorization`` header to an :class:`Identity` (``None``: refused)."""

    def __init__(self, token_file: Path | None = None, shared_token: str | None = None) -> None:
        self.token_file = token_file
        self._shared = shared_token
        self._entries: tuple[_Entry, ...] = ()
        self.reload(strict=True)

    @property
    def tenants(self) -> list[str]:
        return sorted({e.identity.label for e in self._entries})

    def reload(self, strict: bool = False) -> bool:
        """Read the token file again; on error keep the tokens in force (raise if ``strict``)."""
        try:
            pairs = self._read()
        except (OSError, TokenFileError) as error:
            if strict:
                raise TokenFileError(str(error)) from None
            log.error("token file not reloaded, the previous tokens stay in force: %s", error)
            return False
        if self._shared:
            pairs.append((self._shared, Identity(DEFAULT_TENANT, admin=True)))
        self._entries = tuple(_Entry(_digest(t.encode()), who) for t, who in pairs)
        if self.token_file is not None:
            log.info("loaded %d tokens for %d tenants from %s", len(pairs),
                     len({who.tenant for _, who in pairs}), self.token_file)  # fmt: skip
        return True

    def _read(self) -> list[tuple[str, Identity]]:
        if self.token_file is None:
            return []
        mode = self.token_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users: chmod 600 it", self.token_file)
        return parse_token_file(self.token_file.read_text(), str(self.token_file))

    def identify(self, values: Sequence[str | bytes]) -> Identity | str:
        """The caller's identity from its ``authorization`` values, or why it is refused."""
        if len(values) > 1:
            return "several authorization headers were sent; send one"
        if not values:
            return "no token: send 'authorization: Bearer <token>'"
        header = values[0].encode() if isinstance(values[0], str) else values[0]
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "the authorization header must be 'Bearer <token>'"
        given = _digest(token.strip())
        found: Identity | None = None
        for entry in self._entries:  # every entry, no early exit: constant time
            if hmac.compare_digest(given, entry.digest):
                found = entry.identity
        return found if found is not None else "unknown token"
