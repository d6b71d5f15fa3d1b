"""Store and forward: a station's signed records, from its local ledger to a central one.

A station writes every record to its own SQLite ledger first (durable when ``append`` returns,
whatever the network does). A :class:`Forwarder` copies those records, in chain order, to a
central PostgreSQL ledger that holds many stations' chains (the same table, one chain per
``station_id``):

* **as signed**: records are inserted verbatim (:meth:`Ledger.insert_signed`), never re-signed,
  so the central copy verifies with the station's key. The forwarder checks each record's MAC
  and chain link before sending it: a broken local chain is refused, not spread.
* **resumable**: each pass starts from the central head of the station, so a forwarder killed at
  any point (even mid-transaction: the transaction is rolled back) resumes where the central
  ledger ends, and re-running it forwards nothing twice.
* **idempotent, never overwriting**: a record already there and byte-equal is skipped; a
  different record at the same ``(station_id, seq)`` is a :class:`ChainConflict`, reported loudly
  and never resolved by writing.
* **outages**: a database call that fails (server down, restarted, network lost) ends the pass;
  in follow mode the forwarder closes both connections, backs off (exponential, with jitter, up
  to ``max_backoff_s``) and tries again. Every database call has a deadline: on PostgreSQL the
  ledger's ``statement_timeout``/``lock_timeout`` (5 s by default), libpq's ``connect_timeout``
  (10 s) and ``tcp_user_timeout`` with keepalives (a dead peer is noticed in ~10 s); on SQLite
  the 30 s busy timeout (readers of a WAL file do not wait on the station's writer anyway).

:func:`compare_chains` proves a central copy equals a station's chain (``autoweld-ledger verify
--ledger CENTRAL --against STATION``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from autoweld.quality.keys import KeyRing, load_keyring
from autoweld.quality.ledger import (
    ChainConflict,
    Ledger,
    LedgerError,
    RecordPlaceError,
    UnreadableRecord,
    open_ledger,
    redact_url,
    signed_equal,
)
from autoweld.quality.record import InspectionRecord, mac_matches

__all__ = [
    "ChainComparison",
    "ChainConflict",
    "ForwardPass",
    "Forwarder",
    "compare_chains",
    "forward_backlog",
]

logger = logging.getLogger(__name__)

#: Records per central transaction.
DEFAULT_BATCH = 500
#: Seconds between passes when everything is forwarded.
DEFAULT_POLL_S = 2.0
#: Longest wait between retries while a ledger is unreachable.
DEFAULT_MAX_BACKOFF_S = 30.0
#: First retry wait after a failure (doubles up to the maximum).
FIRST_BACKOFF_S = 0.5


@dataclass(frozen=True)
class ForwardPass:
    """What one pass did: records ``forwarded`` (inserted centrally), ``skipped`` (already there,
    byte-equal), and the ``backlog`` per station left after it (0: the central copy is complete
    as of the pass)."""

    forwarded: int
    skipped: int
    backlog: dict[str, int]
    seconds: float

    @property
    def backlog_total(self) -> int:
        return sum(self.backlog.values())


def forward_backlog(local: Ledger, central: Ledger) -> dict[str, int]:
    """Records of each station of ``local`` not yet in ``central`` (by seq; 0 when complete).
    A central ledger ahead of the station counts 0 here; the forwarder reports it as a
    conflict."""
    return {
        station: max(0, seq - central.chain_head(station)[0])
        for station, (seq, _mac) in local.heads().items()
    }


def _check_local_chain(
    keys: KeyRing, records: list[InspectionRecord], prev: tuple[int, str]
) -> None:
    """Refuse to forward a record whose MAC or link to ``prev`` (seq, mac) does not hold."""
    seq, mac = prev
    for record in records:
        key = keys.key_for(record.key_id or "")
        if record.seq != seq + 1 or record.prev_mac != mac:
            why = f"is not chained to record {seq}"
        elif key is None:
            why = f"is signed with unknown key id {record.key_id!r} (add it to the verify keys)"
        elif not mac_matches(key, record):
            why = "MAC does not match its content"
        else:
            seq, mac = record.seq, record.mac
            continue
        raise ChainConflict(
            f"local record {record.seq} of station {record.station_id!r} {why}: not forwarded "
            "(run `autoweld-ledger verify` on the station ledger)",
            record.station_id,
            record.seq,
        )


class Forwarder:
    """Forwards every station chain of the ``local`` ledger to the ``central`` one.

    ``local``/``central``: ledger URLs (or open :class:`Ledger` objects, which the forwarder then
    neither re-opens nor closes). The local ledger is opened read-only. ``keys``: verify keys of
    the station (by default from the environment). :meth:`run_once` makes one pass,
    :meth:`run` follows until stopped, :meth:`start` runs that in a background thread (the
    operator terminal), :meth:`status` says how far it is, for a page.
    """

    def __init__(
        self,
        local: str | Ledger,
        central: str | Ledger,
        keys: KeyRing | None = None,
        *,
        batch_size: int = DEFAULT_BATCH,
        poll_s: float = DEFAULT_POLL_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not poll_s > 0 or not max_backoff_s > 0:
            raise ValueError("poll_s and max_backoff_s must be > 0")
        self.keys = load_keyring() if keys is None else keys
        self._local_source, self._central_source = local, central
        self._local: Ledger | None = local if isinstance(local, Ledger) else None
        self._central: Ledger | None = central if isinstance(central, Ledger) else None
        self.central_url = redact_url(central.url if isinstance(central, Ledger) else central)
        self.batch_size, self.poll_s, self.max_backoff_s = batch_size, poll_s, max_backoff_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_also: threading.Event | None = None  # run(stop): the caller's event
        self._thread: threading.Thread | None = None
        self._status: dict[str, Any] = {
            "central": self.central_url,
            "state": "starting",
            "backlog": None,
            "backlog_total": None,
            "forwarded": 0,
            "last_pass_utc": None,
            "last_error": None,
        }

    # ---- connections ------------------------------------------------------------------------
    def _ledgers(self) -> tuple[Ledger, Ledger]:
        if self._local is None:
            self._local = open_ledger(self._local_source, self.keys, read_only=True)
        if self._central is None:
            self._central = open_ledger(self._central_source, self.keys)
        return self._local, self._central

    def _drop_connections(self) -> None:
        """After a failure: close what the forwarder opened, so the next pass opens afresh."""
        for name, source in (("_local", self._local_source), ("_central", self._central_source)):
            ledger = getattr(self, name)
            if ledger is not None and not isinstance(source, Ledger):
                try:
                    ledger.close()
                except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                    logger.debug("closing %s failed", name, exc_info=True)
                setattr(self, name, None)

    def close(self) -> None:
        """Stop the background thread (if any) and close the ledgers the forwarder opened."""
        self.stop()
        self._drop_connections()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- forwarding -------------------------------------------------------------------------
    def run_once(self) -> ForwardPass:
        """One pass over every station of the local ledger.

        Raises :class:`ChainConflict` (the central ledger holds other records for a station, or
        the local chain is broken: nothing is overwritten or sent) and :class:`LedgerError`
        (a ledger is unreachable; run again later).
        """
        start = time.monotonic()
        local, central = self._ledgers()
        forwarded = skipped = 0
        backlog: dict[str, int] = {}
        for station, (local_seq, _mac) in local.heads().items():
            inserted, already, left = self._forward_station(local, central, station, local_seq)
            forwarded, skipped, backlog[station] = forwarded + inserted, skipped + already, left
        done = ForwardPass(forwarded, skipped, backlog, time.monotonic() - start)
        with self._lock:
            self._status.update(
                state="ok", backlog=dict(backlog), backlog_total=done.backlog_total,
                forwarded=self._status["forwarded"] + forwarded, last_error=None,
                last_pass_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )  # fmt: skip
        if forwarded or skipped:
            logger.info(
                "forwarded %d record(s) (%d already there) to %s in %.2f s; backlog %d",
                forwarded, skipped, self.central_url, done.seconds, done.backlog_total,
            )  # fmt: skip
        return done

    def _forward_station(
        self, local: Ledger, central: Ledger, station: str, local_seq: int
    ) -> tuple[int, int, int]:
        """Forward one station from the central head on: (inserted, skipped, backlog left)."""
        central_seq, central_mac = central.chain_head(station)
        if central_seq > local_seq:
            raise ChainConflict(
                f"the central ledger holds {central_seq} records of station {station!r} but the "
                f"local ledger only {local_seq}: a replaced or forked station ledger",
                station,
                local_seq + 1,
            )
        if central_seq:  # the place to resume from must be the same record on both sides
            mine = local.chain_after(station, central_seq - 1, 1)
            theirs = central.chain_after(station, central_seq - 1, 1)
            if not mine or not theirs or not signed_equal(mine[0], theirs[0]):
                raise ChainConflict(
                    f"the central ledger's record {central_seq} of station {station!r} differs "
                    "from the local one (a forked station chain, or a tampered central copy)",
                    station,
                    central_seq,
                )
        inserted = skipped = 0
        while central_seq < local_seq and not self._stopping():
            batch = local.chain_after(station, central_seq, self.batch_size)
            if not batch:
                break
            _check_local_chain(self.keys, batch, (central_seq, central_mac))
            added, already = central.insert_signed(batch)
            inserted, skipped = inserted + added, skipped + already
            central_seq, central_mac = batch[-1].seq, batch[-1].mac
            logger.debug("station %s: central head now %d of %d", station, central_seq, local_seq)
        return inserted, skipped, max(0, local_seq - central_seq)

    def run(self, stop: threading.Event | None = None) -> None:
        """Forward until ``stop`` (or :meth:`stop`) is set: a pass every ``poll_s`` seconds;
        after a failed pass, close the connections and retry with exponential backoff.
        Returns when stopped; raises :class:`ChainConflict` or :class:`UnreadableRecord`
        (retrying cannot fix those)."""
        self._stop_also = stop
        failures = 0
        while not self._stopping():
            try:
                self.run_once()
                if failures:
                    logger.info("forwarding to %s works again after %d failed attempt(s)",
                                self.central_url, failures)  # fmt: skip
                failures, wait = 0, self.poll_s
            except RecordPlaceError as error:  # a conflict or an unreadable record
                self._record_failure("conflict", error)
                logger.error("forwarding stopped: %s", redact_url(str(error)))
                raise
            except (LedgerError, OSError) as error:
                failures += 1
                wait = min(self.max_backoff_s, FIRST_BACKOFF_S * 2 ** (failures - 1))
                wait *= random.uniform(0.5, 1.0)  # stations restarting together spread out
                self._record_failure("retrying", error)
                logger.warning(
                    "forwarding to %s failed (attempt %d), retrying in %.1f s: %s",
                    self.central_url, failures, wait, redact_url(str(error)),
                )  # fmt: skip
                self._drop_connections()
            self._sleep(wait)
        with self._lock:
            self._status["state"] = "stopped"  # a conflict raised above and keeps its state

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self._stop_also is not None and self._stop_also.is_set())

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when either stop event is set."""
        deadline = time.monotonic() + seconds
        while not self._stopping() and (left := deadline - time.monotonic()) > 0:
            self._stop.wait(min(left, 0.1))

    def _record_failure(self, state: str, error: BaseException) -> None:
        with self._lock:
            self._status.update(state=state, last_error=redact_url(str(error)))

    # ---- background thread (the terminal) ---------------------------------------------------
    def start(self) -> Forwarder:
        """Run :meth:`run` in a daemon thread; :meth:`stop` ends it."""
        if self._thread is not None:
            raise RuntimeError("the forwarder is already started")
        self._thread = threading.Thread(target=self._run_quietly, name="forwarder", daemon=True)
        self._thread.start()
        return self

    def _run_quietly(self) -> None:
        try:
            self.run()
        except RecordPlaceError:
            pass  # logged and in status(); the station keeps inspecting and recording locally
        except Exception as error:  # noqa: BLE001 - e.g. a ledger that cannot be opened at all
            # the page must not go on showing "starting"/"retrying" for a thread that has ended
            self._record_failure("stopped", error)
            logger.error("forwarding stopped: %s", redact_url(str(error)))

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait up to ``timeout`` seconds for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        """JSON-ready: ``central`` (redacted URL), ``state`` (starting, ok, retrying, conflict,
        stopped), ``backlog`` per station and ``backlog_total`` as of the last good pass (None
        before one), ``forwarded`` since start, ``last_pass_utc``, ``last_error``."""
        with self._lock:
            out = dict(self._status)
            out["backlog"] = dict(out["backlog"]) if out["backlog"] is not None else None
            return out


# ---- proving a central copy equal to the station chains -------------------------------------
@dataclass(frozen=True)
class ChainComparison:
    """One station's chain in a station ledger against its copy in a central ledger.

    ``state``: ``equal`` (same records, byte for byte, nothing more or less), ``behind`` (the
    central copy is an intact prefix; ``station_records - central_records`` not forwarded yet),
    or ``differs`` (``first_bad_seq``/``reason``: a record differs, is missing from the middle,
    is unreadable, or the central ledger holds records the station does not).
    """

    station_id: str
    state: str
    station_records: int
    central_records: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "station_id": self.station_id,
            "state": self.state,
            "station_records": self.station_records,
            "central_records": self.central_records,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


def _batches(
    ledger: Ledger, station: str, batch: int
) -> Iterator[tuple[list[InspectionRecord], UnreadableRecord | None]]:
    """A station's chain in batches; an unreadable row ends it: (the rows before it, why)."""
    after = 0
    while True:
        try:
            records = ledger.chain_after(station, after, batch)
        except UnreadableRecord as error:
            yield _readable_prefix(ledger, station, after), error
            return
        yield records, None
        if len(records) < batch:
            return
        after = records[-1].seq


def _readable_prefix(ledger: Ledger, station: str, after: int) -> list[InspectionRecord]:
    """The records after ``after`` up to the first unreadable one, read one at a time."""
    records: list[InspectionRecord] = []
    while True:
        try:
            one = ledger.chain_after(station, records[-1].seq if records else after, 1)
        except UnreadableRecord:
            return records
        if not one:
            return records
        records += one


def compare_chains(
    central: Ledger, station_ledger: Ledger, station: str, batch: int = 2000
) -> ChainComparison:
    """Walk ``station``'s chain in both ledgers side by side (bounded memory) and say whether
    the central copy equals it (:class:`ChainComparison`). It compares records byte for byte;
    that each chain is well signed is :meth:`Ledger.verify`'s job (run both)."""
    theirs = _batches(central, station, batch)
    counts = [0, 0]  # station, central

    def result(state: str, seq: int | None = None, reason: str | None = None) -> ChainComparison:
        if state != "equal":  # the walk stopped early: count both sides whole
            counts[:] = station_ledger.count(station), central.count(station)
        return ChainComparison(station, state, counts[0], counts[1], seq, reason)

    for mine, _ in _batches(station_ledger, station, batch):
        copy, unreadable = next(theirs, ([], None))
        counts[0] += len(mine)
        counts[1] += len(copy)
        for a, b in zip(mine, copy, strict=False):
            if a.seq != b.seq:
                seq = min(a.seq, b.seq)
                return result("differs", seq, f"record {seq} is in one ledger only")
            if not signed_equal(a, b):
                why = "differs from the station's (a tampered central copy or a forked chain)"
                return result("differs", a.seq, f"central record {a.seq} {why}")
        if unreadable is not None:
            missing = mine[len(copy)].seq if len(copy) < len(mine) else unreadable.seq
            if missing < unreadable.seq:
                return result("differs", missing, f"record {missing} is in one ledger only")
            return result("differs", unreadable.seq, str(unreadable))
        if len(copy) != len(mine):
            break
    if counts[1] < counts[0]:
        return result("behind")
    if counts[1] > counts[0]:
        seq = counts[0] + 1
        why = "that the station ledger does not (a replaced or forked station ledger)"
        return result("differs", seq, f"the central ledger holds records from {seq} on {why}")
    return result("equal")
