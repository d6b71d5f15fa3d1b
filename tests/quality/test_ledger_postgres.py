"""The PostgreSQL backend against a real server the suite starts itself (see conftest)."""

import multiprocessing
import threading
import time

import pytest

from autoweld.quality import (
    GENESIS_MAC,
    KeyRing,
    LedgerError,
    open_ledger,
    open_plc,
    record_inspection,
)
from autoweld.quality.ledger import _PG_LOCK_CLASS, PgTimeouts, PostgresLedger, pg_timeouts

from .conftest import SECRET, make_record

pytestmark = pytest.mark.postgres
psycopg = pytest.importorskip("psycopg")


def test_append_verify_and_read_back(pg_url, keys, tmp_path):
    with open_ledger(pg_url, keys) as ledger:
        assert isinstance(ledger, PostgresLedger)
        stored = [ledger.append(make_record(i)) for i in range(5)]
        assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
        assert stored[0].prev_mac == GENESIS_MAC
        # floats, booleans and JSON come back exactly as signed
        assert list(ledger.iter_records()) == stored
        report = ledger.verify(expect_head=ledger.head())
        assert report.ok and report.checked == 5
        assert ledger.export(tmp_path / "out.json") == 5
    with open_ledger(pg_url, keys) as ledger:  # schema creation is idempotent
        rec = ledger.append(make_record(5, plc_delivered=False, error="PLC down", decision="FAIL"))
        assert rec.seq == 6 and ledger.records(limit=1) == [rec]


def test_append_only_trigger_rejects_update_delete_truncate(pg_url, keys):
    with open_ledger(pg_url, keys) as ledger:
        for i in range(3):
            ledger.append(make_record(i))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for sql in (
            "UPDATE ledger_records SET decision = 'PASS' WHERE seq = 2",
            "DELETE FROM ledger_records WHERE seq = 3",
            "TRUNCATE ledger_records",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(sql)
        assert conn.execute("SELECT count(*) FROM ledger_records").fetchone()[0] == 3


def test_tampering_by_the_database_owner_is_named(pg_url, keys):
    with open_ledger(pg_url, keys) as ledger:
        for i in range(5):
            ledger.append(make_record(i))
        kept = ledger.head()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ledger_records DISABLE TRIGGER USER")
        conn.execute("UPDATE ledger_records SET part_id = 'VIN-forged' WHERE seq = 2")
        conn.execute("DELETE FROM ledger_records WHERE seq = 5")
    with open_ledger(pg_url, keys) as ledger:
        report = ledger.verify(expect_head=kept)
        assert (report.ok, report.first_bad_seq) == (False, 2)


def test_station_role_with_select_and_insert_only(pg_url, keys):
    """Least privilege: the ledger owner creates the schema, stations may only read and append."""
    with open_ledger(pg_url, keys) as ledger:
        ledger.append(make_record(0))
    role = "station_" + pg_url.rsplit("_", 1)[-1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT, INSERT ON ledger_records, ledger_meta TO {role}")
    station_url = pg_url.replace("postgresql://postgres@", f"postgresql://{role}@")
    try:
        with open_ledger(station_url, keys) as ledger:
            assert ledger.append(make_record(1)).seq == 2
            assert ledger.verify().ok
        with psycopg.connect(station_url, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM ledger_records")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON ledger_records, ledger_meta FROM {role}")
            conn.execute(f"DROP ROLE {role}")


def test_a_dropped_connection_fails_one_call_then_reconnects(pg_url, keys):
    with open_ledger(pg_url, keys) as ledger:
        ledger.append(make_record(0))
        pid = ledger._conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(LedgerError, match="append failed"):
            ledger.append(make_record(1))  # not acknowledged: the caller knows
        assert ledger.append(make_record(2)).seq == 2
        assert ledger.verify().checked == 2


def test_read_only_refuses_an_empty_database_and_appends(pg_url, keys):
    with pytest.raises(LedgerError, match="no AutoWeld ledger"):
        open_ledger(pg_url, keys, read_only=True)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('ledger_records')").fetchone()[0] is None
    with open_ledger(pg_url, keys) as ledger:
        ledger.append(make_record(0))
    with open_ledger(pg_url, keys, read_only=True) as ledger:
        assert ledger.verify().ok
        with pytest.raises(LedgerError, match="read-only"):
            ledger.append(make_record(1))


def test_no_url_password_in_messages(postgres_server, keys):
    url = f"postgresql://postgres:hunter2secret@127.0.0.1:{postgres_server.port}/nosuchdb"
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the message is what matters
        open_ledger(url, keys)
    assert "nosuchdb" in str(caught.value) and "hunter2secret" not in str(caught.value)


# ---- load ----------------------------------------------------------------------------------
def _process_writer(url: str, station: str, count: int, queue) -> None:
    try:
        keys = KeyRing.from_secret(SECRET, "k1")
        with open_ledger(url, keys) as ledger:
            seqs = [ledger.append(make_record(i, station)).seq for i in range(count)]
        queue.put((station, seqs))
    except BaseException as error:  # report, so the parent fails at once instead of waiting
        queue.put(("error", repr(error)))


def test_many_concurrent_writers_lose_nothing_and_keep_chains(pg_url, keys):
    """Threads and processes append at once, several to the same station: every acknowledged
    record is there, every station's seq is 1..n without gaps, and every chain verifies."""
    per_writer = 12
    plan = [("st-shared", 6), ("st-a", 2), ("st-b", 2), ("st-c", 1)]  # (station, writers)
    acknowledged: dict[str, list[int]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def thread_writer(station: str) -> None:
        try:
            with open_ledger(pg_url, keys) as ledger:
                seqs = [ledger.append(make_record(i, station)).seq for i in range(per_writer)]
            with lock:
                acknowledged.setdefault(station, []).extend(seqs)
        except BaseException as error:  # pragma: no cover - asserted below
            errors.append(error)

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    processes = [
        ctx.Process(target=_process_writer, args=(pg_url, station, per_writer, queue))
        for station in ("st-shared", "st-a")
        for _ in range(2)
    ]
    threads = [
        threading.Thread(target=thread_writer, args=(station,))
        for station, writers in plan
        for _ in range(writers)
    ]
    for worker in [*processes, *threads]:
        worker.start()
    for thread in threads:
        thread.join(120)
    results = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert not errors, errors
    assert not [r for r in results if r[0] == "error"], results
    for station, seqs in results:
        acknowledged.setdefault(station, []).extend(seqs)

    expected_counts = {"st-shared": 8, "st-a": 4, "st-b": 2, "st-c": 1}  # writers per station
    with open_ledger(pg_url, keys) as ledger:
        heads = ledger.heads()
        for station, writers in expected_counts.items():
            n = writers * per_writer
            assert sorted(acknowledged[station]) == list(range(1, n + 1)), station
            assert heads[station][0] == n
        report = ledger.verify(expect_head=heads)
        assert report.ok, report
        assert report.checked == sum(expected_counts.values()) * per_writer
        assert report.stations == 4


def _hold_station_lock(url, station):
    """A second connection holding the advisory lock an append of ``station`` needs."""
    conn = psycopg.connect(url)  # not autocommit: the xact lock lives until rollback
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_PG_LOCK_CLASS, station))
    return conn


def test_lock_timeout_bounds_an_append_waiting_on_another_writer(pg_url, keys):
    with open_ledger(f"{pg_url}?lock_timeout=0.3&statement_timeout=2", keys) as ledger:
        assert ledger.timeouts == PgTimeouts(statement_s=2.0, lock_s=0.3)
        ledger.append(make_record(0, "st-lock"))
        holder = _hold_station_lock(pg_url, "st-lock")
        try:
            start = time.monotonic()
            with pytest.raises(LedgerError, match="lock timeout"):
                ledger.append(make_record(1, "st-lock"))
            assert time.monotonic() - start < 1.5  # not forever, and not the 2 s statement cap
            other = ledger.append(make_record(1, "st-free"))  # other stations are not held up
            assert other.seq == 1
        finally:
            holder.rollback()
            holder.close()
        assert ledger.append(make_record(2, "st-lock")).seq == 2  # the connection is still good
        assert ledger.verify().ok


def test_statement_timeout_and_defaults_reach_the_server(pg_url, keys):
    with open_ledger(pg_url, keys) as ledger:
        conn = ledger._connection()
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "5s"
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "5s"
        client = conn.info.get_parameters()  # libpq's side of the socket
        assert client["tcp_user_timeout"] == "10000" and client["keepalives_idle"] == "5"
    with open_ledger(f"{pg_url}?statement_timeout=0.25", keys) as ledger:
        with pytest.raises(LedgerError, match="statement timeout"):
            ledger._guarded("sleep", lambda: ledger._connection().execute("SELECT pg_sleep(2)"))
    with open_ledger(pg_url, keys, read_only=True) as reader:
        assert reader._connection().execute("SHOW statement_timeout").fetchone()[0] == "2min"


def test_timed_out_append_is_a_recorded_fail_path(pg_url, keys, byte_server_factory):
    """record_inspection turns the lock timeout into a FAIL; the PLC ends on FAIL."""
    plc = byte_server_factory("echo")
    with (
        open_ledger(f"{pg_url}?lock_timeout=0.2", keys) as ledger,
        open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link,
    ):
        holder = _hold_station_lock(pg_url, "st-fail")
        try:
            outcome = record_inspection(
                _PassingResult(),
                part_id="VIN-9",
                station_id="st-fail",
                bundle_sha256="ab" * 32,
                package_version="0.1.0",
                ledger=ledger,
                link=link,
            )
        finally:
            holder.rollback()
            holder.close()
        received = plc.wait_received(2)
    assert outcome.decision == "FAIL" and outcome.record is None
    assert "ledger write failed" in outcome.error and "lock timeout" in outcome.error
    assert received == [0x00, 0x01]


class _PassingResult:
    decision = "PASS"
    probability = 0.1
    scores = {"patchcore": 1.0}
    probabilities = {"patchcore": 0.1}
    threshold = 0.5
    error = None


@pytest.mark.parametrize("query", ["lock_timeout=abc", "statement_timeout=0", "lock_timeout=nan"])
def test_bad_timeouts_in_the_url_are_refused(keys, query):
    with pytest.raises(ValueError, match=query.split("=")[0]):
        open_ledger(f"postgresql://nobody@127.0.0.1:1/x?{query}", keys)


def test_pg_timeouts_leaves_libpq_parameters_alone():
    dsn, timeouts = pg_timeouts("postgresql://u@h/db?sslmode=require&lock_timeout=1.5")
    assert dsn == "postgresql://u@h/db?sslmode=require"
    assert timeouts == PgTimeouts(statement_s=5.0, lock_s=1.5)
    assert pg_timeouts("postgresql://u@h/db")[0] == "postgresql://u@h/db"
