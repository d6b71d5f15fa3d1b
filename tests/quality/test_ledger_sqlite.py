import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from autoweld.quality import (
    GENESIS_MAC,
    KeyRing,
    LedgerError,
    MissingKeyError,
    open_ledger,
    open_plc,
    signal_and_record,
)
from autoweld.quality.record import InspectionRecord, compute_mac

from .conftest import OLD_SECRET, SECRET
from .ledger_tamper import tamper as edit


def fill(ledger, n, station="st-1", start=0, make=None):
    from .conftest import make_record

    return [ledger.append((make or make_record)(start + i, station)) for i in range(n)]


def tamper(path, *statements):
    """What an attacker with file access does: drop the guard triggers, then edit."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER IF EXISTS ledger_records_no_update")
    conn.execute("DROP TRIGGER IF EXISTS ledger_records_no_delete")
    for statement in statements:
        if isinstance(statement, tuple):
            conn.execute(*statement)
        else:
            conn.execute(statement)
    conn.commit()
    conn.close()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "ledger.db"


def test_append_fills_chain_fields_and_verifies(db, keys, make_record):
    with open_ledger(f"sqlite:///{db}", keys) as ledger:
        stored = fill(ledger, 5)
        assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
        assert stored[0].prev_mac == GENESIS_MAC
        assert all(b.prev_mac == a.mac for a, b in zip(stored, stored[1:], strict=False))
        assert all(r.key_id == "k1" and len(r.record_id) == 36 for r in stored)
        assert stored[0].utc_time.endswith("+00:00")
        assert len({r.record_id for r in stored}) == 5
        report = ledger.verify()
        assert report.ok and report.checked == 5 and report.first_bad_seq is None
        assert ledger.head() == (5, stored[-1].mac)
        # what was stored is what was returned, field by field
        assert list(ledger.iter_records()) == stored
        assert ledger.records(part_id="VIN-000003") == [stored[3]]
        assert [r.seq for r in ledger.records(limit=2)] == [5, 4]
    # reopening (plain path) sees the same ledger
    with open_ledger(str(db), keys) as ledger:
        assert ledger.verify().checked == 5


def test_ledger_refuses_to_open_without_a_key(db, monkeypatch):
    monkeypatch.delenv("AUTOWELD_SECRET_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="AUTOWELD_SECRET_KEY"):
        open_ledger(f"sqlite:///{db}")
    assert not db.exists()


def test_key_from_environment(db, key_env, make_record):
    with open_ledger(f"sqlite:///{db}") as ledger:
        assert ledger.append(make_record(0)).key_id == "k1"


@pytest.mark.parametrize(
    ("url", "needle"),
    [("", "non-empty"), ("sqlite://", "sqlite:///"), ("mysql://x/y", "unknown scheme")],
)
def test_bad_urls(keys, url, needle):
    with pytest.raises(ValueError, match=needle):
        open_ledger(url, keys)


def test_missing_directory_is_a_clear_error(tmp_path, keys):
    with pytest.raises(ValueError, match="does not exist"):
        open_ledger(tmp_path / "no" / "ledger.db", keys)


def test_ledger_fields_cannot_be_preset(db, keys, make_record):
    with open_ledger(db, keys) as ledger:
        with pytest.raises(ValueError, match="set by the ledger"):
            ledger.append(make_record(0, seq=7))
        with pytest.raises(ValueError, match="InspectionRecord"):
            ledger.append({"part_id": "x"})


def test_triggers_refuse_update_and_delete(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 2)
    conn = sqlite3.connect(db)
    for sql in ("UPDATE ledger_records SET decision = 'PASS'", "DELETE FROM ledger_records"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
    conn.close()


def test_uses_wal_and_full_sync(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 1)
        assert ledger._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# ---- tampering -----------------------------------------------------------------------------
def _verify(db, keys, expect_head=None):
    with open_ledger(db, keys) as ledger:
        return ledger.verify(expect_head=expect_head)


def test_edited_record_is_named(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 6)
    tamper(db, "UPDATE ledger_records SET decision = 'PASS' WHERE seq = 4")
    report = _verify(db, keys)
    assert not report.ok and report.first_bad_seq == 4 and report.station_id == "st-1"
    assert "MAC" in report.reason and report.checked == 3


def test_edited_float_is_named(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 4)
    tamper(db, "UPDATE ledger_records SET fused_probability = fused_probability + 1e-12 "
           "WHERE seq = 2")  # fmt: skip
    assert _verify(db, keys).first_bad_seq == 2


def test_deleted_record_is_named(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 6)
    tamper(db, "DELETE FROM ledger_records WHERE seq = 3")
    report = _verify(db, keys)
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert "missing" in report.reason


def test_deleted_and_renumbered_is_named(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 6)
    tamper(
        db,
        "DELETE FROM ledger_records WHERE seq = 3",
        *[f"UPDATE ledger_records SET seq = {s - 1} WHERE seq = {s}" for s in (4, 5, 6)],
    )
    report = _verify(db, keys)
    assert (report.ok, report.first_bad_seq) == (False, 3)


def test_inserted_record_is_named(db, keys, make_record):
    with open_ledger(db, keys) as ledger:
        stored = fill(ledger, 5)
    forger = KeyRing.from_secret("the-attacker-guess-0123456789-ghijklmnop", "k1")
    fake = InspectionRecord(
        **{**make_record(99).to_dict(), "seq": 3, "record_id": "f" * 36,
           "utc_time": stored[2].utc_time, "key_id": "k1", "prev_mac": stored[1].mac}
    )  # fmt: skip
    fake = InspectionRecord(**{**fake.to_dict(), "mac": compute_mac(forger.signing_key, fake)})
    from autoweld.quality.ledger import COLUMNS, _record_to_row

    insert = (
        f"INSERT INTO ledger_records ({', '.join(COLUMNS)}) VALUES "
        f"({', '.join('?' * len(COLUMNS))})",
        _record_to_row(fake),
    )
    renumber = [f"UPDATE ledger_records SET seq = {s + 1} WHERE seq = {s}" for s in (5, 4, 3)]
    tamper(db, *renumber, insert)
    report = _verify(db, keys)
    assert (report.ok, report.first_bad_seq) == (False, 3)


def test_record_appended_without_the_key_is_named(db, keys, make_record):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 3)
    with open_ledger(
        db, KeyRing.from_secret("not-the-real-key-0123456789-ghijklmnop", "k1")
    ) as forger:
        forger.append(make_record(3))
    report = _verify(db, keys)
    assert (report.ok, report.first_bad_seq) == (False, 4)


def test_reordered_records_are_named(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 5)
    tamper(
        db,
        "UPDATE ledger_records SET seq = 1000 WHERE seq = 2",
        "UPDATE ledger_records SET seq = 2 WHERE seq = 3",
        "UPDATE ledger_records SET seq = 3 WHERE seq = 1000",
    )
    report = _verify(db, keys)
    assert (report.ok, report.first_bad_seq) == (False, 2)


def test_unreadable_row_is_named(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 3)
    # the database refuses it (typed storage); an attacker with the file rebuilds the table
    with pytest.raises(sqlite3.IntegrityError, match="json_valid"):
        edit(db, "UPDATE ledger_records SET scores_json = '{broken' WHERE seq = 2", rebuild=False)
    edit(db, "UPDATE ledger_records SET scores_json = '{broken' WHERE seq = 2", rebuild=True)
    report = _verify(db, keys)
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert "cannot be read" in report.reason


def test_truncated_tail_needs_the_kept_head(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 5)
        kept = ledger.head()
        assert ledger.verify(expect_head=kept).ok
    tamper(db, "DELETE FROM ledger_records WHERE seq >= 4")
    assert _verify(db, keys).ok  # the remaining chain is intact on its own ...
    report = _verify(db, keys, expect_head=kept)  # ... but the kept head exposes the cut
    assert (report.ok, report.first_bad_seq) == (False, 4)
    assert "truncated" in report.reason


def test_rewritten_tail_fails_the_kept_head(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 3)
        seq, mac = ledger.head()
        assert ledger.verify(expect_head=(seq, "0" * 64)).first_bad_seq == 3
        fill(ledger, 2, start=3)  # a ledger that grew since the head was kept is fine
        assert ledger.verify(expect_head=(seq, mac)).ok


def test_wrong_key_is_detected(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 3)
    report = _verify(db, KeyRing.from_secret("a-different-secret-0123456789-ghijklmnop", "k1"))
    assert (report.ok, report.first_bad_seq) == (False, 1)
    report = _verify(db, KeyRing.from_secret("a-different-secret-0123456789-ghijklmnop", "k7"))
    assert (report.ok, report.first_bad_seq) == (False, 1)
    assert "unknown key id 'k1'" in report.reason


def test_key_rotation(db):
    old = KeyRing.from_secret(OLD_SECRET, "k0")
    with open_ledger(db, old) as ledger:
        fill(ledger, 3)
    new = KeyRing.from_secret(SECRET, "k1", verify_keys={"k0": OLD_SECRET})
    with open_ledger(db, new) as ledger:
        stored = fill(ledger, 2, start=3)
        assert [r.key_id for r in stored] == ["k1", "k1"]
        assert [r.key_id for r in ledger.iter_records()] == ["k0"] * 3 + ["k1"] * 2
        assert ledger.verify().ok and ledger.verify().checked == 5
    # the old key forgotten: the old records can no longer be proven
    report = _verify(db, KeyRing.from_secret(SECRET, "k1"))
    assert (report.ok, report.first_bad_seq) == (False, 1)


def test_stations_have_separate_chains(db, keys):
    with open_ledger(db, keys) as ledger:
        for i in range(4):
            fill(ledger, 1, "st-a", start=i)
            fill(ledger, 1, "st-b", start=i)
        heads = ledger.heads()
        assert [seq for seq, _ in heads.values()] == [4, 4]
        assert next(r for r in ledger.iter_records("st-b")).prev_mac == GENESIS_MAC
        with pytest.raises(ValueError, match="station_id is required"):
            ledger.head()
        assert ledger.verify(expect_head=heads).ok
        with pytest.raises(ValueError, match="expect_head must name the station"):
            ledger.verify(expect_head=heads["st-a"])
    tamper(db, "UPDATE ledger_records SET part_id = 'X' WHERE station_id = 'st-b' AND seq = 2")
    report = _verify(db, keys)
    assert (report.station_id, report.first_bad_seq) == ("st-b", 2)
    tamper(db, "DELETE FROM ledger_records WHERE station_id = 'st-a'")
    report = _verify(db, keys, expect_head=heads)
    assert (report.station_id, report.first_bad_seq) == ("st-a", 1)
    assert [(s, q) for s, q, _ in report.problems] == [("st-a", 1), ("st-b", 2)]


def test_concurrent_writers_on_one_file(db, keys):
    errors = []

    def writer(w):
        try:
            with open_ledger(db, keys) as ledger:
                fill(ledger, 15, station="st-shared", start=w * 100)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open_ledger(db, keys) as ledger:
        assert ledger.verify().checked == 60
        assert ledger.head()[0] == 60


def test_stations_opening_a_new_ledger_file_at_once(keys, tmp_path):
    """Opening a new file switches it to WAL; SQLite answers BUSY at once (no busy wait) when
    another connection holds BEGIN IMMEDIATE, so a simultaneous open must retry, not fail."""
    for attempt in range(15):
        path = tmp_path / f"new-{attempt}.db"
        start = threading.Barrier(8)
        errors = []

        def station(w, path=path, start=start, errors=errors):
            try:
                start.wait()
                with open_ledger(path, keys) as ledger:
                    fill(ledger, 1, station=f"st-{w}")
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=station, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:1]
        with open_ledger(path, keys) as ledger:
            assert ledger.verify().checked == 8


def test_export_csv_and_json(db, keys, tmp_path):
    with open_ledger(db, keys) as ledger:
        stored = fill(ledger, 4)
        assert ledger.export(tmp_path / "out.csv") == 4
        assert ledger.export(tmp_path / "out.dat", "json") == 4
        with pytest.raises(ValueError, match="fmt"):
            ledger.export(tmp_path / "out.xml")
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["seq"]) for r in rows] == [1, 2, 3, 4]
    assert [r["mac"] for r in rows] == [r.mac for r in stored]
    assert json.loads(rows[1]["scores"]) == stored[1].scores
    assert float(rows[2]["fused_probability"]) == stored[2].fused_probability
    data = json.loads((tmp_path / "out.dat").read_text())
    assert [InspectionRecord.from_dict(r) for r in data["records"]] == stored
    assert data["heads"] == {"st-1": {"seq": 4, "mac": stored[-1].mac}}


def test_closed_ledger_refuses_work(db, keys, make_record):
    ledger = open_ledger(db, keys)
    ledger.close()
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.append(make_record(0))


def test_signal_then_record_with_a_down_plc(db, keys, make_record):
    from .conftest import free_port

    with open_ledger(db, keys) as ledger, open_plc(f"tcp://127.0.0.1:{free_port()}") as link:
        stored = signal_and_record(make_record(1), ledger, link)
        assert stored.plc_delivered is False and stored.decision == "FAIL" and stored.seq == 1
        assert ledger.verify().ok
    assert signal_and_record(make_record(2)).plc_delivered is None


_CHILD = r"""
import sys
from autoweld.quality import InspectionRecord, open_ledger
with open_ledger(sys.argv[1]) as ledger:
    i = 0
    while True:
        rec = ledger.append(InspectionRecord(
            station_id="st-kill", part_id=f"P{i}", bundle_sha256="cd" * 32,
            package_version="0.1.0", decision="PASS" if i % 3 else "FAIL",
            scores={"patchcore": i * 0.5}, probabilities={"patchcore": 0.25},
            fused_probability=0.25, threshold=0.5))
        sys.stdout.write(f"{rec.seq}\n")
        sys.stdout.flush()
        i += 1
"""


def test_sigkill_loses_no_acknowledged_record(db, key_env):
    """A writer killed mid-stream: every seq it acknowledged is in the file, and it verifies."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **key_env},
    )
    acknowledged = []
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acknowledged.append(int(line))
    child.send_signal(signal.SIGKILL)
    rest, err = child.communicate(timeout=30)
    acknowledged += [int(x) for x in rest.split()]  # written before the kill: acknowledged too
    assert child.returncode == -signal.SIGKILL, err
    assert len(acknowledged) >= 40, err
    assert acknowledged == list(range(1, len(acknowledged) + 1))
    with open_ledger(db) as ledger:
        stored = [r.seq for r in ledger.iter_records("st-kill")]
        assert set(acknowledged) <= set(stored)
        report = ledger.verify()
        assert report.ok, report
        assert report.checked == len(stored)


def test_whole_ledger_walk_is_batched(db, keys, tmp_path):
    with open_ledger(db, keys) as ledger:
        ledger.batch_rows = 3  # many small pages across the station boundary
        fill(ledger, 7, "st-a")
        fill(ledger, 5, "st-b")
        assert ledger.count() == 12 and ledger.count("st-b") == 5
        walked = [(r.station_id, r.seq) for r in ledger.iter_records()]
        assert walked == [("st-a", i) for i in range(1, 8)] + [("st-b", i) for i in range(1, 6)]
        assert [r.seq for r in ledger.iter_records("st-b")] == [1, 2, 3, 4, 5]
        assert ledger.verify(progress=True).checked == 12
        assert ledger.export(tmp_path / "all.json", progress=True) == 12
    tamper(db, "UPDATE ledger_records SET part_id = 'X' WHERE station_id = 'st-a' AND seq = 7")
    with open_ledger(db, keys) as ledger:
        ledger.batch_rows = 3
        report = ledger.verify()
        assert (report.station_id, report.first_bad_seq, report.checked) == ("st-a", 7, 11)


def test_read_only_open_changes_nothing(db, keys, tmp_path, make_record):
    with pytest.raises(ValueError, match="no ledger file"):
        open_ledger(db, keys, read_only=True)
    assert not db.exists()  # a typo never becomes a new, empty ledger that "verifies"
    with open_ledger(db, keys) as ledger:
        fill(ledger, 3)
    os.chmod(db, 0o444)
    with open_ledger(f"sqlite:///{db}", keys, read_only=True) as ledger:
        assert ledger.verify().checked == 3
        with pytest.raises(LedgerError, match="read-only"):
            ledger.append(make_record(3))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(LedgerError, match="not an AutoWeld ledger"):
        open_ledger(other, keys, read_only=True)


def test_unknown_schema_version_is_refused(db, keys):
    with open_ledger(db, keys) as ledger:
        fill(ledger, 1)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE ledger_meta SET value = '99'")
    conn.commit()
    conn.close()
    for read_only in (False, True):
        with pytest.raises(LedgerError, match="schema version"):
            open_ledger(db, keys, read_only=read_only)


def test_busy_timeout_follows_each_call_and_is_set_only_when_it_changes(db, keys, make_record):
    """Appends with a deadline never wait in SQLite's busy handler (busy timeout 0); a call
    without one waits for a lock another connection holds, as before. The PRAGMA runs only
    when the kind of call changes, not twice per record."""
    with open_ledger(f"sqlite:///{db}", keys) as ledger:
        statements = []
        ledger._conn.set_trace_callback(statements.append)
        for i in range(3):
            ledger.append(make_record(i), timeout=5.0)
        assert [s for s in statements if "busy_timeout" in s] == ["PRAGMA busy_timeout = 0"]
        # another writer holds the lock for 0.3 s: a call without a deadline waits it out
        other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
        started = time.monotonic()
        stored = ledger.append(make_record(3))  # no deadline
        assert stored.seq == 4 and time.monotonic() - started >= 0.25
        assert [s for s in statements if "busy_timeout" in s][-1] == "PRAGMA busy_timeout = 30000"
        # and a call with a deadline gives up at it instead of waiting 30 s
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(LedgerError, match="deadline"):
            ledger.append(make_record(4), timeout=0.1)
        assert time.monotonic() - started < 1.0
        other.execute("COMMIT")
        other.close()
        assert ledger.append(make_record(5), timeout=5.0).seq == 5
        assert ledger.verify().ok


def test_watchdog_fires_every_deadline_on_time_in_any_order():
    """The watchdog thread is woken only for a deadline earlier than all it holds; a later
    one must still fire on time, after the earlier ones (disarmed or not)."""
    from autoweld.quality.ledger import _Watchdog

    dog = _Watchdog()
    fired: dict[str, float] = {}
    start = time.monotonic()

    def at(name):
        return lambda: fired.setdefault(name, time.monotonic() - start)

    first = dog.arm(start + 0.25, at("first"))
    time.sleep(0.02)  # the thread now sleeps until the 0.25 s deadline
    dog.arm(start + 0.45, at("later"))  # later than the earliest: no wake-up
    dog.arm(start + 0.05, at("earlier"))  # earlier: the thread must wake and re-plan
    dropped = dog.arm(start + 0.35, at("dropped"))
    assert dog.disarm(dropped) is False
    time.sleep(0.7)
    assert dog.disarm(first) is True
    assert set(fired) == {"earlier", "first", "later"}
    assert 0.05 <= fired["earlier"] < 0.2  # not held back to the 0.25 s one
    assert fired["earlier"] < fired["first"] < fired["later"]
    assert fired["first"] >= 0.25 and fired["later"] >= 0.45
    # an idle watchdog (empty heap) is woken for a new deadline
    dog.arm(time.monotonic() + 0.03, at("after_idle"))
    time.sleep(0.3)
    assert "after_idle" in fired
