"""The benchmark's sink for inspections: PLC signal and signed ledger record, timed.

Both sides of the benchmark (the runtime and the torch way) hand their result to the same
:class:`StationSink`, which goes through :func:`autoweld.quality.record_inspection` as a station
does, so these two stages cost the same on both sides and the ratios compare only what differs. By default the sink uses a temporary SQLite ledger signed with a key
generated for the run (never a station key) and a loopback one-byte PLC started here
(:class:`LoopbackPlc`), which echoes each byte like a real controller with ``ack=echo``.
"""

from __future__ import annotations

import logging
import secrets
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from autoweld import __version__
from autoweld.quality import (
    InspectionLike,
    KeyRing,
    Ledger,
    PlcLink,
    open_ledger,
    open_plc,
    record_inspection,
)
from autoweld.quality.ledger import redact_url

__all__ = ["LoopbackPlc", "StationSink", "StationTimings"]

log = logging.getLogger(__name__)


class LoopbackPlc:
    """A one-byte TCP PLC on 127.0.0.1: echoes every byte it receives (``ack=echo``).

    Runs on a daemon thread with blocking sockets (no polling), so it costs nothing while idle.
    ``received`` counts the bytes received (each one is echoed). A context manager; :meth:`stop` closes everything.
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.received = 0
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="loopback-plc", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}?ack=echo"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed by stop()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(1)
                if not data:
                    return
                with self._lock:  # counted before the echo: a sender that got it sees the count
                    self.received += 1
                conn.sendall(data)
            except OSError:
                return

    def stop(self) -> None:
        """Close the listening socket and every connection (idempotent)."""
        self._stopped.set()
        # shutdown wakes a thread blocked in accept() on Linux; close alone may not
        for sock in [self._server, *self._connections]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._thread.join(2.0)

    def __enter__(self) -> LoopbackPlc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class StationTimings:
    """Milliseconds of the two station stages of one inspection, and what happened.

    ``late``: the record was not written in time — its deadline passed, as on a station whose
    disk stalls, or the write failed — and was queued on the ledger, to be written when the
    database allows; a PASS was corrected with a FAIL at the PLC (``record_ms`` is then the
    whole wait, ``seq`` is ``None``)."""

    record_ms: float
    plc_ms: float
    delivered: bool | None
    seq: int | None
    late: bool = False


class StationSink:
    """PLC send then ledger append through ``autoweld.quality.record_inspection``, each timed on
    its own.

    ``ledger_url``: ``None`` for a temporary SQLite ledger with a key generated for this run;
    otherwise the URL is opened with the station's key from the environment
    (``AUTOWELD_SECRET_KEY``). ``plc_url``: ``None`` starts a :class:`LoopbackPlc`. ``bundle_sha256``
    goes into every record. Call :meth:`close` (or use as a context manager).
    """

    def __init__(
        self,
        bundle_sha256: str,
        ledger_url: str | None = None,
        plc_url: str | None = None,
        station_id: str = "autoweld-bench",
        plc_timeout_s: float = 0.05,
    ) -> None:
        self.bundle_sha256 = bundle_sha256
        self.station_id = station_id
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._plc_server: LoopbackPlc | None = None
        self.ledger: Ledger
        self.link: PlcLink
        if ledger_url is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="autoweld-bench-")
            path = Path(self._tempdir.name) / "ledger.db"
            keys = KeyRing.from_secret(secrets.token_hex(32), key_id="bench-test-key")
            self.ledger = open_ledger(f"sqlite:///{path}", keys=keys)
            self.ledger_description = (
                "temporary SQLite ledger, signed with a test key generated for this run"
            )
        else:
            self.ledger = open_ledger(ledger_url)
            self.ledger_description = f"{redact_url(ledger_url)} (station key from the environment)"
        try:
            if plc_url is None:
                self._plc_server = LoopbackPlc()
                plc_url = self._plc_server.url
                self.plc_description = "loopback one-byte TCP PLC (echo) started by the bench"
            else:
                self.plc_description = plc_url
            self.link = open_plc(plc_url, timeout=plc_timeout_s)
        except BaseException:
            self.close()
            raise
        self._part = 0
        #: records that missed their deadline and were queued (written later)
        self.records_late = 0

    @property
    def plc_received(self) -> int | None:
        """Bytes the loopback PLC echoed (None with an external PLC)."""
        return self._plc_server.received if self._plc_server is not None else None

    def deliver(self, result: InspectionLike) -> StationTimings:
        """Signal ``result.decision`` and append its record (an
        :class:`~autoweld.runtime.inspector.InspectionResult` or the torch way's result).
        ``record_ms`` covers building and appending the record, ``plc_ms`` the send.

        A record that missed its deadline but was queued is a measurement (``late``, counted in
        :attr:`records_late`), not an error; a record neither written nor queued raises
        ``RuntimeError``, and so does :meth:`close` when a queued record was never written."""
        self._part += 1
        queued_before = self.ledger.queued_records
        start = time.perf_counter()
        recorded = record_inspection(
            result,
            part_id=f"bench-{self._part:06d}",
            station_id=self.station_id,
            bundle_sha256=self.bundle_sha256,
            package_version=__version__,
            ledger=self.ledger,
            link=self.link,
        )
        total_ms = (time.perf_counter() - start) * 1e3
        plc_ms = recorded.timings_ms.get("plc", 0.0)
        if recorded.record is not None:
            return StationTimings(
                record_ms=recorded.timings_ms["record"],
                plc_ms=plc_ms,
                delivered=recorded.plc_delivered,
                seq=recorded.record_seq,
            )
        if self.ledger.queued_records == queued_before:  # nothing queued: the record is lost
            raise RuntimeError(f"bench record not written: {recorded.error}")
        self.records_late += 1
        log.warning("bench record of part bench-%06d late (queued): %s", self._part,
                    recorded.error)  # fmt: skip
        return StationTimings(
            record_ms=max(0.0, total_ms - plc_ms),
            plc_ms=plc_ms,
            delivered=recorded.plc_delivered,
            seq=None,
            late=True,
        )

    def close(self) -> None:
        """Close the link, the ledger (which first waits for queued late records) and the
        loopback PLC; remove the temporary ledger. Raises ``RuntimeError`` when a queued record
        could not be written by then (the ledger logs its content CRITICAL)."""
        link = getattr(self, "link", None)
        if link is not None:
            link.close()
        ledger = getattr(self, "ledger", None)
        unwritten = ledger.close() if ledger is not None else 0  # waits for late records
        if self._plc_server is not None:
            self._plc_server.stop()
            self._plc_server = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
        if unwritten:
            raise RuntimeError(
                f"{unwritten} bench record(s) queued after a missed deadline were never written"
            )

    def __enter__(self) -> StationSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
