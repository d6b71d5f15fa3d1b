"""The quality ledger: signed, per-station hash-chained inspection records in a real database.

Backends, chosen by URL (:func:`open_ledger`):

* ``sqlite:///relative/ledger.db``, ``sqlite:////absolute/ledger.db`` or a plain file path — the
  embedded default (WAL journal, ``synchronous=FULL``: a record is on disk when ``append``
  returns).
* ``postgresql://user@host:port/dbname`` — for many stations. Appends of one station are
  serialised by a transaction-scoped advisory lock on the station id, so concurrent writers of
  the same station never fork its chain while different stations do not wait for each other.

Both use the same table, and both install triggers that refuse ``UPDATE`` and ``DELETE`` (and,
on PostgreSQL, ``TRUNCATE``). The triggers stop accidents; the MAC chain is what proves
integrity: :meth:`Ledger.verify` detects edited, deleted, inserted and reordered records, and with
an externally kept head (:meth:`Ledger.head`) a truncated tail as well.
"""

from __future__ import annotations

import csv
import heapq
import hmac
import json
import logging
import os
import random
import re
import socket
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from tqdm import tqdm

from autoweld.quality.keys import KeyRing, load_keyring
from autoweld.quality.record import (
    GENESIS_MAC,
    InspectionRecord,
    canonical_bytes,
    compute_mac,
)

logger = logging.getLogger(__name__)

#: The schema new ledgers get: typed, strict storage (docs/ledger.md, "Schema").
SCHEMA_VERSION = 2
#: Schema versions this AutoWeld opens: 1 is the untyped table of earlier releases (read and
#: appended to as it is; its one missing column is added on the first writable open).
KNOWN_SCHEMA_VERSIONS = (1, 2)
TABLE = "ledger_records"
#: Columns read and written; scores/probabilities are stored as canonical JSON text.
COLUMNS = (
    "station_id", "seq", "record_id", "utc_time", "part_id", "bundle_sha256", "package_version",
    "scores_json", "probabilities_json", "fused_probability", "threshold", "decision",
    "heatmap_sha256", "heatmap_path", "plc_delivered", "bundle_signed", "error", "key_id",
    "prev_mac", "mac",
)  # fmt: skip
#: Columns a schema-1 table may lack (added by the first writable open; read as NULL before)
ADDED_COLUMNS = ("bundle_signed",)
RECORD_FIELDS = tuple(f.name for f in fields(InspectionRecord))
#: CSV column order: chain position first, then what was inspected, then the signature
EXPORT_FIELDS = (
    "station_id", "seq", "record_id", "utc_time", "part_id", "decision", "fused_probability",
    "threshold", "scores", "probabilities", "error", "plc_delivered", "bundle_signed",
    "bundle_sha256",
    "package_version", "heatmap_sha256", "heatmap_path", "key_id", "prev_mac", "mac",
)  # fmt: skip
assert sorted(EXPORT_FIELDS) == sorted(RECORD_FIELDS)

# Schema 2, one column list for both backends: (name, SQLite type, PostgreSQL type, NOT NULL,
# checks). SQLite stores whatever storage class a writer gives it unless told otherwise, so its
# table is STRICT (SQLite >= 3.37) *and* checks typeof() per column (older SQLite, and the
# values STRICT would convert); PostgreSQL's own types do that there. Both check the forms the
# record's canonical JSON signs. What a CHECK cannot see (canonical JSON text, duplicate keys)
# verify checks, record by record.
_HEX64_SQLITE = "length({c}) = 64 AND {c} NOT GLOB '*[^0-9a-f]*'"
_HEX64_PG = "{c} ~ '^[0-9a-f]{{64}}$'"
_JSON_OBJECT_SQLITE = "json_valid({c}) AND json_type({c}) = 'object'"
_JSON_OBJECT_PG = "jsonb_typeof({c}::jsonb) = 'object'"
_SCHEMA_COLUMNS = (
    ("station_id", "TEXT", "TEXT", True, ("length({c}) > 0",)),
    ("seq", "INTEGER", "BIGINT", True, ("{c} >= 1",)),
    ("record_id", "TEXT", "TEXT", True, ("length({c}) > 0",)),
    ("utc_time", "TEXT", "TEXT", True, ("length({c}) > 0",)),
    ("part_id", "TEXT", "TEXT", True, ("length({c}) > 0",)),
    ("bundle_sha256", "TEXT", "TEXT", True, ("hex64",)),
    ("package_version", "TEXT", "TEXT", True, ("length({c}) > 0",)),
    ("scores_json", "TEXT", "TEXT", True, ("json_object",)),
    ("probabilities_json", "TEXT", "TEXT", True, ("json_object",)),
    ("fused_probability", "REAL", "DOUBLE PRECISION", False, ("{c} >= 0 AND {c} <= 1",)),
    ("threshold", "REAL", "DOUBLE PRECISION", False, ()),
    ("decision", "TEXT", "TEXT", True, ("{c} IN ('PASS', 'FAIL')",)),
    ("heatmap_sha256", "TEXT", "TEXT", False, ("hex64",)),
    ("heatmap_path", "TEXT", "TEXT", False, ()),
    ("plc_delivered", "INTEGER", "BOOLEAN", False, ("boolean",)),
    ("bundle_signed", "INTEGER", "BOOLEAN", False, ("boolean",)),
    ("error", "TEXT", "TEXT", False, ()),
    ("key_id", "TEXT", "TEXT", True, ("length({c}) > 0",)),
    ("prev_mac", "TEXT", "TEXT", True, ("hex64",)),
    ("mac", "TEXT", "TEXT", True, ("hex64",)),
)  # fmt: skip
assert tuple(c[0] for c in _SCHEMA_COLUMNS) == COLUMNS
_SQLITE_TYPEOF = {"TEXT": "text", "INTEGER": "integer", "REAL": "real"}


def _column_sql(column: tuple[str, str, str, bool, tuple[str, ...]], backend: str) -> str:
    """One column of the schema-2 table, with its checks, for ``backend`` (sqlite/postgresql)."""
    name, sqlite_type, pg_type, not_null, checks = column
    sqlite = backend == "sqlite"
    named = {
        "hex64": _HEX64_SQLITE if sqlite else _HEX64_PG,
        "json_object": _JSON_OBJECT_SQLITE if sqlite else _JSON_OBJECT_PG,
        "boolean": "{c} IN (0, 1)" if sqlite else "TRUE",
    }
    if sqlite and sqlite3.sqlite_version_info < (3, 38):  # JSON functions built in from 3.38
        named["json_object"] = "TRUE"
    conditions = [named.get(check, check).format(c=name) for check in checks]
    if sqlite:
        stored = [f"'{_SQLITE_TYPEOF[sqlite_type]}'"] + ([] if not_null else ["'null'"])
        conditions.insert(0, f"typeof({name}) IN ({', '.join(stored)})")
    conditions = [c for c in conditions if c != "TRUE"]
    text = f"{name} {sqlite_type if sqlite else pg_type}" + (" NOT NULL" if not_null else "")
    return text + "".join(f" CHECK ({c})" for c in conditions)


def _create_table_sql(backend: str) -> str:
    columns = ",\n    ".join(_column_sql(c, backend) for c in _SCHEMA_COLUMNS)
    strict = " STRICT" if backend == "sqlite" and sqlite3.sqlite_version_info >= (3, 37) else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {TABLE} (\n    {columns},\n    UNIQUE (record_id),\n"
        f"    PRIMARY KEY (station_id, seq)\n){strict}"
    )


def _added_column_sql(name: str, backend: str) -> str:
    """``ALTER TABLE`` that gives a schema-1 table a column it lacks (nullable: old rows NULL)."""
    column = next(c for c in _SCHEMA_COLUMNS if c[0] == name)
    return f"ALTER TABLE {TABLE} ADD COLUMN {_column_sql(column, backend)}"


_CREATE_META = "CREATE TABLE IF NOT EXISTS ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS {TABLE}_no_{op.lower()} BEFORE {op} ON {TABLE}
        BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: {op} refused'); END"""
    for op in ("UPDATE", "DELETE")
]
_PG_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION autoweld_ledger_append_only() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP; END $$""",
    f"""CREATE OR REPLACE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE}
        FOR EACH ROW EXECUTE FUNCTION autoweld_ledger_append_only()""",
    f"""CREATE OR REPLACE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION autoweld_ledger_append_only()""",
]
_PG_LOCK_CLASS = 0x41574C44  # "AWLD": first key of our advisory locks


# Opening a new ledger file: switching it to WAL needs an exclusive lock, and SQLite answers
# BUSY at once, without waiting on its busy handler, when waiting could deadlock (another
# connection holding BEGIN IMMEDIATE). Several stations or threads opening the same new file
# together hit that; the open-time setup is idempotent, so it is retried until this deadline.
_SQLITE_OPEN_TIMEOUT_S = 30.0
#: SQLite's busy timeout for a call without a deadline (opening, verify, a plain ``append``);
#: a call with a deadline waits at most until its deadline.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: How often an append with a deadline retries a SQLite write lock another connection holds.
SQLITE_LOCK_POLL_S = 0.0015


def _retry_while_locked(step: Callable[[], None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as error:
            message = str(error).lower()
            if ("locked" not in message and "busy" not in message) or (
                time.monotonic() + delay > deadline
            ):
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.2)


class LedgerError(RuntimeError):
    """The ledger could not do what was asked (database problem, foreign schema, ...)."""


class RecordPlaceError(LedgerError):
    """A problem at one place of a station's chain: ``station_id`` and ``seq`` name it."""

    def __init__(self, message: str, station_id: str, seq: int) -> None:
        super().__init__(message)
        self.station_id = station_id
        self.seq = seq


class ChainConflict(RecordPlaceError):
    """Another record already holds a station's place in this ledger's chain, or the records
    offered do not chain onto it (store and forward: a forked or replaced station ledger, or a
    tampered copy). Never resolved by overwriting."""


class UnreadableRecord(RecordPlaceError):
    """A stored row is not a record as signed (another type, unreadable JSON, ...)."""


_SIGNED_FIELDS = ("seq", "record_id", "utc_time", "key_id", "prev_mac", "mac")


def signed_equal(a: InspectionRecord, b: InspectionRecord) -> bool:
    """Whether two records are the same signed record, byte for byte (content and MAC)."""
    return _same(a.mac, b.mac) and hmac.compare_digest(canonical_bytes(a), canonical_bytes(b))


class LedgerTimeout(LedgerError):
    """A ledger call missed its client-side deadline (the database was locked, stopped, or
    too slow); the message names the deadline. Raised instead of waiting on."""


class _Watchdog:
    """One thread that runs an action when a deadline passes (interrupt a SQLite statement,
    shut a PostgreSQL socket). :meth:`disarm` returns only when the action has either run to
    its end or will never run, so its caller knows which (the returned flag)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._armed: dict[int, bool] = {}  # token -> fired
        self._next = 0
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, action: Callable[[], None]) -> int:
        with self._cond:
            self._next += 1
            # The thread sleeps until the earliest deadline in the heap (a disarmed one
            # included) and looks again then: it need not wake for a later one. One record
            # arms two (the dispatcher's corrective FAIL, the ledger's interrupt), each about
            # when the previous record's were; waking the thread for each cost the station a
            # thread switch and the GIL.
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (deadline, self._next, action))
            self._armed[self._next] = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ledger-watchdog",
                                                daemon=True)  # fmt: skip
                self._thread.start()
            if earliest is None or deadline < earliest:
                self._cond.notify()
            return self._next

    def disarm(self, token: int) -> bool:
        """Forget ``token``; ``True`` when its action ran."""
        with self._cond:
            return self._armed.pop(token, False)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token, action = self._heap[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                self._armed[token] = True
                try:
                    action()  # quick by contract: under the lock, so disarm waits for it
                except Exception:  # noqa: BLE001 - the watchdog must keep running
                    logger.exception("ledger watchdog action failed")


_WATCHDOG = _Watchdog()
#: the deadline watchdog, for the dispatcher's corrective FAIL (its actions must be quick)
deadline_watchdog = _WATCHDOG
#: After a record missed its deadline, :meth:`Ledger.append_later` retries it with this
#: deadline per try, backing off between tries up to the second value.
BACKLOG_TRY_S = 1.0
BACKLOG_MAX_BACKOFF_S = 1.0
#: How long :meth:`Ledger.close` waits for queued records to be written.
BACKLOG_DRAIN_S = 10.0


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :meth:`Ledger.verify`.

    ``first_bad_seq`` and ``station_id`` name the first record that failed (``None`` when
    ``ok``; with several failing stations, the first by station id — all are in ``problems``);
    ``checked`` counts records whose MAC and chain link were checked.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    station_id: str | None = None
    stations: int = 0
    #: every failing station's first problem: (station_id, seq, reason), by station id
    problems: tuple[tuple[str, int, str], ...] = ()


Head = tuple[int, str]
ExpectHead = Head | Mapping[str, Head] | None


def _same(a: str | None, b: str | None) -> bool:
    """Constant-time string equality that also copes with non-ASCII garbage and ``None``."""
    if a is None or b is None:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _json(values: Mapping[str, float]) -> str:
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _no_duplicate_keys(name: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"{name} has duplicate key {key!r} (not what was signed)")
            out[key] = value
        return out

    return build


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a finite number")


def _load_json(name: str, text: Any) -> Any:
    """Stored JSON as signed: duplicate keys and NaN/Infinity are refused, never guessed at."""
    if not isinstance(text, str):
        raise ValueError(f"{name} is stored as {_storage_class(text)}, not text")
    return json.loads(
        text, object_pairs_hook=_no_duplicate_keys(name), parse_constant=_refuse_constant
    )


def _storage_class(value: Any) -> str:
    """SQLite's name (``typeof``) for a value as the driver returned it."""
    if isinstance(value, bool):
        return "boolean"
    names = {type(None): "null", int: "integer", float: "real", str: "text", bytes: "blob"}
    return names.get(type(value), type(value).__name__)


_TEXT_COLUMNS = frozenset(("station_id", "record_id", "utc_time", "part_id", "bundle_sha256",
                           "package_version", "scores_json", "probabilities_json", "decision",
                           "key_id", "prev_mac", "mac"))  # fmt: skip
_OPTIONAL_TEXT_COLUMNS = frozenset(("heatmap_sha256", "heatmap_path", "error"))
_OPTIONAL_REAL_COLUMNS = frozenset(("fused_probability", "threshold"))


def _read_row(row: tuple, seq: int) -> tuple[str | None, InspectionRecord | None]:
    """A stored row as the record that was signed, or why it is not one: a column of another
    type, a value that cannot be read, or JSON that is not the canonical text signed."""
    odd = [p for p in map(_stored_type_problem, COLUMNS, row) if p is not None]
    if odd:
        return f"record {seq}: {odd[0]}", None
    try:
        record = _row_to_record(row)
    except (ValueError, TypeError) as error:
        return f"record {seq} cannot be read: {error}", None
    for name in ("scores", "probabilities"):  # stored exactly as signed
        if _json(getattr(record, name)) != row[COLUMNS.index(f"{name}_json")]:
            return f"record {seq}: {name}_json is not the canonical text signed", None
    return None, record


def _stored_type_problem(name: str, value: Any) -> str | None:
    """Why the value stored in column ``name`` is not of the type the record's canonical form
    signs (``None`` when it is): text as text, seq as an integer, scores as real, plc_delivered
    as a boolean (SQLite: the integer 0 or 1). SQLite keeps whatever storage class a writer
    gives it, so a value can read the same to Python's conversions and differently to SQL."""
    if name in _TEXT_COLUMNS:
        ok, wanted = type(value) is str, "text"
    elif name in _OPTIONAL_TEXT_COLUMNS:
        ok, wanted = value is None or type(value) is str, "text or null"
    elif name in _OPTIONAL_REAL_COLUMNS:
        ok, wanted = value is None or type(value) is float, "real or null"
    elif name == "seq":
        ok, wanted = type(value) is int, "integer"
    elif name in ("plc_delivered", "bundle_signed"):
        ok = value is None or type(value) is bool or (type(value) is int and value in (0, 1))
        wanted = "boolean (0 or 1) or null"
    else:  # pragma: no cover - every column is listed above
        raise AssertionError(name)
    if ok:
        return None
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{name} is stored as {_storage_class(value)} {shown}, not {wanted} as signed"


def _row_to_record(row: tuple[Any, ...]) -> InspectionRecord:
    data = dict(zip(COLUMNS, row, strict=True))
    data["scores"] = _load_json("scores_json", data.pop("scores_json"))
    data["probabilities"] = _load_json("probabilities_json", data.pop("probabilities_json"))
    for name in ("plc_delivered", "bundle_signed"):
        if data[name] is not None:
            data[name] = bool(data[name])
    for name in ("fused_probability", "threshold"):
        if data[name] is not None:
            data[name] = float(data[name])
    data["seq"] = int(data["seq"])
    return InspectionRecord.from_dict(data)


def _record_to_row(record: InspectionRecord) -> tuple[Any, ...]:
    data = record.to_dict()
    data["scores_json"] = _json(data.pop("scores"))
    data["probabilities_json"] = _json(data.pop("probabilities"))
    return tuple(data[name] for name in COLUMNS)


class Ledger:
    """Base class of the two backends; open one with :func:`open_ledger`."""

    placeholder = "?"
    #: the backend's exception base classes, turned into LedgerError
    db_errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    #: rows fetched per query when walking the whole ledger
    batch_rows = 5000
    #: what is SELECTed for :data:`COLUMNS` (a schema-1 ledger opened read-only that lacks a
    #: column reads it as NULL)
    _select_columns = ", ".join(COLUMNS)

    def __init__(self, keys: KeyRing, url: str, read_only: bool = False) -> None:
        self.keys = keys
        self.url = url
        self.read_only = read_only
        self._lock = threading.Lock()
        self._closed = False
        #: deadline (``time.monotonic()``) of the call in progress; set under ``_lock``
        self._deadline: float | None = None
        self._backlog: deque[tuple[InspectionRecord, float]] = deque()
        self._backlog_cond = threading.Condition()
        self._backlog_thread: threading.Thread | None = None
        self._closing = False
        self._drain_until = 0.0
        self._queued_total = 0

    # ---- backend primitives -------------------------------------------------------------
    def _append_locked(
        self, station_id: str, build: Callable[[int, str], InspectionRecord]
    ) -> InspectionRecord:
        """In one transaction with the station locked: read its head, build, insert, commit."""
        raise NotImplementedError

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _column_names(self) -> set[str]:
        """Names of the columns of the records table as the database has it."""
        raise NotImplementedError

    def _check_schema(self) -> int:
        """The ledger's schema version (refused unless known); a column a schema-1 table still
        lacks (read-only: nothing is changed) is read as NULL."""
        rows = self._query("SELECT value FROM ledger_meta WHERE name = 'schema_version'")
        version = _check_schema_version(rows, self.url)
        present = self._column_names()
        missing = [name for name in COLUMNS if name not in present]
        if any(name not in ADDED_COLUMNS for name in missing):
            raise LedgerError(f"ledger {self.url!r}: table {TABLE} lacks columns {missing}")
        self._select_columns = ", ".join(
            f"NULL AS {name}" if name in missing else name for name in COLUMNS
        )
        return version

    # ---- public API -----------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"ledger {self.url!r} is closed")

    def _guarded(
        self, what: str, fn: Callable[..., Any], *args: Any, deadline: float | None = None
    ) -> Any:
        """Run ``fn`` under the ledger's lock; database errors become :class:`LedgerError`.
        With a ``deadline`` (``time.monotonic()`` seconds) the wait for the lock and the
        backend's call are bounded by it, and missing it raises :class:`LedgerTimeout`."""
        budget = "" if deadline is None else f" {(deadline - time.monotonic()) * 1000:.0f} ms"
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            raise LedgerTimeout(
                f"ledger {self.url!r}: {what} missed its{budget} deadline waiting for the "
                "ledger's previous call (a slow database or a queued record's retry)"
            )
        try:
            self._check_open()
            self._deadline = deadline
            try:
                self._prepare_call(deadline)
                return fn(*args)
            except self.db_errors as error:
                why = redact_url(str(error))
                if deadline is not None and (
                    time.monotonic() >= deadline - 0.002 or self._is_timeout(error)
                ):
                    raise LedgerTimeout(
                        f"ledger {self.url!r}: {what} missed its{budget} deadline: {why}"
                    ) from error
                raise LedgerError(f"ledger {self.url!r}: {what} failed: {why}") from error
        finally:
            self._deadline = None
            self._lock.release()

    @staticmethod
    def _is_timeout(error: BaseException) -> bool:
        """A backend error that means "gave up at the deadline" before the clock shows it."""
        return False

    def _prepare_call(self, deadline: float | None) -> None:
        """Set the backend up for a call with or without a deadline (under the lock, before
        the call; nothing to do by default)."""

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._guarded("query", lambda: list(self._query(self._sql(sql), params)))

    def append(self, record: InspectionRecord, timeout: float | None = None) -> InspectionRecord:
        """Sign, chain and store ``record``; returns the stored record (seq, record_id, utc_time,
        key_id, prev_mac and mac filled in). Durable (committed) when it returns.

        Raises :class:`LedgerError` when the database fails; then the record may or may not have
        been committed (a connection lost during COMMIT cannot tell) and is not acknowledged.
        ``timeout`` (seconds) is a client-side deadline on the whole call — the wait for the
        ledger, a locked SQLite file, a stopped PostgreSQL server — past which it raises
        :class:`LedgerTimeout` instead of waiting (default: the backend's own limits).
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        if not isinstance(record, InspectionRecord):
            raise ValueError(f"record must be an InspectionRecord, got {type(record).__name__}")
        filled = [n for n in ("seq", "record_id", "utc_time", "key_id", "prev_mac", "mac")
                  if getattr(record, n) is not None]  # fmt: skip
        if filled:
            raise ValueError(f"record fields {filled} are set by the ledger and must be None")
        if self.read_only:
            raise LedgerError(f"ledger {self.url!r} was opened read-only")

        def build(last_seq: int, last_mac: str) -> InspectionRecord:
            unsigned = replace(
                record,
                seq=last_seq + 1,
                record_id=str(uuid.uuid4()),
                utc_time=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                key_id=self.keys.signing_key_id,
                prev_mac=last_mac,
            )
            return replace(unsigned, mac=compute_mac(self.keys.signing_key, unsigned))

        stored = self._guarded(
            "append", self._append_locked, record.station_id, build, deadline=deadline
        )
        logger.debug("appended %s seq %d", stored.station_id, stored.seq)
        return stored

    # ---- records that missed their deadline ----------------------------------------------
    def append_later(self, record: InspectionRecord) -> None:
        """Queue ``record`` (unsigned, as for :meth:`append`) to be written as soon as the
        database allows: a background thread retries it, oldest first, until it is stored.
        Nothing queued is dropped: each record's fate is logged (written late as seq N, or, if
        the ledger is closed before it could be written, logged CRITICAL with its content) and
        :attr:`pending_records` counts what is still waiting."""
        if not isinstance(record, InspectionRecord) or record.mac is not None:
            raise ValueError("append_later takes an unsigned InspectionRecord")
        with self._backlog_cond:
            self._check_open()
            if self._closing:
                raise LedgerError(f"ledger {self.url!r} is closing: nothing more is queued")
            self._backlog.append((record, time.monotonic()))
            self._queued_total += 1
            logger.error(
                "ledger %s: record of part %r (%s) queued; %d waiting",
                self.url, record.part_id, record.decision, len(self._backlog),
            )  # fmt: skip
            if self._backlog_thread is None:
                self._backlog_thread = threading.Thread(
                    target=self._write_backlog, name="ledger-backlog", daemon=True
                )
                self._backlog_thread.start()
            self._backlog_cond.notify_all()

    @property
    def pending_records(self) -> int:
        """Records queued by :meth:`append_later` and not yet written."""
        with self._backlog_cond:
            return len(self._backlog)

    @property
    def queued_records(self) -> int:
        """Records queued by :meth:`append_later` since this ledger was opened, written or not
        (:attr:`pending_records` is what still waits)."""
        with self._backlog_cond:
            return self._queued_total

    def _write_backlog(self) -> None:
        backoff, tries = 0.02, 0
        while True:
            with self._backlog_cond:
                while not self._backlog and not self._closing:
                    self._backlog_cond.wait()
                if not self._backlog:
                    return
                record, queued_at = self._backlog[0]
            try:
                stored = self.append(record, timeout=BACKLOG_TRY_S)
            except ValueError as refused:  # pragma: no cover - it was checked when queued
                with self._backlog_cond:
                    self._backlog.popleft()
                logger.critical("ledger %s: queued record refused (%s): %s", self.url, refused,
                                json.dumps(record.to_dict(), sort_keys=True))  # fmt: skip
                continue
            except Exception as error:  # noqa: BLE001 - any failure: keep it, try again
                tries += 1
                if tries == 1 or tries % 20 == 0:
                    logger.warning("ledger %s: queued record not written yet (try %d): %s",
                                   self.url, tries, error)  # fmt: skip
                with self._backlog_cond:
                    # closing: waiting helps only a database that may come back in time
                    if self._closing and (
                        self._drain_until < time.monotonic() or not isinstance(error, LedgerTimeout)
                    ):
                        return
                    self._backlog_cond.wait(backoff)
                backoff = min(backoff * 2, BACKLOG_MAX_BACKOFF_S)
                continue
            with self._backlog_cond:
                self._backlog.popleft()
                self._backlog_cond.notify_all()
            logger.warning(
                "ledger %s: queued record of part %r written as %s seq %d, %.0f ms after it "
                "was queued", self.url, stored.part_id, stored.station_id, stored.seq,
                (time.monotonic() - queued_at) * 1000,
            )  # fmt: skip
            backoff, tries = 0.02, 0

    def _drain_backlog(self, timeout: float) -> int:
        """At close: give queued records ``timeout`` seconds, then log what is left CRITICAL;
        returns how many were left."""
        with self._backlog_cond:
            self._closing = True
            self._drain_until = time.monotonic() + timeout
            thread = self._backlog_thread
            self._backlog_cond.notify_all()
            while self._backlog and thread is not None and thread.is_alive():
                left = self._drain_until - time.monotonic()
                if left <= 0:
                    break
                self._backlog_cond.wait(min(left, 0.1))
            left_over = list(self._backlog)
            self._backlog.clear()
            self._backlog_cond.notify_all()
        for record, _ in left_over:
            logger.critical(
                "ledger %s closed with a record NOT written (write it back from this line): %s",
                self.url, json.dumps(record.to_dict(), sort_keys=True),
            )  # fmt: skip
        if thread is not None:
            thread.join(BACKLOG_TRY_S + 1.0)
        return len(left_over)

    def heads(self) -> dict[str, Head]:
        """Latest ``(seq, mac)`` of every station."""
        sql = f"""SELECT r.station_id, r.seq, r.mac FROM {TABLE} r
                  JOIN (SELECT station_id, MAX(seq) AS seq FROM {TABLE} GROUP BY station_id) h
                  ON r.station_id = h.station_id AND r.seq = h.seq ORDER BY r.station_id"""
        return {row[0]: (int(row[1]), row[2]) for row in self._fetch(sql)}

    def head(self, station_id: str | None = None) -> Head:
        """Latest ``(seq, mac)`` of ``station_id`` — keep it elsewhere, then
        ``verify(expect_head=...)`` detects a truncated tail. Without ``station_id`` the ledger
        must hold at most one station; an empty station gives ``(0, GENESIS_MAC)``."""
        heads = self.heads()
        if station_id is None:
            if len(heads) > 1:
                raise ValueError(
                    f"station_id is required: this ledger holds {len(heads)} stations "
                    f"({', '.join(sorted(heads))})"
                )
            return next(iter(heads.values()), (0, GENESIS_MAC))
        return heads.get(station_id, (0, GENESIS_MAC))

    def iter_records(self, station_id: str | None = None) -> Iterator[InspectionRecord]:
        """All records in chain order (station, seq). Rows that cannot be read raise."""
        for row in self._rows(station_id):
            yield _row_to_record(row)

    def count(self, station_id: str | None = None) -> int:
        """Number of stored records (of one station, or all)."""
        if station_id is None:
            return int(self._fetch(f"SELECT COUNT(*) FROM {TABLE}")[0][0])
        sql = f"SELECT COUNT(*) FROM {TABLE} WHERE station_id = ?"
        return int(self._fetch(sql, (station_id,))[0][0])

    def _rows(self, station_id: str | None = None) -> Iterator[tuple[Any, ...]]:
        """Raw rows in (station_id, seq) order, fetched in batches (keyset pagination), so a
        ledger of millions of records is walked in bounded memory."""
        cols = self._select_columns
        only = "" if station_id is None else " AND station_id = ?"
        sql = (
            f"SELECT {cols} FROM {TABLE} WHERE (station_id > ? OR (station_id = ? AND seq > ?))"
            f"{only} ORDER BY station_id, seq LIMIT {int(self.batch_rows)}"
        )
        last_station, last_seq = "", -(2**62)
        while True:
            params: tuple[Any, ...] = (last_station, last_station, last_seq)
            rows = self._fetch(sql, params if station_id is None else (*params, station_id))
            yield from rows
            if len(rows) < self.batch_rows:
                return
            # the stored values as they are (even of an odd type): the keyset stays exact
            last_station, last_seq = rows[-1][0], rows[-1][1]

    def records(
        self, part_id: str | None = None, station_id: str | None = None, limit: int | None = 100
    ) -> list[InspectionRecord]:
        """Records, newest first, optionally for one part and/or station."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):  # fmt: skip
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        where, params = [], []
        if part_id is not None:
            where.append("part_id = ?")
            params.append(part_id)
        if station_id is not None:
            where.append("station_id = ?")
            params.append(station_id)
        sql = f"SELECT {self._select_columns} FROM {TABLE}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY utc_time DESC, station_id, seq DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row_to_record(row) for row in self._fetch(sql, tuple(params))]

    def verify(self, expect_head: ExpectHead = None, progress: bool = False) -> VerifyReport:
        """Prove the ledger whole: every record's MAC, every chain link, no gap in seq.

        ``expect_head`` is a head kept elsewhere — ``(seq, mac)`` for a single-station ledger,
        or ``{station_id: (seq, mac)}`` — and makes a truncated tail (or a rewritten one) fail.
        Returns a :class:`VerifyReport` naming the first bad seq; it does not raise on tampering.
        ``progress`` shows a progress bar (on a terminal).
        """
        expected = self._normalise_expect(expect_head)
        checked = 0
        stations: set[str] = set()
        problems: dict[str, tuple[int, str]] = {}  # the first problem of each station

        def fail(station: str, seq: int, reason: str, specific: bool = False) -> None:
            # the lowest seq is the first bad record; on a tie the more specific reason wins
            # (a row stored under a BLOB station id also leaves a gap in the text station)
            known = problems.get(station)
            if known is None or seq < known[0] or (seq == known[0] and specific):
                problems[station] = (seq, reason)

        state: dict[str, Any] = {}

        def close_station(station: str) -> None:
            if station in expected and not state["bad"]:
                exp_seq, exp_mac = expected[station]
                if state["seq"] < exp_seq:
                    fail(station, state["seq"] + 1,
                         f"truncated: ledger ends at seq {state['seq']} but the expected head "
                         f"is seq {exp_seq}")  # fmt: skip
                elif not _same(state["mac_at_expected"], exp_mac):
                    fail(station, exp_seq,
                         f"record {exp_seq} does not carry the expected head MAC")  # fmt: skip

        current: str | None = None
        rows = self._rows()
        if progress:
            rows = tqdm(rows, total=self.count(), unit="rec", desc="verify", disable=None)
        for position, row in enumerate(rows, 1):
            station = row[0]
            if type(station) is not str:  # not the station that was signed: outside any chain
                label = (station.decode("utf-8", "replace") if isinstance(station, bytes)
                         else str(station))  # fmt: skip
                seq = row[1] if type(row[1]) is int else position
                stations.add(label)
                why = _stored_type_problem("station_id", station)
                fail(label, seq, f"record {seq}: {why}", specific=True)
                continue
            if station != current:
                if current is not None:
                    close_station(current)
                current = station
                stations.add(station)
                state = {"seq": 0, "mac": GENESIS_MAC, "bad": False, "mac_at_expected": None}
            if state["bad"]:
                continue
            expected_seq = state["seq"] + 1
            odd = [p for p in map(_stored_type_problem, COLUMNS, row) if p is not None]
            if type(row[1]) is not int:  # named by its place in the chain
                state["bad"] = True
                fail(station, expected_seq, f"record at chain position {expected_seq}: {odd[0]}")
                continue
            seq, reason, record = self._check_row(row, expected_seq, state["mac"])
            if reason is not None:
                state["bad"] = True
                fail(station, seq, reason)
                continue
            checked += 1
            state["seq"], state["mac"] = seq, record.mac
            if station in expected and seq == expected[station][0]:
                state["mac_at_expected"] = record.mac
        if current is not None:
            close_station(current)
        for station in sorted(set(expected) - stations):
            fail(station, 1, f"station {station!r} has no records but a head was expected")
        if not problems:
            return VerifyReport(ok=True, checked=checked, stations=len(stations))
        listed = tuple((station, *problems[station]) for station in sorted(problems))
        station, seq, reason = listed[0]
        return VerifyReport(False, checked, seq, reason, station, len(stations), listed)

    def _check_row(
        self, row: tuple, expected_seq: int, prev_mac: str
    ) -> tuple[int, str | None, InspectionRecord | None]:
        """One stored row of a chain whose last good MAC is ``prev_mac``: (the seq a problem is
        named by, the problem or None, the record when it checks out)."""
        seq = row[1]
        reason, record = _read_row(row, seq)
        if seq != expected_seq:
            return (
                expected_seq,
                f"record {expected_seq} is missing (the next stored seq is {seq})",
                None,
            )
        if record is None:
            return seq, reason, None
        key = self.keys.key_for(record.key_id or "")
        if not _same(record.prev_mac, prev_mac):
            reason = (f"record {seq} is not chained to record {seq - 1} (a record was "
                      "deleted, inserted or reordered)")  # fmt: skip
        elif key is None:
            reason = (f"record {seq} is signed with unknown key id {record.key_id!r} "
                      "(add it to AUTOWELD_VERIFY_KEYS)")  # fmt: skip
        elif not _same(compute_mac(key, record), record.mac):
            reason = (f"record {seq} MAC does not match its content (edited, or "
                      f"signed with a different key {record.key_id!r})")  # fmt: skip
        return seq, reason, (record if reason is None else None)

    def _normalise_expect(self, expect_head: ExpectHead) -> dict[str, Head]:
        if expect_head is None:
            return {}
        if isinstance(expect_head, Mapping):
            pairs = dict(expect_head)
        else:
            # station ids as signed (text) only: a row stored under another type is reported
            # by verify, it does not turn a one-station ledger into a usage error
            sql = f"SELECT DISTINCT station_id FROM {TABLE}"
            heads = sorted(row[0] for row in self._fetch(sql) if type(row[0]) is str)
            if len(heads) > 1:
                raise ValueError(
                    "expect_head must name the station ({station_id: (seq, mac)}): the ledger "
                    f"holds {len(heads)} stations"
                )
            if not heads:  # an empty ledger: the expected head names a station we cannot see
                pairs = {"": expect_head}
            else:
                pairs = {heads[0]: expect_head}
        out: dict[str, Head] = {}
        for station, head in pairs.items():
            try:
                seq, mac = head
                seq = int(seq)
            except (TypeError, ValueError):
                raise ValueError(
                    f"expect_head for {station!r} must be (seq, mac), got {head!r}"
                ) from None
            if seq < 0 or not isinstance(mac, str):
                raise ValueError(f"expect_head for {station!r} must be (seq >= 0, mac str)")
            if seq > 0:
                out[station] = (seq, mac)
        return out

    def export(self, path: str | Path, fmt: str | None = None, progress: bool = False) -> int:
        """Write every record (chain order) to ``path`` as ``csv`` or ``json`` (by default from
        the suffix). Returns the number of records written."""
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt not in ("csv", "json"):
            raise ValueError(f"fmt must be 'csv' or 'json' (or a .csv/.json path), got {fmt!r}")
        heads = self.heads()
        records = self.iter_records()
        if progress:
            records = tqdm(records, total=self.count(), unit="rec", desc="export", disable=None)
        written = 0
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            if fmt == "csv":
                writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
                writer.writeheader()
                for record in records:
                    row = record.to_dict()
                    row["scores"] = _json(row["scores"])
                    row["probabilities"] = _json(row["probabilities"])
                    writer.writerow(row)
                    written += 1
            else:
                header = {
                    "format": "autoweld-ledger-export-v1",
                    "exported_utc": datetime.now(timezone.utc).isoformat(),
                    "heads": {s: {"seq": q, "mac": m} for s, (q, m) in heads.items()},
                }
                # streamed: {"format": ..., "heads": ..., "records": [ ... ]}
                out.write(json.dumps(header, indent=1)[:-2] + ',\n "records": [')
                for record in records:
                    out.write(("," if written else "") + "\n  " + json.dumps(record.to_dict()))
                    written += 1
                out.write("\n ]\n}\n")
        tmp.replace(path)
        return written

    # ---- store and forward (autoweld.quality.forward) --------------------------------------
    def _station_transaction(self, station_id: str) -> AbstractContextManager[Any]:
        """A transaction with ``station_id``'s chain locked against other writers; yields the
        connection (``execute`` and ``cursor`` as both drivers have them)."""
        raise NotImplementedError

    def chain_head(self, station_id: str) -> Head:
        """``(seq, mac)`` of one station's latest record by an index lookup (:meth:`heads`
        walks every station); ``(0, GENESIS_MAC)`` when it has none."""
        sql = f"SELECT seq, mac FROM {TABLE} WHERE station_id = ? ORDER BY seq DESC LIMIT 1"
        rows = self._fetch(sql, (station_id,))
        return (int(rows[0][0]), rows[0][1]) if rows else (0, GENESIS_MAC)

    def chain_after(self, station_id: str, after_seq: int, limit: int) -> list[InspectionRecord]:
        """Up to ``limit`` records of ``station_id`` with seq above ``after_seq``, in seq order,
        each read exactly as stored: a row that is not a record as signed raises
        :class:`UnreadableRecord` naming its seq (never a silently converted value)."""
        sql = (f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE station_id = ? AND seq > ? "
               f"ORDER BY seq LIMIT {max(1, int(limit))}")  # fmt: skip
        records = []
        for row in self._fetch(sql, (station_id, int(after_seq))):
            reason, record = _read_row(row, row[1])
            if record is None:
                raise UnreadableRecord(
                    f"ledger {self.url!r}: station {station_id!r} {reason}", station_id, row[1]
                )
            records.append(record)
        return records

    def insert_signed(self, records: Sequence[InspectionRecord]) -> tuple[int, int]:
        """Store records another ledger signed, verbatim (no re-signing): store and forward.

        ``records``: consecutive records of one station in seq order, each chained to the one
        before. In one transaction with the station locked, all or none: a record already stored
        at its ``(station_id, seq)`` and byte-equal is skipped; a different one there raises
        :class:`ChainConflict` (never overwritten), and so does a first new record that does
        not chain onto this ledger's head of the station. MACs are not checked here (this ledger
        need not hold the station's key; the forwarder checks them). Returns
        ``(inserted, skipped)``; durable when it returns.
        """
        records = list(records)
        if not records:
            return 0, 0
        station = records[0].station_id
        for before, record in zip([None, *records], records, strict=False):
            if not isinstance(record, InspectionRecord) or any(
                getattr(record, name) is None for name in _SIGNED_FIELDS
            ):
                raise ValueError("insert_signed takes signed records (every ledger field set)")
            if record.station_id != station:
                raise ValueError("insert_signed takes records of one station at a time")
            if before is not None and (
                record.seq != before.seq + 1 or not _same(record.prev_mac, before.mac)
            ):
                raise ValueError(f"record {record.seq} does not follow record {before.seq}")
        if self.read_only:
            raise LedgerError(f"ledger {self.url!r} was opened read-only")
        return self._guarded("insert", self._insert_signed_locked, station, records)

    def _insert_signed_locked(
        self, station: str, records: list[InspectionRecord]
    ) -> tuple[int, int]:
        with self._station_transaction(station) as conn:
            head = conn.execute(
                self._sql(f"SELECT seq, mac FROM {TABLE} WHERE station_id = ? "
                          "ORDER BY seq DESC LIMIT 1"), (station,),
            ).fetchone()  # fmt: skip
            head_seq, head_mac = (int(head[0]), head[1]) if head else (0, GENESIS_MAC)
            stored = [r for r in records if r.seq <= head_seq]
            if stored:
                rows = conn.execute(
                    self._sql(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE station_id = ? "
                              "AND seq >= ? AND seq <= ? ORDER BY seq"),
                    (station, stored[0].seq, stored[-1].seq),
                ).fetchall()  # fmt: skip
                by_seq = {row[1]: _read_row(row, row[1])[1] for row in rows}
                for record in stored:
                    there = by_seq.get(record.seq)
                    if there is None or not signed_equal(there, record):
                        raise ChainConflict(
                            f"ledger {self.url!r} holds a different record {record.seq} of "
                            f"station {station!r} (nothing was overwritten)",
                            station,
                            record.seq,
                        )
            fresh = records[len(stored) :]
            if fresh and (fresh[0].seq != head_seq + 1 or not _same(fresh[0].prev_mac, head_mac)):
                raise ChainConflict(
                    f"record {fresh[0].seq} of station {station!r} does not chain onto "
                    f"ledger {self.url!r}'s head (seq {head_seq})",
                    station,
                    fresh[0].seq,
                )
            placeholders = ", ".join([self.placeholder] * len(COLUMNS))
            conn.cursor().executemany(
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                [_record_to_row(record) for record in fresh],
            )
        return len(fresh), len(stored)

    def close(self, drain_timeout: float = BACKLOG_DRAIN_S) -> int:
        """Close the database connection (idempotent). Records queued by
        :meth:`append_later` get ``drain_timeout`` seconds to be written first; returns how
        many were not (each logged CRITICAL with its content; 0 on a second close)."""
        unwritten = 0
        if self._backlog_thread is not None and not self._closed:
            unwritten = self._drain_backlog(drain_timeout)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()
        with self._backlog_cond:
            self._backlog_cond.notify_all()
        return unwritten

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, key_id={self.keys.signing_key_id!r})"


class SQLiteLedger(Ledger):
    """The embedded backend: one SQLite file, WAL journal, ``synchronous=FULL``."""

    def __init__(self, path: Path, keys: KeyRing, url: str, read_only: bool = False) -> None:
        super().__init__(keys, url, read_only)
        self._busy_zero = False  # the connection's busy timeout is SQLITE_BUSY_TIMEOUT_S
        if read_only:
            self._open_read_only(path)
            return
        if not path.parent.is_dir():
            raise ValueError(f"ledger url {url!r}: directory {str(path.parent)!r} does not exist")
        try:
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
            self._conn = sqlite3.connect(
                str(path),
                timeout=SQLITE_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            _retry_while_locked(lambda: self._initialise(path), _SQLITE_OPEN_TIMEOUT_S)
            self._check_schema()
        except BaseException as error:
            self._fail_open(path, error)
            raise

    def _fail_open(self, path: Path, error: BaseException) -> None:
        """An open that failed: close what was opened; a SQLite error becomes a LedgerError."""
        if hasattr(self, "_conn"):
            self._conn.close()
        if isinstance(error, sqlite3.DatabaseError):
            raise LedgerError(f"cannot open SQLite ledger {str(path)!r}: {error}") from error

    def _initialise(self, path: Path) -> None:
        """WAL, synchronous=FULL and the schema (idempotent; safe to run again after BUSY)."""
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LedgerError(f"{path}: SQLite refused WAL journal mode (got {mode!r})")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            # a schema-1 ledger keeps its table (IF NOT EXISTS) and its version row (OR IGNORE)
            for sql in (_create_table_sql("sqlite"), _CREATE_META, *_SQLITE_TRIGGERS):
                self._conn.execute(sql)
            self._conn.execute(
                "INSERT OR IGNORE INTO ledger_meta VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            for name in ADDED_COLUMNS:
                if name not in self._column_names():
                    self._conn.execute(_added_column_sql(name, "sqlite"))
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _open_read_only(self, path: Path) -> None:
        """Open without creating or changing anything (auditors, copies of a ledger)."""
        if not path.is_file():
            raise ValueError(f"ledger url {self.url!r}: no ledger file at {str(path)!r}")
        try:
            self._conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0,
                isolation_level=None, check_same_thread=False,
            )  # fmt: skip
            tables = {row[0] for row in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}  # fmt: skip
            if not {TABLE, "ledger_meta"} <= tables:
                raise LedgerError(f"{str(path)!r} is not an AutoWeld ledger (no {TABLE} table)")
            self._check_schema()
        except BaseException as error:
            self._fail_open(path, error)
            raise

    @staticmethod
    def _is_timeout(error: BaseException) -> bool:
        """The write lock still held when polling stopped, or a statement interrupted."""
        text = str(error).lower()
        return any(word in text for word in ("locked", "busy", "interrupted"))

    @contextmanager
    def _bounded(self) -> Iterator[None]:
        """Bound the call in progress by its deadline: no wait inside SQLite's busy handler
        (it sleeps in steps of up to 25 ms; :meth:`_begin_immediate` polls the write lock
        itself), and a statement still running at the deadline is interrupted. Without a
        deadline the busy timeout is :data:`SQLITE_BUSY_TIMEOUT_S`."""
        if self._deadline is None:
            yield
            return
        token = _WATCHDOG.arm(self._deadline, self._conn.interrupt)
        try:
            yield
        finally:
            _WATCHDOG.disarm(token)

    def _prepare_call(self, deadline: float | None) -> None:
        """The busy timeout a call needs: 0 with a deadline (see :meth:`_bounded`),
        :data:`SQLITE_BUSY_TIMEOUT_S` without. Set only when it changes — a station's appends
        all have deadlines, and two PRAGMAs per record cost it 0.1 ms — and before the
        watchdog is armed, so no interrupt can hit it."""
        zero = deadline is not None
        if zero != self._busy_zero:
            ms = 0 if zero else round(SQLITE_BUSY_TIMEOUT_S * 1000)
            self._conn.execute(f"PRAGMA busy_timeout = {ms}")
            self._busy_zero = zero

    def _begin_immediate(self) -> None:
        """Take the write lock; with a deadline, poll for it every millisecond or two until
        then (another connection holding it makes SQLite answer BUSY)."""
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                text = str(error).lower()
                busy = "locked" in text or "busy" in text
                if self._deadline is None or not busy:
                    raise
                if time.monotonic() + SQLITE_LOCK_POLL_S >= self._deadline:
                    raise
            time.sleep(SQLITE_LOCK_POLL_S)

    def _append_locked(
        self, station_id: str, build: Callable[[int, str], InspectionRecord]
    ) -> InspectionRecord:
        with self._bounded():
            return self._append_now(station_id, build)

    def _append_now(
        self, station_id: str, build: Callable[[int, str], InspectionRecord]
    ) -> InspectionRecord:
        conn = self._conn
        self._begin_immediate()  # takes the write lock now: no other writer interleaves
        try:
            last = conn.execute(
                f"SELECT seq, mac FROM {TABLE} WHERE station_id = ? ORDER BY seq DESC LIMIT 1",
                (station_id,),
            ).fetchone()
            record = build(int(last[0]), last[1]) if last else build(0, GENESIS_MAC)
            conn.execute(
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
                f"({', '.join('?' * len(COLUMNS))})",
                _record_to_row(record),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return record

    @contextmanager
    def _station_transaction(self, station_id: str) -> Iterator[Any]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")  # the write lock covers every station of the file
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        with self._bounded():
            return iter(self._conn.execute(sql, params).fetchall())

    def _close(self) -> None:
        self._conn.close()

    def _column_names(self) -> set[str]:
        return {row[1] for row in self._conn.execute(f"PRAGMA table_info({TABLE})")}


class PostgresLedger(Ledger):
    """PostgreSQL backend for many stations (psycopg 3). A connection the server dropped (a
    restart, a network blip) is re-opened on the next call; the call that saw it fail raises."""

    placeholder = "%s"

    def __init__(
        self, url: str, keys: KeyRing, read_only: bool = False, connect_timeout: float = 10.0
    ) -> None:
        dsn, self.timeouts = pg_timeouts(url, read_only)
        super().__init__(keys, redact_url(dsn), read_only)
        try:
            import psycopg
        except ImportError as error:  # pragma: no cover - depends on the install
            raise LedgerError(
                "the PostgreSQL ledger needs psycopg: pip install 'autoweld[station]'"
            ) from error
        self._psycopg = psycopg
        self.db_errors = (psycopg.Error,)
        self._dsn = dsn
        self._connect_timeout = max(1, int(connect_timeout))
        self._reconnecting: _Reconnect | None = None
        try:
            self._conn = self._connect()
        except psycopg.Error as error:
            raise LedgerError(
                f"cannot open PostgreSQL ledger {self.url!r}: {redact_url(str(error))}"
            ) from error
        try:
            with self._armed(self._conn):
                self._create_schema()  # in read-only mode: only checks that it exists
            self._check_schema()
        except BaseException as error:
            self._conn.close()
            if isinstance(error, psycopg.Error):
                raise LedgerError(
                    f"cannot open PostgreSQL ledger {self.url!r}: {redact_url(str(error))}"
                ) from error
            raise

    def _connect(self) -> Any:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self._dsn)
        # the server gives up on a statement or a lock wait (pg_advisory_xact_lock included)
        # after these; the append then raises LedgerError and the part is a FAIL
        ours = (
            f"-c statement_timeout={round(self.timeouts.statement_s * 1000)} "
            f"-c lock_timeout={round(self.timeouts.lock_s * 1000)}"
        )
        if self.read_only:  # at start-up, not as a statement: a reconnect runs no statement
            ours += " -c default_transaction_read_only=on"
        params["options"] = f"{params['options']} {ours}" if params.get("options") else ours
        # a half-open TCP connection (cable pulled, server host gone) must not block a call
        # forever: keepalives while waiting for an answer, tcp_user_timeout for unacked sends
        for name, value in _PG_TCP_DEFAULTS.items():
            params.setdefault(name, value)
        params.setdefault("connect_timeout", self._connect_timeout)
        return self._psycopg.connect(autocommit=True, **params)

    def _call_deadline(self) -> float:
        """The deadline of the call in progress, else a client-side guard past the server's
        own statement timeout (which a stopped server never enforces)."""
        if self._deadline is not None:
            return self._deadline
        return time.monotonic() + self.timeouts.statement_s + PG_CLIENT_GUARD_S

    @contextmanager
    def _armed(self, conn: Any) -> Iterator[None]:
        """Bound a call on ``conn`` by its deadline even when the server is stopped (SIGSTOP:
        the kernel still ACKs, so neither the server's timeouts nor TCP's fire): at the
        deadline the socket is shut, the blocked call fails at once, and the next call
        reconnects; the server is asked in the background to cancel what it was doing."""
        token = _WATCHDOG.arm(self._call_deadline(), lambda: _cut_connection(conn))
        try:
            yield
        finally:
            _WATCHDOG.disarm(token)

    def _connection(self) -> Any:
        """The open connection; a lost one is replaced by a connect that runs in the
        background, so waiting for it is bounded by the call's deadline."""
        if not (self._conn.closed or self._conn.broken):
            return self._conn
        attempt = self._reconnecting
        if attempt is None:
            logger.warning("ledger %s: connection lost, reconnecting", self.url)
            attempt = self._reconnecting = _Reconnect(self._connect, self.url)
        if not attempt.done.wait(max(0.0, self._call_deadline() - time.monotonic())):
            raise LedgerTimeout(
                f"ledger {self.url!r}: reconnecting to PostgreSQL did not finish by the "
                "deadline (still trying in the background)"
            )
        self._reconnecting = None
        if attempt.error is not None:
            raise attempt.error
        self._conn.close()
        self._conn = attempt.conn
        return self._conn

    def _create_schema(self) -> None:
        exists = self._conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass('ledger_meta') IS NOT NULL",
            (TABLE,),
        ).fetchone()[0]
        if exists:  # stations may run as a role that can only SELECT and INSERT
            if not self.read_only:
                self._add_missing_columns()
            return
        if self.read_only:
            raise LedgerError(f"no AutoWeld ledger (table {TABLE}) in {self.url!r}")
        with self._conn.transaction():
            # concurrent first opens would race on CREATE ... IF NOT EXISTS: serialise them
            self._conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_PG_LOCK_CLASS,))
            for sql in (_create_table_sql("postgresql"), _CREATE_META, *_PG_TRIGGERS):
                self._conn.execute(sql)
            self._conn.execute(
                "INSERT INTO ledger_meta VALUES ('schema_version', %s) ON CONFLICT DO NOTHING",
                (str(SCHEMA_VERSION),),
            )

    def _column_names(self) -> set[str]:
        sql = """SELECT column_name FROM information_schema.columns
                 WHERE table_name = %s AND table_schema = current_schema()"""
        return {row[0] for row in self._conn.execute(sql, (TABLE,)).fetchall()}

    def _add_missing_columns(self) -> None:
        """Give a schema-1 table the columns it lacks (one nullable column: no row changes)."""
        if all(name in self._column_names() for name in ADDED_COLUMNS):
            return
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_PG_LOCK_CLASS,))
                for name in ADDED_COLUMNS:
                    if name not in self._column_names():
                        self._conn.execute(_added_column_sql(name, "postgresql"))
        except self._psycopg.errors.InsufficientPrivilege as error:
            raise LedgerError(
                f"ledger {self.url!r} has schema version 1 and lacks column(s) "
                f"{list(ADDED_COLUMNS)}: open it once as the table's owner (the column is "
                "added, no record is changed)"
            ) from error

    def _append_locked(
        self, station_id: str, build: Callable[[int, str], InspectionRecord]
    ) -> InspectionRecord:
        conn = self._connection()
        with self._armed(conn), conn.transaction():
            # one writer per station at a time; released at commit/rollback
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                         (_PG_LOCK_CLASS, station_id))  # fmt: skip
            last = conn.execute(
                f"SELECT seq, mac FROM {TABLE} WHERE station_id = %s ORDER BY seq DESC LIMIT 1",
                (station_id,),
            ).fetchone()
            record = build(int(last[0]), last[1]) if last else build(0, GENESIS_MAC)
            conn.execute(
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
                f"({', '.join(['%s'] * len(COLUMNS))})",
                _record_to_row(record),
            )
        return record

    @contextmanager
    def _station_transaction(self, station_id: str) -> Iterator[Any]:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                         (_PG_LOCK_CLASS, station_id))  # fmt: skip
            yield conn

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        conn = self._connection()
        with self._armed(conn):
            return iter(conn.execute(sql, params).fetchall())

    def _close(self) -> None:
        self._conn.close()
        attempt = self._reconnecting
        if attempt is not None:
            attempt.abandon()


class _Reconnect:
    """One connect to PostgreSQL on its own thread (libpq's connect timeout is whole seconds,
    at least 2): the caller waits for ``done`` as long as its deadline allows."""

    def __init__(self, connect: Callable[[], Any], url: str) -> None:
        self.done = threading.Event()
        self.conn: Any = None
        self.error: BaseException | None = None
        self._abandoned = False
        self._url = url
        threading.Thread(target=self._run, args=(connect,), name="ledger-reconnect",
                         daemon=True).start()  # fmt: skip

    def _run(self, connect: Callable[[], Any]) -> None:
        try:
            self.conn = connect()
        except BaseException as error:  # noqa: BLE001 - handed to the waiting call
            self.error = error
        if self._abandoned and self.conn is not None:
            self.conn.close()
        self.done.set()

    def abandon(self) -> None:
        """The ledger closed: a connection that arrives later is closed."""
        self._abandoned = True
        if self.done.is_set() and self.conn is not None:
            self.conn.close()


def _cut_connection(conn: Any) -> None:
    """Shut a PostgreSQL connection's socket now (any thread) and ask the server to cancel."""
    try:
        fd = conn.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
    except Exception as error:  # noqa: BLE001 - already closed or broken: nothing to shut
        logger.debug("ledger: socket not shut: %s", error)
    logger.warning("ledger: PostgreSQL call past its deadline: connection cut")

    def cancel() -> None:
        try:
            conn.cancel_safe(timeout=PG_CANCEL_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - a stopped server cannot be reached
            logger.info("ledger: cancel request not delivered: %s", error)

    threading.Thread(target=cancel, name="ledger-cancel", daemon=True).start()


#: libpq TCP settings used unless the URL gives its own: a dead peer is noticed in ~10 s.
_PG_TCP_DEFAULTS = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10000,  # ms
}
#: Default server-side timeouts in seconds (URL query ``statement_timeout`` / ``lock_timeout``).
PG_STATEMENT_TIMEOUT_S = 5.0
PG_LOCK_TIMEOUT_S = 5.0
#: Read-only use (verify, export of a large ledger) gets longer statements by default.
PG_READ_ONLY_STATEMENT_TIMEOUT_S = 120.0
#: A call without its own deadline is cut this long after the server's statement timeout.
PG_CLIENT_GUARD_S = 2.0
#: How long the background cancel request of a cut call may take.
PG_CANCEL_TIMEOUT_S = 5.0
_PG_MAX_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class PgTimeouts:
    """Server-side limits of one PostgreSQL ledger connection, in seconds."""

    statement_s: float
    lock_s: float


def pg_timeouts(url: str, read_only: bool = False) -> tuple[str, PgTimeouts]:
    """Split AutoWeld's own query parameters off a ``postgresql://`` URL.

    ``statement_timeout`` and ``lock_timeout`` (seconds, > 0, at most 3600) are not libpq
    parameters, so they are removed from the URL that goes to libpq. Defaults: 5 s each (a
    read-only ledger: 120 s for statements). Returns ``(url for libpq, timeouts)``.
    """
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    found: dict[str, float] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in ("statement_timeout", "lock_timeout"):
            kept.append((name, value))
            continue
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not 0.0 < seconds <= _PG_MAX_TIMEOUT_S:  # NaN fails this too
            raise ValueError(
                f"ledger url {redact_url(url)!r}: {name} must be seconds in (0, "
                f"{_PG_MAX_TIMEOUT_S:g}], got {value!r}"
            )
        found[name] = seconds
    timeouts = PgTimeouts(
        statement_s=found.get(
            "statement_timeout",
            PG_READ_ONLY_STATEMENT_TIMEOUT_S if read_only else PG_STATEMENT_TIMEOUT_S,
        ),
        lock_s=found.get("lock_timeout", PG_LOCK_TIMEOUT_S),
    )
    if not found:
        return url, timeouts
    return parts._replace(query=urlencode(kept)).geturl(), timeouts


def _check_schema_version(rows: Iterator[tuple[Any, ...]], url: str) -> int:
    found = [row[0] for row in rows]
    known = [str(version) for version in KNOWN_SCHEMA_VERSIONS]
    if len(found) != 1 or found[0] not in known:
        raise LedgerError(
            f"ledger {url!r} has schema version {found or 'none'}; this AutoWeld knows "
            f"{', '.join(known)}"
        )
    return int(found[0])


# connection settings whose values are secrets (libpq's names; ``passfile`` and ``sslkey``
# are paths, hidden too: they say where a secret lies)
_SECRET_PARAMS = ("password", "sslpassword", "passfile", "sslkey", "sslcert")
_SECRET_PARAM = re.compile(
    r"(?i)(?<![A-Za-z0-9_])("
    + "|".join(_SECRET_PARAMS)
    + r")(\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s#;'\"]*)"
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s'\"]*)")


def redact_url(url: str) -> str:
    """``url`` (or any message that contains one) without its secrets, for messages and logs.

    Hides the password of ``scheme://user:password@host`` and the value of every
    ``password=``, ``sslpassword=``, ``passfile=``, ``sslkey=``, ``sslcert=`` setting, whether in
    a URL's query string (``?password=...``) or a libpq ``key=value`` connection string
    (quoted values too). The one redaction helper: every log line, error, status field and CLI
    message that names a database URL goes through it.
    """
    text = str(url)

    def userinfo(match: re.Match[str]) -> str:
        netloc = match.group(2)
        user, at, host = netloc.rpartition("@")
        if not at or ":" not in user:
            return match.group(0)
        return f"{match.group(1)}{user.split(':', 1)[0]}:***@{host}"

    text = _URL_USERINFO.sub(userinfo, text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///...`` URL or plain path (SQLAlchemy's rule: three slashes and a
    relative path, four slashes for an absolute one)."""
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ValueError(
                f"ledger url {url!r}: expected sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        return Path(url[len("sqlite:///") :])
    return Path(url)


def open_ledger(url: str | Path, keys: KeyRing | None = None, read_only: bool = False) -> Ledger:
    """Open (creating if needed) the ledger at ``url``.

    ``url``: ``sqlite:///path.db`` / a plain path (SQLite) or ``postgresql://...``.
    ``keys``: the key ring; by default read from the environment (:func:`load_keyring`), which
    raises :class:`~autoweld.quality.keys.MissingKeyError` when ``AUTOWELD_SECRET_KEY`` is unset.
    ``read_only``: create and change nothing (verify, head, export); a missing ledger is an
    error instead of a new empty one — an auditor's typo must never verify "OK".
    """
    if isinstance(url, Path):
        url = str(url)
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"ledger url must be a non-empty string, got {url!r}")
    keys = load_keyring() if keys is None else keys
    if not isinstance(keys, KeyRing):
        raise ValueError(f"keys must be a KeyRing, got {type(keys).__name__}")
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        return PostgresLedger(url, keys, read_only)
    if scheme in ("", "sqlite", "file") or len(scheme) == 1:  # len 1: a Windows drive letter
        if scheme == "file":
            url = url[len("file://") :]
        return SQLiteLedger(sqlite_path(url), keys, url, read_only)
    raise ValueError(
        f"ledger url {redact_url(url)!r}: unknown scheme {scheme!r} (use sqlite:///path.db, a file "
        "path, or postgresql://...)"
    )
