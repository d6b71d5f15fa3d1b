"""OPC UA result channel (asyncua): the OPC 40100 (Machine Vision) subset of docs/plant.md.

Chosen by URL through :func:`~autoweld.quality.plc.open_plc`:

* ``opcua+server://HOST:PORT/PATH?...`` — the station runs an OPC UA server at
  ``opc.tcp://HOST:PORT/PATH``; MES and line controllers read ``Objects/AutoWeld`` and subscribe
  to its ``ResultReadyEventType`` events. Delivered means: in the address space, event fired.
* ``opcua://HOST:PORT/PATH?...`` — the station is a client of an existing server that exposes the
  same nodes (string NodeIds ``AutoWeld.<path>`` in namespace ``ns``, writable); every signal and
  every result is one WriteRequest, delivered when the server answers Good for every value.

Query parameters: ``security=sign-encrypt`` (default; Basic256Sha256 SignAndEncrypt), ``sign`` or
``none``; ``cert=FILE`` and ``key=FILE`` (this station's application certificate and key, made by
``autoweld-plant certs``); server mode: ``trusted=DIR`` (certificates of the clients it accepts);
client mode: ``server_cert=FILE`` (the server's certificate, pinned). ``allow_anonymous=1``
accepts (server) or uses (client) the anonymous identity; without it a session must present a
trusted certificate as its identity. ``security=none`` needs ``allow_anonymous=1``.
``ns=URI`` (default :data:`NAMESPACE_URI`), ``simulated=1`` marks every result ``IsSimulated``.

asyncua is asyncio: each link runs its own event loop on a daemon thread and the caller waits for
a write with the link's deadline; a dead or slow server costs at most that deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Coroutine, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from asyncua import Client, Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.uacrypto import CertProperties
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from autoweld.quality.plant import ResultLink, query_flag, refuse_unknown

__all__ = [
    "DECISION_NODES",
    "NAMESPACE_URI",
    "RESULT_EVENT_TYPE",
    "RESULT_NODES",
    "ROOT",
    "OpcUaClientLink",
    "OpcUaSecurity",
    "OpcUaServerLink",
    "add_result_nodes",
    "application_uri",
    "open_opcua",
    "write_application_certificate",
]

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:autoweld:results"
ROOT = "AutoWeld"
RESULT_EVENT_TYPE = "ResultReadyEventType"
#: how long opening a server (or closing a link) may take before it is an error
STARTUP_TIMEOUT_S = 30.0
#: a client's connection attempt runs in the background and may outlive one deadline
CONNECT_TIMEOUT_S = 5.0
#: what the client asks for (asyncua servers grant at most 10 minutes); kept alive by asyncua
SESSION_TIMEOUT_MS = 600_000

V = ua.VariantType
#: (path under ``AutoWeld``, type, is an array): the decision, written on the deadline path
DECISION_NODES: tuple[tuple[str, ua.VariantType, bool], ...] = (
    ("Decision", V.String, False),
    ("DecisionCounter", V.UInt32, False),
)
#: ... and the full result, written after the record is in the ledger (ResultCounter last)
RESULT_NODES: tuple[tuple[str, ua.VariantType, bool], ...] = (
    ("Result.ResultId", V.String, False),
    ("Result.PartId", V.String, False),
    ("Result.CreationTime", V.DateTime, False),
    ("Result.ResultState", V.Int32, False),
    ("Result.IsPartial", V.Boolean, False),
    ("Result.IsSimulated", V.Boolean, False),
    ("Result.ProcessingTimes.StartTime", V.DateTime, False),
    ("Result.ProcessingTimes.EndTime", V.DateTime, False),
    ("Result.ProcessingTimes.AcquisitionDuration", V.Double, False),
    ("Result.ProcessingTimes.ProcessingDuration", V.Double, False),
    ("Result.ResultContent.Decision", V.String, False),
    ("Result.ResultContent.Ok", V.Boolean, False),
    ("Result.ResultContent.FusedProbability", V.Double, False),
    ("Result.ResultContent.Threshold", V.Double, False),
    ("Result.ResultContent.HeadNames", V.String, True),
    ("Result.ResultContent.HeadScores", V.Double, True),
    ("Result.ResultContent.HeadProbabilities", V.Double, True),
    ("Result.ResultContent.StationId", V.String, False),
    ("Result.ResultContent.Seq", V.Int64, False),
    ("Result.ResultContent.Mac", V.String, False),
    ("Result.ResultContent.KeyId", V.String, False),
    ("Result.ResultContent.BundleSha256", V.String, False),
    ("Result.ResultContent.Error", V.String, False),
    ("ResultCounter", V.UInt32, False),
)
#: properties of the result-ready event (names as in the result)
EVENT_FIELDS = (
    ("ResultId", V.String),
    ("PartId", V.String),
    ("ResultState", V.Int32),
    ("IsSimulated", V.Boolean),
    ("Decision", V.String),
    ("Seq", V.Int64),
    ("Mac", V.String),
)
SECURITY_MODES = {
    "sign-encrypt": ua.MessageSecurityMode.SignAndEncrypt,
    "sign": ua.MessageSecurityMode.Sign,
    "none": ua.MessageSecurityMode.None_,
}
_SERVER_POLICIES = {
    "sign-encrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "none": ua.SecurityPolicyType.NoSecurity,
}
# OPC UA has no null Double/Int64: "not available" is NaN, 0 and "" (docs/plant.md)
_MISSING = {V.Double: math.nan, V.Int64: 0, V.String: "", V.Int32: 0, V.Boolean: False}


def _node_id(path: str, namespace: int) -> ua.NodeId:
    return ua.NodeId(f"{ROOT}.{path}", namespace)


def _variant(value: Any, vtype: ua.VariantType, is_array: bool) -> ua.Variant:
    if is_array:
        items = [(_MISSING[vtype] if v is None else v) for v in (value or [])]
        return ua.Variant(items, vtype, is_array=True)
    return ua.Variant(_MISSING.get(vtype) if value is None else value, vtype)


def _field(fields: dict[str, Any], path: str) -> Any:
    value: Any = fields
    for part in path.split(".")[1:]:  # "Result.X.Y" -> fields["X"]["Y"]
        value = value[part]
    return value


def _result_values(fields: dict[str, Any], counter: int) -> list[tuple[str, ua.Variant]]:
    values = [
        (path, _variant(_field(fields, path), vtype, is_array))
        for path, vtype, is_array in RESULT_NODES[:-1]
    ]
    return [*values, ("ResultCounter", ua.Variant(counter, V.UInt32))]


def _blank(vtype: ua.VariantType, is_array: bool) -> ua.Variant:
    if is_array:
        return ua.Variant([], vtype, is_array=True)
    if vtype == V.DateTime:
        return ua.Variant(datetime(1601, 1, 1, tzinfo=timezone.utc), vtype)
    return ua.Variant(0 if vtype == V.UInt32 else _MISSING[vtype], vtype)


async def add_result_nodes(
    server: Server, namespace_uri: str = NAMESPACE_URI, *, writable: bool = False
) -> tuple[int, Any]:
    """Create ``Objects/AutoWeld`` with :data:`DECISION_NODES` and :data:`RESULT_NODES` on an
    asyncua ``server`` (string NodeIds ``AutoWeld.<path>``); ``writable`` for a server that a
    station writes to as a client. Returns the namespace index and the ``AutoWeld`` node."""
    namespace = await server.register_namespace(namespace_uri)
    root = await server.nodes.objects.add_object(
        ua.NodeId(ROOT, namespace), ua.QualifiedName(ROOT, namespace)
    )
    parents = {"": root}
    for path, vtype, is_array in DECISION_NODES + RESULT_NODES:
        parent_path, _, name = path.rpartition(".")
        steps = parent_path.split(".") if parent_path else []
        for depth in range(1, len(steps) + 1):
            key = ".".join(steps[:depth])
            if key not in parents:
                above = parents[".".join(steps[: depth - 1])]
                parents[key] = await above.add_object(
                    _node_id(key, namespace), ua.QualifiedName(steps[depth - 1], namespace)
                )
        node = await parents[parent_path].add_variable(
            _node_id(path, namespace), ua.QualifiedName(name, namespace), _blank(vtype, is_array)
        )
        if is_array:
            await node.write_value_rank(ua.ValueRank.OneDimension)
        if writable:
            await node.set_writable()
    return namespace, root


@dataclass(frozen=True)
class OpcUaSecurity:
    """How a link secures its connection (from the URL's query, see the module docstring)."""

    mode: str = "sign-encrypt"
    certificate: Path | None = None
    private_key: Path | None = None
    trusted: Path | None = None
    server_certificate: Path | None = None
    allow_anonymous: bool = False


def application_uri(certificate: Path) -> str:
    """The application URI in ``certificate``'s subjectAltName (OPC UA requires one)."""
    cert = _load_certificate(certificate)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier) if names else []
    if not uris:
        raise ValueError(f"certificate {certificate} has no application URI (subjectAltName)")
    return uris[0]


def _content(path: Path | None) -> CertProperties:
    data = Path(path).read_bytes()
    return CertProperties(data, "pem" if b"-----BEGIN" in data else "der")


def _load_private_key(path: Path) -> Any:
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return serialization.load_pem_private_key(data, password=None)
    return serialization.load_der_private_key(data, password=None)


def _load_certificate(path: Path) -> x509.Certificate:
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


class _LoopThread:
    """An asyncio event loop on its own daemon thread; callers wait with a deadline."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopped = False
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], deadline: float) -> Any:
        if self.stopped:
            coro.close()
            raise ConnectionError("the link is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except (TimeoutError, concurrent.futures.TimeoutError):  # distinct classes on 3.10
            future.cancel()  # a late write must not land after the next part's
            raise TimeoutError("no answer before the deadline") from None

    def submit(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; its failure is logged by whoever awaits it."""
        asyncio.run_coroutine_threadsafe(coro, self.loop).add_done_callback(_retrieve)

    def stop(self) -> None:
        if self.stopped:
            return
        try:  # let what is still running (a background disconnect, asyncua's tasks) unwind
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(STARTUP_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - stopping goes on regardless
            log.debug("tasks left when stopping the loop: %s", error)
        self.stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=STARTUP_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_all() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(3):  # a closed transport closes its socket in a callback: let those run
        await asyncio.sleep(0)


def _retrieve(future: Any) -> None:
    if not future.cancelled():
        future.exception()  # seen: no "exception was never retrieved" noise


class _OpcUaLink(ResultLink):
    """What both modes share: the counters, the deadline-bounded writes, closing."""

    def __init__(
        self,
        url: str,
        host: str,
        port: int,
        timeout: float,
        *,
        endpoint: str,
        security: OpcUaSecurity,
        namespace_uri: str,
        simulated: bool,
    ) -> None:
        super().__init__(url, host, port, timeout, simulated)
        self.endpoint = endpoint
        self.security = security
        self.namespace_uri = namespace_uri
        # fresh random starts, so a restarted station never repeats the counters a reader saw
        self.decision_counter = random.randint(1, 2**32 - 1)
        self.result_counter = random.randint(1, 2**32 - 1)
        self._loop = _LoopThread(f"autoweld-opcua {endpoint}")

    def _send(self, decision: str, deadline: float) -> None:
        self.decision_counter = self.decision_counter % (2**32 - 1) + 1
        values = [
            ("Decision", ua.Variant(decision, V.String)),
            ("DecisionCounter", ua.Variant(self.decision_counter, V.UInt32)),
        ]
        self._loop.run(self._write(values, None), deadline)

    def _publish(self, fields: dict[str, Any], deadline: float) -> None:
        self.result_counter = self.result_counter % (2**32 - 1) + 1
        self._loop.run(self._write(_result_values(fields, self.result_counter), fields), deadline)

    async def _write(
        self, values: list[tuple[str, ua.Variant]], fields: dict[str, Any] | None
    ) -> None:
        """Write ``values`` as one request; ``fields`` when they are a full result."""
        raise NotImplementedError

    async def _shutdown(self) -> None:
        """Stop serving or disconnect (on the loop thread)."""

    def close(self) -> None:
        super().close()
        if self._loop.stopped:
            return
        try:
            self._loop.run(self._shutdown(), time.monotonic() + STARTUP_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - closing must not raise for a dead peer
            log.warning("%s: closing: %s", self.url, error)
        self._loop.stop()


class _TrustedCertificates:
    """The client certificates in ``folder`` (re-read on each new session, so trusting a new
    client needs no restart). Used both for the secure channel's application certificate and
    for a certificate identity token."""

    def __init__(self, folder: Path, allow_anonymous: bool) -> None:
        self.folder = folder
        self.allow_anonymous = allow_anonymous
        self._store = TrustStore([folder], [])
        self._checks = CertificateValidator(
            CertificateValidatorOptions.EXT_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        )

    async def trusts(self, certificate: x509.Certificate) -> bool:
        if not any(self.folder.glob("*")):
            return False  # an empty store trusts nobody (TrustStore cannot be empty)
        await self._store.load_trust()
        return self._store.is_trusted(certificate)

    async def validate(self, certificate: x509.Certificate, app: ua.ApplicationDescription) -> None:
        await self._checks.validate(certificate, app)  # time, application URI, key usage
        if not await self.trusts(certificate):
            log.warning("OPC UA client %s refused: certificate not trusted", app.ApplicationUri)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    def get_user(self, iserver: Any, username: Any = None, password: Any = None, certificate=None):
        if certificate is None:  # anonymous: only reaches here when anonymous tokens are on
            return User(role=UserRole.User) if self.allow_anonymous else None
        cert = x509.load_der_x509_certificate(certificate)
        if self._store_trusts_now(cert):
            return User(role=UserRole.User, name=cert.subject.rfc4514_string())
        return None

    def _store_trusts_now(self, certificate: x509.Certificate) -> bool:
        # get_user is synchronous; the store was just loaded by validate() for this session
        return any(self.folder.glob("*")) and self._store.is_trusted(certificate)


class OpcUaServerLink(_OpcUaLink):
    """``opcua+server://``: this station serves the results (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._server: Server | None = None
        self._namespace = 0
        self._events: Any = None
        try:
            self._loop.run(self._start(), time.monotonic() + STARTUP_TIMEOUT_S)
        except BaseException:
            with suppress(Exception):  # the start-up error is the one to report
                self._loop.run(self._shutdown(), time.monotonic() + STARTUP_TIMEOUT_S)
            self._loop.stop()
            raise
        log.info("OPC UA server at %s (security %s)", self.endpoint, self.security.mode)

    async def _start(self) -> None:
        security = self.security
        trusted = _TrustedCertificates(security.trusted, security.allow_anonymous) if (
            security.trusted
        ) else None  # fmt: skip
        server = Server(user_manager=trusted)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("AutoWeld station")
        server.set_security_policy([_SERVER_POLICIES[security.mode]])
        tokens: list[type] = [ua.AnonymousIdentityToken] if security.allow_anonymous else []
        if security.mode != "none":
            server.iserver.certificate = _load_certificate(security.certificate)
            server.iserver.private_key = _load_private_key(security.private_key)
            await server.set_application_uri(application_uri(security.certificate))
            server.set_certificate_validator(trusted.validate)
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)
        self._namespace, root = await add_result_nodes(server, self.namespace_uri)
        event_type = await server.create_custom_event_type(
            self._namespace, RESULT_EVENT_TYPE, ua.ObjectIds.BaseEventType, list(EVENT_FIELDS)
        )
        self._events = await server.get_event_generator(event_type, root)
        self._server = server
        await server.start()

    async def _write(
        self, values: list[tuple[str, ua.Variant]], fields: dict[str, Any] | None
    ) -> None:
        assert self._server is not None
        now = datetime.now(timezone.utc)
        for path, variant in values:
            value = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
            await self._server.write_attribute_value(_node_id(path, self._namespace), value)
        if fields is not None:
            event = self._events.event
            content = fields["ResultContent"]
            for name, vtype in EVENT_FIELDS:
                value = fields[name] if name in fields else content[name]
                setattr(event, name, _variant(value, vtype, False).Value)
            event.Message = ua.LocalizedText(f"result {fields['ResultId']} {content['Decision']}")
            await self._events.trigger()

    async def _shutdown(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    def _drop(self) -> None:
        """Nothing to drop: the server stays up for its clients."""


class OpcUaClientLink(_OpcUaLink):
    """``opcua://``: this station writes to an existing server (see the module docstring).
    Connects in the background from the start; a send waits for the connection only until its
    deadline, and a connection that failed or timed out is dropped and made afresh."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Client | None = None
        self._namespace = 0
        self._connecting: asyncio.Future[Any] | None = None
        self._loop.submit(self._session())

    async def _session(self) -> Client:
        if self._client is not None:
            return self._client
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(_retrieve)
        # shielded: a deadline that runs out does not abort the connection attempt itself
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Client:
        security = self.security
        client = Client(self.endpoint, timeout=CONNECT_TIMEOUT_S)
        client.name = client.description = "AutoWeld station"
        client.session_timeout = SESSION_TIMEOUT_MS
        if security.mode != "none":
            client.application_uri = application_uri(security.certificate)
            # as bytes: asyncua reads paths on a worker thread, and a cancelled read leaks files
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                certificate=_content(security.certificate),
                private_key=_content(security.private_key),
                server_certificate=_content(security.server_certificate),
                mode=SECURITY_MODES[security.mode],
            )
            if not security.allow_anonymous:  # the certificate is the session's identity too
                client.user_certificate = _load_certificate(security.certificate)
                client.user_private_key = _load_private_key(security.private_key)
        try:
            await asyncio.wait_for(client.connect(), CONNECT_TIMEOUT_S)
            namespace = await client.get_namespace_index(self.namespace_uri)
        except BaseException as error:
            await _disconnect(client)
            log.warning("%s: cannot connect: %s", self.url, str(error) or type(error).__name__)
            raise
        self._client, self._namespace = client, namespace
        log.info("%s: connected (security %s)", self.url, security.mode)
        return client

    async def _write(
        self, values: list[tuple[str, ua.Variant]], fields: dict[str, Any] | None
    ) -> None:
        client = await self._session()
        node_ids = [_node_id(path, self._namespace) for path, _ in values]
        results = await client.uaclient.write_attributes(
            node_ids, [ua.DataValue(variant) for _, variant in values], ua.AttributeIds.Value
        )
        refused = [
            (path, code)
            for (path, _), code in zip(values, results, strict=True)
            if not code.is_good()
        ]
        if refused:
            path, code = refused[0]
            raise ConnectionError(
                f"server refused {len(refused)} of {len(values)} values (AutoWeld.{path}: "
                f"{code.name})"
            )

    def _drop(self) -> None:
        if not self._loop.stopped:
            self._loop.loop.call_soon_threadsafe(self._forget)

    def _forget(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            asyncio.ensure_future(_disconnect(client)).add_done_callback(_retrieve)

    async def _shutdown(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        client, self._client = self._client, None
        if client is not None:
            await _disconnect(client)


async def _disconnect(client: Client) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), 1.0)
    except BaseException:  # noqa: BLE001 - a dead peer cannot be told goodbye
        client.disconnect_socket()


def _path(url: str, query: dict[str, list[str]], name: str, folder: bool = False) -> Path | None:
    raw = query.pop(name, [None])[-1]
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not (path.is_dir() if folder else path.is_file()):
        kind = "folder" if folder else "file"
        raise ValueError(f"plc url {url!r}: {name}={raw} is not an existing {kind}")
    return path


def _security(url: str, query: dict[str, list[str]], serve: bool) -> OpcUaSecurity:
    mode = query.pop("security", ["sign-encrypt"])[-1]
    if mode not in SECURITY_MODES:
        raise ValueError(f"plc url {url!r}: security must be one of {sorted(SECURITY_MODES)}")
    security = OpcUaSecurity(
        mode=mode,
        certificate=_path(url, query, "cert"),
        private_key=_path(url, query, "key"),
        trusted=_path(url, query, "trusted", folder=True),
        server_certificate=_path(url, query, "server_cert"),
        allow_anonymous=query_flag(url, query, "allow_anonymous"),
    )
    if mode == "none":
        if not security.allow_anonymous:
            raise ValueError(
                f"plc url {url!r}: security=none has no certificates, so every session is "
                "anonymous: add allow_anonymous=1 to accept that"
            )
        return security
    needed = ["cert", "key", "trusted" if serve else "server_cert"]
    given = [security.certificate, security.private_key]
    given.append(security.trusted if serve else security.server_certificate)
    missing = [name for name, value in zip(needed, given, strict=True) if value is None]
    if missing:
        raise ValueError(
            f"plc url {url!r}: security={mode} needs {', '.join(f'{m}=...' for m in missing)} "
            "(make certificates with `autoweld-plant certs`)"
        )
    application_uri(security.certificate)  # refuse a certificate without one now, not later
    return security


def open_opcua(
    url: str, scheme: str, host: str, port: int, path: str, query: dict[str, list[str]],
    timeout: float,
) -> OpcUaServerLink | OpcUaClientLink:  # fmt: skip
    """The link for an ``opcua://`` or ``opcua+server://`` URL (``open_plc`` has split it and
    checks afterwards that ``query`` holds nothing unknown)."""
    serve = scheme == "opcua+server"
    security = _security(url, query, serve)
    namespace_uri = query.pop("ns", [NAMESPACE_URI])[-1]
    simulated = query_flag(url, query, "simulated")
    refuse_unknown(url, query)
    endpoint = f"opc.tcp://{host}:{port}{path}"
    kind = OpcUaServerLink if serve else OpcUaClientLink
    return kind(
        url, host, port, timeout, endpoint=endpoint, security=security,
        namespace_uri=namespace_uri, simulated=simulated,
    )  # fmt: skip


def write_application_certificate(
    out_dir: Path,
    name: str,
    *,
    uri: str | None = None,
    hostnames: Sequence[str] = (),
    days: int = 3650,
    key_size: int = 2048,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write a self-signed OPC UA application certificate ``OUT/NAME.der`` and its private key
    ``OUT/NAME.key.pem`` (owner-only). It carries what OPC UA asks (Part 6, 6.2.2): the
    application URI (default ``urn:autoweld:NAME``) and host names / IP addresses in
    subjectAltName, the four key usages, client and server auth; CA basic constraints so that a
    trust store may hold it as its own anchor. Returns (certificate, key)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / f"{name}.der", out_dir / f"{name}.key.pem"
    if not overwrite and (cert_path.exists() or key_path.exists()):
        raise FileExistsError(f"{cert_path} or {key_path} exists (overwrite to replace)")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    alt_names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(uri or f"urn:autoweld:{name}")
    ]
    for host in hostnames or (socket.gethostname(), "localhost", "127.0.0.1"):
        try:
            alt_names.append(x509.IPAddress(ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = datetime.now(timezone.utc)
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=True, key_encipherment=True,
        data_encipherment=True, key_agreement=False, key_cert_sign=True, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # a little slack for clock skew
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(eku, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert_path, key_path
