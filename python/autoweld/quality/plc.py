"""The PLC link: tell the line controller PASS or FAIL without ever stalling inspection.

Chosen by URL (:func:`open_plc`):

* ``tcp://host:port[?ack=echo|none]`` — the one-byte signal: ``0x00`` PASS, ``0x01`` FAIL. With
  ``ack=echo`` (default) the PLC echoes the byte back and only then is the signal *delivered*;
  ``ack=none`` is for controllers that cannot answer — then delivered only means the byte was
  handed to the operating system, and a PLC that accepts but never reads is not detected.
* ``modbus://host:port[?unit=1&register=0]`` — Modbus TCP through pymodbus, retries off: one
  ``write_registers`` (function 16) puts ``[result, counter]`` at ``register``: result ``1`` PASS,
  ``2`` FAIL (``0`` is never written: it means "no result"), counter ``1..65535`` increments on
  every attempt (wrapping to 1) so the PLC sees each new inspection, even a repeated result.
* ``opcua://``, ``opcua+server://``, ``mqtt://`` — results for the plant (OPC 40100 over OPC UA,
  JSON over MQTT): the decision here, then the full result after the record (docs/plant.md).

``send`` never raises for a down, refusing or slow PLC and never blocks beyond ``timeout`` after
the decision (plus a little overhead): it returns ``False`` and the caller records "not
delivered". Sends are serialised on one worker thread per link, in order; one whose deadline
passed while it waited is not sent late. A missing signal never counts as a pass — the PLC must
treat "no fresh result" as not OK.
"""

from __future__ import annotations

import logging
import math
import queue
import random
import select
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 0.05
#: How long past a signal's deadline its sender waits for the worker's answer (thread hand-over).
WAIT_SLACK_S = 0.005
TCP_CODES = {"PASS": 0x00, "FAIL": 0x01}
MODBUS_CODES = {"PASS": 1, "FAIL": 2}


def _check_decision(decision: str) -> None:
    if decision not in TCP_CODES:
        raise ValueError(f"decision must be 'PASS' or 'FAIL', got {decision!r}")


@dataclass
class _Signal:
    """One queued signal: what to send and by when (``time.monotonic()`` seconds)."""

    decision: str
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    delivered: bool = False
    started: bool = False
    abandoned: bool = False


class PlcLink(ABC):
    """A connection to one PLC. Thread-safe; a context manager.

    Signals are sent one at a time, in the order they were asked for, by one worker thread per
    link (started on the first send). Each signal's deadline is ``timeout`` after the decision
    it carries (``decided_at``), not after the worker got to it: a signal whose deadline has
    passed while it waited behind others is reported as not delivered and never sent late (a
    late byte has no part id, so the PLC would take it as the *next* part's result).
    """

    def __init__(self, url: str, host: str, port: int, timeout: float) -> None:
        self.url = url
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sent = 0
        self.delivered = 0
        self.skipped_late = 0
        self.last_delivered: bool | None = None
        self._state = "not used yet"
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Signal | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = False

    @property
    def state(self) -> str:
        """One line for the operator page: the outcome of the last signal."""
        return f"{self.url}: {self._state} ({self.delivered}/{self.sent} delivered)"

    def send(self, decision: str, decided_at: float | None = None) -> bool:
        """Signal ``decision`` (``"PASS"``/``"FAIL"``); ``True`` only when the PLC confirmed it.

        ``decided_at`` (``time.monotonic()`` seconds, default now) is when the decision was
        made; the signal must be delivered within ``timeout`` of it. Never raises for PLC
        trouble; returns by that deadline plus a small overhead."""
        return self.submit(decision, decided_at)()

    def submit(self, decision: str, decided_at: float | None = None) -> Callable[[], bool]:
        """Queue the signal and return at once (safe from a timer thread); the returned
        function waits for the outcome and gives what :meth:`send` would have returned."""
        _check_decision(decision)
        start = time.monotonic() if decided_at is None else decided_at
        signal = _Signal(decision, start + self.timeout)
        with self._lock:
            if self._closed:
                self._state = f"NOT delivered {decision}: link closed"
                self.last_delivered = False
                return lambda: False
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name=f"plc-{self.host}:{self.port}", daemon=True
                )
                self._worker.start()
            self._queue.put(signal)
        return lambda: self._outcome(signal)

    def _outcome(self, signal: _Signal) -> bool:
        if signal.done.wait(max(0.0, signal.deadline - time.monotonic()) + WAIT_SLACK_S):
            return signal.delivered
        with self._lock:  # the worker has not finished it in time
            if not signal.started:
                signal.abandoned = True  # it will not be sent late
                return False
        # being sent: _send respects the deadline, so this wait is short
        signal.done.wait(self.timeout)
        return signal.delivered

    def _run(self) -> None:
        while True:
            signal = self._queue.get()
            if signal is None:
                return
            with self._lock:
                late = signal.abandoned or time.monotonic() >= signal.deadline
                signal.started = not late
            if late:
                self._skip(signal)
            else:
                signal.delivered = self._deliver(signal.decision, signal.deadline)
            signal.done.set()

    def _skip(self, signal: _Signal) -> None:
        over = (time.monotonic() - signal.deadline) * 1000
        self.skipped_late += 1
        self.last_delivered = False
        self._state = (
            f"NOT delivered {signal.decision}: its {self.timeout * 1000:.0f} ms budget ran out "
            f"{over:.1f} ms before its turn (not sent late)"
        )
        logger.warning("PLC %s: %s", self.url, self._state)

    def _deliver(self, decision: str, deadline: float) -> bool:
        """Send one signal on the worker; ``True`` when confirmed before ``deadline``."""
        start = time.monotonic()
        self.sent += 1
        try:
            self._send(decision, deadline)
        except Exception as error:  # noqa: BLE001 - a PLC problem must never stop inspection
            try:
                self._drop()
            except Exception:  # noqa: BLE001 - closing a broken socket may fail too
                pass
            elapsed = (time.monotonic() - start) * 1000
            why = str(error) or type(error).__name__
            self._state = f"NOT delivered {decision} after {elapsed:.1f} ms: {why}"
            logger.warning("PLC %s: %s", self.url, self._state)
            self.last_delivered = False
            return False
        elapsed = (time.monotonic() - start) * 1000
        self.delivered += 1
        self.last_delivered = True
        self._state = f"delivered {decision} in {elapsed:.1f} ms"
        return True

    @abstractmethod
    def _send(self, decision: str, deadline: float) -> None:
        """Deliver or raise; must respect ``deadline`` (``time.monotonic()`` seconds)."""

    @abstractmethod
    def _drop(self) -> None:
        """Forget the connection after a failure; the next send reconnects."""

    def close(self) -> None:
        """Stop the worker and close the connection (idempotent)."""
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            self._queue.put(None)
            worker.join(self.timeout + 1.0)
        self._drop()

    def __enter__(self) -> PlcLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, timeout={self.timeout})"


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timeout budget spent")
    return left


class TcpByteLink(PlcLink):
    """``tcp://``: one byte per inspection on a kept-open connection."""

    def __init__(self, url: str, host: str, port: int, timeout: float, ack: bool) -> None:
        super().__init__(url, host, port, timeout)
        self.ack = ack
        self._sock: socket.socket | None = None

    def _connection(self, deadline: float) -> socket.socket:
        sock = self._sock
        if sock is not None:
            # a kept connection the PLC closed (or filled with junk) is stale: start afresh
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                self._drop()
                sock = None
        if sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=_remaining(deadline))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return sock

    def _send(self, decision: str, deadline: float) -> None:
        code = TCP_CODES[decision]
        sock = self._connection(deadline)
        sock.settimeout(_remaining(deadline))
        sock.sendall(bytes([code]))
        if not self.ack:
            return
        sock.settimeout(_remaining(deadline))
        reply = sock.recv(1)
        if not reply:
            raise ConnectionError("PLC closed the connection without acknowledging")
        if reply[0] != code:
            raise ConnectionError(f"PLC acknowledged 0x{reply[0]:02x}, expected 0x{code:02x}")

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class ModbusLink(PlcLink):
    """``modbus://``: result code + inspection counter written with one request, no retries."""

    def __init__(
        self, url: str, host: str, port: int, timeout: float, unit: int, register: int
    ) -> None:
        super().__init__(url, host, port, timeout)
        from pymodbus.client import ModbusTcpClient  # lazily: only stations with Modbus need it

        self.unit = unit
        self.register = register
        # A fresh random start, so a restarted station never repeats the counter the PLC saw last.
        self.counter = random.randint(1, 65535)
        self._client = ModbusTcpClient(host, port=port, timeout=timeout, retries=0)

    def _next_counter(self) -> int:
        self.counter = self.counter % 65535 + 1
        return self.counter

    def _send(self, decision: str, deadline: float) -> None:
        counter = self._next_counter()  # every attempt counts: a lost reply may hide a delivery
        sock = self._client.socket
        if sock is not None and select.select([sock], [], [], 0)[0]:
            self._drop()  # the PLC closed the kept connection (or sent junk): start afresh
        params = self._client.comm_params
        params.timeout_connect = _remaining(deadline)
        if not self._client.connect():
            raise ConnectionError("cannot connect")
        params.timeout_connect = _remaining(deadline)
        response = self._client.write_registers(
            self.register, [MODBUS_CODES[decision], counter], device_id=self.unit
        )
        if response.isError():
            raise ConnectionError(f"PLC answered with an error: {response}")

    def _drop(self) -> None:
        self._client.close()


def _port(url: str, value: int | None) -> int:
    if value is None:
        raise ValueError(f"plc url {url!r} needs a port (host:port)")
    return value


def _query_int(url: str, query: dict[str, list[str]], name: str, default: int, hi: int) -> int:
    raw = query.pop(name, [str(default)])[-1]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"plc url {url!r}: {name} must be an integer, got {raw!r}") from None
    if not 0 <= value <= hi:
        raise ValueError(f"plc url {url!r}: {name} must be in 0..{hi}, got {value}")
    return value


def open_plc(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> PlcLink:
    """Open the PLC link named by ``url`` (see the module docstring). Connects lazily, on the
    first ``send``, so a PLC that is down at start-up does not stop the station."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (math.isfinite(timeout) and 0 < timeout <= 10)
    ):
        raise ValueError(f"timeout must be a number of seconds in (0, 10], got {timeout!r}")
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"plc url must look like tcp://host:port or modbus://host:port, got {url!r}"
        )
    parts = urlsplit(url)
    try:
        port = _port(url, parts.port)
    except ValueError as error:
        raise ValueError(f"plc url {url!r}: {error}") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"plc url {url!r} needs a host")
    query = parse_qs(parts.query, keep_blank_values=True)
    scheme = parts.scheme.lower()
    if scheme == "tcp":
        ack = query.pop("ack", ["echo"])[-1]
        if ack not in ("echo", "none"):
            raise ValueError(f"plc url {url!r}: ack must be 'echo' or 'none', got {ack!r}")
        link: PlcLink = TcpByteLink(url, host, port, float(timeout), ack == "echo")
    elif scheme == "modbus":
        unit = _query_int(url, query, "unit", 1, 255)
        register = _query_int(url, query, "register", 0, 65534)
        link = ModbusLink(url, host, port, float(timeout), unit, register)
    elif scheme in ("opcua", "opcua+server", "mqtt"):  # results for the plant: docs/plant.md
        # lazily: only stations with these links need asyncua or paho-mqtt
        module = import_module("autoweld.quality." + ("mqtt" if scheme == "mqtt" else "opcua"))
        opener = module.open_mqtt if scheme == "mqtt" else module.open_opcua
        link = opener(url, scheme, host, port, parts.path, query, float(timeout))
    else:
        raise ValueError(
            f"plc url {url!r}: unknown scheme {scheme!r} "
            "(use tcp://, modbus://, opcua://, opcua+server:// or mqtt://)"
        )
    if query:
        raise ValueError(f"plc url {url!r}: unknown parameters {sorted(query)}")
    return link
