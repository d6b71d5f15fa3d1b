"""Fixtures for the quality tests: keys, records, and real servers on loopback (PostgreSQL,
Modbus TCP, plain TCP) that the tests start and stop themselves."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autoweld.quality import InspectionRecord, KeyRing

SECRET = "test-secret-0123456789abcdef-ghijklmnop"
OLD_SECRET = "older-secret-0123456789abcdef-ghijklmnop"
BUNDLE_SHA = "ab" * 32


def wait_until(condition, timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Polls ``condition`` until it holds or ``timeout`` seconds pass; returns whether it holds.
    A synchronisation with a background thread, not a timing: the caller asserts what must
    hold."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= end:
            return False
        time.sleep(interval)
    return True


def wait_written(ledger, timeout: float = 10.0) -> int:
    """Waits for the ledger's queued records to be written; how many still wait after
    ``timeout`` seconds (0: all written)."""
    wait_until(lambda: not ledger.pending_records, timeout, 0.02)
    return ledger.pending_records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing.from_secret(SECRET, "k1")


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The signing key in the environment, as a station would have it."""
    env = {"AUTOWELD_SECRET_KEY": SECRET, "AUTOWELD_KEY_ID": "k1"}
    for name in ("AUTOWELD_VERIFY_KEYS", "AUTOWELD_VERIFY_KEYS_FILE", "AUTOWELD_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def make_record(i: int = 0, station: str = "st-1", **overrides: object) -> InspectionRecord:
    """A realistic inspection record; odd ``i`` fail."""
    probability = (i % 10) / 10 + 0.05
    values: dict[str, object] = dict(
        station_id=station,
        part_id=f"VIN-{i:06d}",
        bundle_sha256=BUNDLE_SHA,
        package_version="0.1.0",
        decision="FAIL" if i % 2 else "PASS",
        scores={"patchcore": 1.0 + i / 3, "student": 0.1 * i},
        probabilities={"patchcore": probability, "student": probability / 2},
        fused_probability=probability,
        threshold=0.5,
    )
    values.update(overrides)
    return InspectionRecord(**values)  # type: ignore[arg-type]


# ---- PostgreSQL ----------------------------------------------------------------------------
@dataclass
class PostgresServer:
    host: str
    port: int
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def _pg_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK) and os.access(
            os.path.join(candidate, "pg_ctl"), os.X_OK
        ):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server in a temporary directory, on a free loopback port, with
    trust authentication on 127.0.0.1. As root it runs as the ``postgres`` system user (initdb
    refuses root)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[test]')")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin"
            " or on PATH; install Debian's 'postgresql' package (.ci/run does)"
        )
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="autoweld-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root but there is no 'postgres' system user to run the server")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    port = free_port()

    def run(*args: str) -> None:
        out = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed:\n{out.stdout}\n{out.stderr}\n{server_log}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
        "--no-sync")  # fmt: skip
    # fsync off: these tests prove chains, triggers and concurrency, not PostgreSQL's own
    # crash safety; the machine running them is small and shared.
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c max_connections=60 -c shared_buffers=32MB"
    )
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "90",
        "start")  # fmt: skip
    try:
        yield PostgresServer("127.0.0.1", port)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test."""
    import psycopg

    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- PLC servers ---------------------------------------------------------------------------
class ModbusServer:
    """A real pymodbus TCP server (asyncio, in its own thread) with 16 holding registers."""

    def __init__(self, port: int | None = None) -> None:
        from pymodbus.datastore import (
            ModbusDeviceContext,
            ModbusSequentialDataBlock,
            ModbusServerContext,
        )
        from pymodbus.server import ModbusTcpServer

        self.port = port or free_port()
        self._stopped = False
        # pymodbus quirk: a block starting at address 1 holds protocol register 0
        device = ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, [0] * 16))
        self.context = ModbusServerContext(devices={1: device}, single=False)
        self.loop = asyncio.new_event_loop()
        self._server_cls = ModbusTcpServer
        self._server = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("pymodbus server did not start")
        self._wait_listening()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._server = self._server_cls(self.context, address=("127.0.0.1", self.port))
            self._ready.set()
            await self._server.serve_forever()

        self.loop.run_until_complete(main())

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("pymodbus server is not listening")

    def read(self, register: int, count: int, unit: int = 1) -> list[int]:
        """Read holding registers back through the protocol, as the PLC program would see them."""
        from pymodbus.client import ModbusTcpClient

        with ModbusTcpClient("127.0.0.1", port=self.port, timeout=2) as client:
            response = client.read_holding_registers(register, count=count, device_id=unit)
            assert not response.isError(), response
            return list(response.registers)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self.loop).result(10)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def modbus_server() -> Iterator[ModbusServer]:
    server = ModbusServer()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class ByteServer:
    """A plain TCP PLC on loopback. ``mode``: 'echo' reads each byte and echoes it, 'close'
    echoes one byte then closes the connection (a restarting PLC), 'silent' accepts and never
    reads nor answers (a hung PLC)."""

    mode: str = "echo"
    port: int = 0
    received: list[int] = field(default_factory=list)
    connections: int = 0
    closed_by_server: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            self._held.append(conn)
            if self.mode != "silent":
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data = conn.recv(1)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.received.append(data[0])
            conn.sendall(data)
            if self.mode == "close":
                conn.close()
                self.closed_by_server += 1
                return

    def wait_received(self, n: int, timeout: float = 2.0) -> list[int]:
        wait_until(lambda: len(self.received) >= n, timeout)
        return list(self.received)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()


@pytest.fixture
def byte_server_factory() -> Iterator:
    servers: list[ByteServer] = []

    def start(mode: str = "echo") -> ByteServer:
        server = ByteServer(mode)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(name="make_record")
def make_record_fixture():
    """The :func:`make_record` builder, for tests."""
    return make_record
