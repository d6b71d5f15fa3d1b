"""Who may use the terminal, from where: credentials, roles, Host/Origin rules, response headers.

* :class:`Credentials` — the operators and quality engineers who may act, read from a
  credentials file (``--credentials FILE``). Each line is ``ROLE NAME sha256:HEX``: the SHA-256
  of a random bearer token, never the token itself. The file must be a regular file owned by the
  user running the terminal and closed to group and others (mode 0600 or 0400), or the terminal
  refuses to start. A token is checked by hashing it and comparing the digest with every entry
  in constant time.
* Roles: ``operator`` may inspect (upload) and view; ``quality`` may also verify the ledger.
* :class:`RequestGuard` — an ASGI middleware in front of every route: a ``Host`` header that is
  not one of the served addresses is answered 421 (DNS rebinding: a foreign name resolved to this
  machine); on ``/api/`` a foreign ``Origin`` or a cross-site ``Sec-Fetch-Site`` is answered 403;
  every response carries the security headers (CSP with ``frame-ancestors 'none'``, nosniff,
  ``X-Frame-Options: DENY``, no referrer, ``no-store`` on the API).

The credential travels only in the ``Authorization: Bearer`` header, never in a cookie, so a
browser never attaches it on its own: a page on another site cannot make an authenticated request
(it cannot set that header without a CORS preflight, which the terminal never grants).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import socket
import stat
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from autoweld.safe_files import open_regular

__all__ = [
    "CREDENTIALS_MAX_BYTES",
    "ROLES",
    "SECURITY_HEADERS",
    "Credentials",
    "CredentialsError",
    "Identity",
    "RequestGuard",
    "bearer_token",
    "is_loopback",
    "served_hosts",
]

#: roles, least to most: each may do what the ones before it may
ROLES = ("operator", "quality")
#: the largest credentials file read
CREDENTIALS_MAX_BYTES = 1024 * 1024

_LINE = re.compile(r"^(?P<role>\S+)\s+(?P<name>\S+)\s+sha256:(?P<digest>[0-9a-fA-F]{64})$")

#: no inline script or style anywhere: the page is three static files of its own origin
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


class CredentialsError(ValueError):
    """A credentials file that is not used: unsafe mode, wrong owner, or a bad line."""


@dataclass(frozen=True)
class Identity:
    """Who a request's token belongs to."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this identity holds ``role`` or one above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


class Credentials:
    """The tokens that may use the terminal, as ``(role, name, sha256 digest)`` entries."""

    def __init__(self, entries: Iterable[tuple[str, str, bytes]]) -> None:
        self._entries = tuple(entries)
        if not self._entries:
            raise CredentialsError("no credentials given")
        for role, name, digest in self._entries:
            if role not in ROLES:
                raise CredentialsError(f"unknown role {role!r} for {name!r} (one of {ROLES})")
            if len(digest) != 32:
                raise CredentialsError(f"{name!r}: a digest must be 32 bytes of SHA-256")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Credentials:
        """Read a credentials file, refusing one that others could read or change."""
        with open_regular(path, CREDENTIALS_MAX_BYTES) as (file, _size):
            info = os.fstat(file.fileno())
            text = file.read().decode("utf-8", errors="replace")
        if info.st_uid != os.getuid():
            raise CredentialsError(f"{path}: not owned by the user running the terminal")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CredentialsError(
                f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read or change it; "
                f"chmod 600 {path}"
            )
        entries = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if match is None:  # the line is not echoed: it may hold a token pasted by mistake
                raise CredentialsError(f"{path} line {number}: expected 'ROLE NAME sha256:HEX'")
            entries.append((match["role"], match["name"], bytes.fromhex(match["digest"])))
        if not entries:
            raise CredentialsError(f"{path}: no credentials in the file")
        return cls(entries)

    def identify(self, token: str | None) -> Identity | None:
        """The identity whose token this is, or None. Every entry is compared, in constant
        time, so the answer's timing does not tell which entry came close."""
        if not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8", errors="replace")).digest()
        found: Identity | None = None
        for role, name, stored in self._entries:
            if hmac.compare_digest(digest, stored) and found is None:
                found = Identity(name=name, role=role)
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_names(bind_host: str, extra: Iterable[str]) -> set[str]:
    names = {"127.0.0.1", "localhost", "::1", bind_host, *extra}
    if bind_host in ("0.0.0.0", "::"):  # every interface: the names this machine goes by
        hostname = socket.gethostname()
        names |= {hostname, socket.getfqdn()}
        try:
            names |= {str(info[4][0]) for info in socket.getaddrinfo(hostname, None)}
        except OSError:
            pass
        names -= {"0.0.0.0", "::"}
    return names


def _with_port(name: str, port: int) -> set[str]:
    """``name`` as Host header values: ``name:port`` (and bare ``name`` for port 80), unless
    ``name`` already names its port (``HOST:PORT``, ``[V6]:PORT``)."""
    name = name.strip().lower()
    if not name:
        return set()
    if name.startswith("[") and "]:" in name or name.count(":") == 1:
        return {name}  # a port of its own: a tunnel or proxy in front of the terminal
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 address, as it appears in a Host header
    return {f"{name}:{port}", name} if port == 80 else {f"{name}:{port}"}


def served_hosts(bind_host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` header values (lower case) the terminal answers on ``bind_host:port``.

    Loopback names always; for a wildcard bind also this machine's host name, fully qualified
    name and addresses; plus ``extra`` (``--allowed-host NAME`` or ``NAME:PORT``). Port 80 may
    be left out, as browsers do."""
    hosts: set[str] = set()
    for name in _host_names(bind_host, ()):
        hosts |= _with_port(name, port)
    for name in extra:
        hosts |= _with_port(name, port)
    return frozenset(hosts)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class RequestGuard:
    """ASGI middleware: Host and Origin rules, and the security headers on every response."""

    def __init__(self, app: Callable[..., Awaitable[None]], hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(f"http://{host}" for host in hosts)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """``(status, reason)`` for a request that is not served, else None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").strip().lower()
        if host not in self.hosts:
            return 421, f"this terminal does not serve host {host[:100]!r}"
        if not scope["path"].startswith("/api/"):
            return None
        origin = headers.get("origin")
        if origin is not None and origin.strip().lower() not in self.origins:
            return 403, f"requests from origin {origin[:100]!r} are refused"
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return 403, f"{site} requests are refused"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                added = dict(SECURITY_HEADERS)
                if api:
                    added["cache-control"] = "no-store"
                kept = [(k, v) for k, v in message.get("headers", []) if k.decode() not in added]
                message["headers"] = kept + [(k.encode(), v.encode()) for k, v in added.items()]
            await send(message)

        refused = self.refusal(scope)
        if refused is None:
            await self.app(scope, receive, send_with_headers)
            return
        status, reason = refused
        body = json.dumps({"detail": reason}).encode()
        await send_with_headers(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send_with_headers({"type": "http.response.body", "body": body})
