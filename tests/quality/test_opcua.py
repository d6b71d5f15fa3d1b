"""The OPC UA result channel (autoweld.quality.opcua) against real asyncua servers and clients on
loopback: the station's own server read by a trusted client, and the station writing to an
existing server as a client (directly, through a stalling proxy, and to dead peers)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import datetime

import pytest
from asyncua import Client, Server, ua
from asyncua.crypto.permission_rules import UserRole
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import CertificateUserManager

from autoweld.cli.plant import main as plant_main
from autoweld.quality import open_ledger, open_plc
from autoweld.quality.opcua import (
    NAMESPACE_URI,
    RESULT_EVENT_TYPE,
    OpcUaClientLink,
    OpcUaServerLink,
    add_result_nodes,
    application_uri,
)

from .conftest import free_port
from .plant_results import inspect

BUDGET_S = 0.5  # generous for a loaded CI machine: this checks "bounded", not speed
DEADLINE_S = 0.05
#: the link budget where delivery must succeed and its deadline is not the subject: a stalled
#: CI machine can spend 50 ms on one TLS write or PUBACK
CALM_S = 1.0


class Loop:
    """An asyncio loop on a thread, for the test's own OPC UA servers and clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def ua_loop():
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Certificates made by our own command: the station, a trusted reader, an intruder, and
    the existing server the station writes to in client mode."""
    folder = tmp_path_factory.mktemp("pki")
    for name in ("station", "mes", "intruder", "plc"):
        assert plant_main(["certs", "--out", str(folder), "--name", name]) == 0
    (folder / "trusted").mkdir()
    (folder / "trusted" / "mes.der").write_bytes((folder / "mes.der").read_bytes())
    return folder


def station_url(pki, port, extra=""):
    return (
        f"opcua+server://127.0.0.1:{port}/autoweld?cert={pki}/station.der"
        f"&key={pki}/station.key.pem&trusted={pki}/trusted{extra}"
    )


@pytest.fixture(scope="module")
def station(pki):
    """The station's own OPC UA server (Basic256Sha256 SignAndEncrypt, mes trusted)."""
    port = free_port()
    link = open_plc(station_url(pki, port), timeout=CALM_S)
    yield link, f"opc.tcp://127.0.0.1:{port}/autoweld"
    link.close()


async def connect(endpoint, pki, name, *, identity=True, server="station", anonymous_none=False):
    """A reader like UaExpert: own certificate for the channel and (``identity``) as the
    session's identity; or no security at all (``anonymous_none``)."""
    client = Client(endpoint, timeout=5)
    if not anonymous_none:
        client.application_uri = application_uri(pki / f"{name}.der")
        await client.set_security(
            SecurityPolicyBasic256Sha256, str(pki / f"{name}.der"), str(pki / f"{name}.key.pem"),
            server_certificate=str(pki / f"{server}.der"),
        )  # fmt: skip
        if identity:
            await client.load_client_certificate(str(pki / f"{name}.der"))
            await client.load_private_key(pki / f"{name}.key.pem")
    await client.connect()
    return client


async def read(client, paths):
    namespace = await client.get_namespace_index(NAMESPACE_URI)
    nodes = [client.get_node(ua.NodeId(f"AutoWeld.{p}", namespace)) for p in paths]
    return dict(zip(paths, await client.read_values(nodes), strict=True))


RESULT_PATHS = [
    "Decision", "Result.ResultId", "Result.PartId", "Result.CreationTime", "Result.ResultState",
    "Result.IsSimulated", "Result.ProcessingTimes.AcquisitionDuration",
    "Result.ProcessingTimes.ProcessingDuration", "Result.ResultContent.Decision",
    "Result.ResultContent.Ok", "Result.ResultContent.FusedProbability",
    "Result.ResultContent.Threshold", "Result.ResultContent.HeadNames",
    "Result.ResultContent.HeadScores", "Result.ResultContent.HeadProbabilities",
    "Result.ResultContent.StationId", "Result.ResultContent.Seq", "Result.ResultContent.Mac",
    "Result.ResultContent.KeyId", "Result.ResultContent.BundleSha256",
]  # fmt: skip


def assert_values_are_the_record(values, record):
    """What a reader sees equals the stored (signed) record."""
    created = datetime.fromisoformat(record.utc_time.replace("Z", "+00:00"))
    assert values["Decision"] == record.decision == "FAIL"
    assert values["Result.ResultId"] == record.record_id
    assert values["Result.PartId"] == record.part_id
    assert values["Result.CreationTime"] == created
    assert values["Result.ResultState"] == 1  # OPC 40100: Completed
    assert values["Result.ResultContent.Decision"] == record.decision
    assert values["Result.ResultContent.Ok"] is False
    assert values["Result.ResultContent.FusedProbability"] == record.fused_probability
    assert values["Result.ResultContent.Threshold"] == record.threshold
    assert values["Result.ResultContent.HeadNames"] == sorted(record.scores)
    assert values["Result.ResultContent.HeadScores"] == [
        record.scores[h] for h in sorted(record.scores)
    ]
    assert values["Result.ResultContent.HeadProbabilities"] == [
        record.probabilities[h] for h in sorted(record.probabilities)
    ]
    assert values["Result.ResultContent.StationId"] == record.station_id
    assert values["Result.ResultContent.Seq"] == record.seq
    assert values["Result.ResultContent.Mac"] == record.mac
    assert values["Result.ResultContent.KeyId"] == record.key_id
    assert values["Result.ResultContent.BundleSha256"] == record.bundle_sha256
    assert values["Result.ProcessingTimes.AcquisitionDuration"] == 1.5
    assert values["Result.ProcessingTimes.ProcessingDuration"] == 6.5


class EventHandler:
    def __init__(self) -> None:
        self.events: list = []

    def event_notification(self, event) -> None:
        self.events.append(event)


# ---- the station serves --------------------------------------------------------------------
def test_trusted_reader_reads_the_record_and_gets_the_result_ready_event(
    station, pki, ua_loop, tmp_path, keys
):
    link, endpoint = station
    assert isinstance(link, OpcUaServerLink)
    client = ua_loop.run(connect(endpoint, pki, "mes"))
    try:
        handler = EventHandler()

        async def subscribe():
            namespace = await client.get_namespace_index(NAMESPACE_URI)
            root = client.get_node(ua.NodeId("AutoWeld", namespace))
            event_type = await client.nodes.base_event_type.get_child(
                f"{namespace}:{RESULT_EVENT_TYPE}"
            )
            subscription = await client.create_subscription(20, handler)
            await subscription.subscribe_events(root, event_type)

        ua_loop.run(subscribe())
        with open_ledger(tmp_path / "ledger.db", keys) as ledger:
            outcome = inspect(link, ledger)
        record = outcome.record
        assert record is not None and record.seq == 1 and record.plc_delivered is True
        assert link.last_published is True and "published result of part VIN-7" in link.state
        assert_values_are_the_record(ua_loop.run(read(client, RESULT_PATHS)), record)
        deadline = time.monotonic() + 10
        while not handler.events and time.monotonic() < deadline:
            time.sleep(0.02)
        assert handler.events, "no ResultReadyEventType event arrived"
        event = handler.events[-1]
        assert (event.ResultId, event.PartId, event.Seq, event.Mac) == (
            record.record_id, record.part_id, record.seq, record.mac,
        )  # fmt: skip
        assert event.Decision == "FAIL" and event.IsSimulated is False
    finally:
        ua_loop.run(client.disconnect())


def test_client_with_a_certificate_the_station_does_not_trust_is_refused(station, pki, ua_loop):
    _, endpoint = station
    with pytest.raises(ua.UaStatusCodeError, match="BadCertificateUntrusted"):
        ua_loop.run(connect(endpoint, pki, "intruder"))


def test_anonymous_is_refused_by_default(station, pki, ua_loop):
    _, endpoint = station
    # a trusted application certificate without an identity: the anonymous token is refused
    with pytest.raises(ua.UaStatusCodeError, match="BadIdentityTokenRejected"):
        ua_loop.run(connect(endpoint, pki, "mes", identity=False))
    # and there is no endpoint without security at all
    with pytest.raises(Exception):  # noqa: B017 - asyncua raises different errors per version
        ua_loop.run(connect(endpoint, pki, "mes", anonymous_none=True))


def test_anonymous_and_simulation_only_when_asked_for(pki, ua_loop, tmp_path, keys):
    port = free_port()
    url = f"opcua+server://127.0.0.1:{port}/open?security=none&allow_anonymous=1&simulated=1"
    with open_plc(url, timeout=CALM_S) as link, open_ledger(tmp_path / "l.db", keys) as ledger:
        record = inspect(link, ledger).record
        client = ua_loop.run(
            connect(f"opc.tcp://127.0.0.1:{port}/open", pki, "", anonymous_none=True)
        )
        try:
            values = ua_loop.run(read(client, ["Result.IsSimulated", "Result.ResultContent.Mac"]))
        finally:
            ua_loop.run(client.disconnect())
    assert values == {"Result.IsSimulated": True, "Result.ResultContent.Mac": record.mac}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("?security=none", "allow_anonymous=1"),
        ("?cert=/nonexistent.der", "not an existing file"),
        ("?security=fast", "security must be one of"),
        ("?allow_anonymous=maybe", "must be 0 or 1"),
        ("?security=none&allow_anonymous=1&colour=red", "unknown parameters"),
    ],
)
def test_bad_urls_are_refused_before_anything_opens(extra, message):
    with pytest.raises(ValueError, match=message):
        open_plc(f"opcua+server://127.0.0.1:{free_port()}/x{extra}")


def test_secure_modes_need_their_certificates(pki):
    with pytest.raises(ValueError, match="trusted=..."):
        open_plc(f"opcua+server://127.0.0.1:1/x?cert={pki}/station.der&key={pki}/station.key.pem")
    with pytest.raises(ValueError, match="server_cert=..."):
        open_plc(f"opcua://127.0.0.1:1/x?cert={pki}/station.der&key={pki}/station.key.pem")


# ---- the station writes to an existing server ------------------------------------------------
@pytest.fixture(scope="module")
def plc_server(pki, ua_loop):
    """An existing OPC UA server (asyncua's own security classes, not ours) that trusts the
    station's certificate and has the AutoWeld nodes, writable."""
    port = free_port()
    trust = pki / "plc-trust"
    trust.mkdir()
    (trust / "station.der").write_bytes((pki / "station.der").read_bytes())

    async def start():
        users = CertificateUserManager()
        await users.add_role(pki / "station.der", UserRole.User, "station")
        server = Server(user_manager=users)
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plc")
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        server.set_identity_tokens([ua.X509IdentityToken])
        await server.load_certificate(str(pki / "plc.der"))
        await server.load_private_key(str(pki / "plc.key.pem"))
        await server.set_application_uri(application_uri(pki / "plc.der"))
        store = TrustStore([trust], [])
        await store.load()
        options = (
            CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        )
        server.set_certificate_validator(CertificateValidator(options, store))
        await add_result_nodes(server, writable=True)
        await server.start()
        return server

    server = ua_loop.run(start())
    yield server, port
    ua_loop.run(server.stop())


def client_url(pki, port, path="/plc"):
    return (
        f"opcua://127.0.0.1:{port}{path}?cert={pki}/station.der&key={pki}/station.key.pem"
        f"&server_cert={pki}/plc.der"
    )


def wait_connected(link, timeout=20.0):
    """The link connects in the background; a test waits for it (a station need not)."""
    deadline = time.monotonic() + timeout
    while link._client is None and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.05)
    assert link._client is not None, link.state  # noqa: SLF001


def test_client_mode_writes_the_record_in_one_request(plc_server, pki, ua_loop, tmp_path, keys):
    server, port = plc_server
    with open_plc(client_url(pki, port), timeout=CALM_S) as link:
        assert isinstance(link, OpcUaClientLink)
        wait_connected(link)
        with open_ledger(tmp_path / "ledger.db", keys) as ledger:
            outcome = inspect(link, ledger)
        assert outcome.plc_delivered is True and outcome.record.plc_delivered is True
        assert link.last_published is True, link.state

    async def read_local():
        namespace = await server.get_namespace_index(NAMESPACE_URI)
        nodes = [server.get_node(ua.NodeId(f"AutoWeld.{p}", namespace)) for p in RESULT_PATHS]
        return dict(zip(RESULT_PATHS, [await n.read_value() for n in nodes], strict=True))

    assert_values_are_the_record(ua_loop.run(read_local()), outcome.record)


class StallingProxy:
    """A TCP forwarder to a real server that can stop answering (a slow peer)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [downstream, upstream]
                if self.closed:
                    for sock in (downstream, upstream):
                        sock.close()
                    return
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.stalled.is_set():
                    time.sleep(0.01)
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.stalled.clear()
        with self.lock:
            self.closed = True
            for sock in [self.listener, *self.sockets]:
                sock.close()


def test_slow_server_costs_at_most_the_deadline_and_is_recorded(plc_server, pki, tmp_path, keys):
    _, port = plc_server
    proxy = StallingProxy(port)
    try:
        with open_plc(client_url(pki, proxy.port), timeout=DEADLINE_S) as link:
            wait_connected(link)
            proxy.stalled.set()  # from now on the server "takes forever" to answer
            with open_ledger(tmp_path / "ledger.db", keys) as ledger:
                start = time.monotonic()
                outcome = inspect(link, ledger)
                elapsed = time.monotonic() - start
        assert outcome.plc_delivered is False and outcome.record.plc_delivered is False
        assert link.last_published is False and "NOT published" in link.state
        assert elapsed < 2 * BUDGET_S, elapsed  # decision and result: one deadline each
    finally:
        proxy.close()


def test_dead_servers_cost_at_most_the_deadline_and_are_recorded(pki, tmp_path, keys):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    refused = free_port()  # nothing listens
    try:
        for port in (silent.getsockname()[1], refused):
            with open_plc(client_url(pki, port), timeout=DEADLINE_S) as link:
                with open_ledger(tmp_path / f"ledger-{port}.db", keys) as ledger:
                    for i in range(3):
                        start = time.monotonic()
                        outcome = inspect(link, ledger, part_id=f"VIN-{i}")
                        elapsed = time.monotonic() - start
                        assert outcome.record.plc_delivered is False
                        assert link.last_published is False
                        assert elapsed < 2 * BUDGET_S, (port, elapsed)
                    assert link.delivered == 0 and link.published_delivered == 0
            link.close()  # closing twice is harmless, and a closed link delivers nothing
            assert link.send("FAIL") is False and "link closed" in link.state
    finally:
        silent.close()


def test_certs_command_makes_an_opc_ua_application_certificate(tmp_path, capsys):
    from cryptography import x509

    assert (
        plant_main(["certs", "--out", str(tmp_path), "--name", "cell-3", "--host", "10.0.0.7"]) == 0
    )
    cert = x509.load_der_x509_certificate((tmp_path / "cell-3.der").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:autoweld:cell-3"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and usage.data_encipherment
    assert (tmp_path / "cell-3.key.pem").stat().st_mode & 0o077 == 0  # owner-only key
    assert "urn:autoweld:cell-3" in capsys.readouterr().out
    # an existing certificate is never silently replaced
    assert plant_main(["certs", "--out", str(tmp_path), "--name", "cell-3"]) == 2
    assert "exists" in capsys.readouterr().err
