"""Ledger schema 2 (issue 15 item 8): typed, strict storage — the database itself refuses a
value of another type than the record signs — and ledgers of schema 1 (made by earlier
releases, untyped) still open, verify and take new records."""

import json
import sqlite3
from dataclasses import replace

import pytest

from autoweld.quality import open_ledger
from autoweld.quality.ledger import SCHEMA_VERSION, TABLE
from autoweld.quality.record import GENESIS_MAC, compute_mac

from .conftest import make_record
from .ledger_tamper import SCHEMA_1_COLUMNS, make_schema_1_ledger, tamper
from .test_ledger_stored_types import EDITS

#: edits the storage cannot see (valid JSON objects): verify names them instead
_CAUGHT_BY_VERIFY = {"duplicate json key", "json not canonical"}


def _fill(path, keys, n=5, **fields):
    with open_ledger(path, keys) as ledger:
        for i in range(n):
            ledger.append(make_record(i, plc_delivered=bool(i % 2), **fields))
        return ledger.head()


@pytest.mark.parametrize("name", sorted(set(EDITS) - _CAUGHT_BY_VERIFY))
def test_schema_2_refuses_a_value_of_another_type(tmp_path, keys, name):
    path = tmp_path / "ledger.db"
    _fill(path, keys)
    with pytest.raises(sqlite3.IntegrityError):  # even with the guard triggers dropped
        tamper(path, EDITS[name][0], rebuild=False)
    with open_ledger(path, keys, read_only=True) as ledger:
        assert ledger.verify().ok and ledger.verify().checked == 5


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_records SET scores_json = '[1.0]' WHERE seq = 2",
        "UPDATE ledger_records SET mac = upper(mac) WHERE seq = 2",
        "UPDATE ledger_records SET bundle_signed = 'false' WHERE seq = 2",
        "UPDATE ledger_records SET fused_probability = 1.5 WHERE seq = 2",
        "UPDATE ledger_records SET station_id = '' WHERE seq = 2",
    ],
)
def test_schema_2_refuses_forms_the_record_never_signs(tmp_path, keys, sql):
    path = tmp_path / "ledger.db"
    _fill(path, keys)
    with pytest.raises(sqlite3.IntegrityError):
        tamper(path, sql, rebuild=False)


def test_new_ledger_is_strict_and_schema_2(tmp_path, keys):
    path = tmp_path / "ledger.db"
    _fill(path, keys, 1)
    conn = sqlite3.connect(path)
    ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (TABLE,)).fetchone()[0]
    version = conn.execute("SELECT value FROM ledger_meta").fetchone()[0]
    conn.close()
    assert version == str(SCHEMA_VERSION) == "2"
    assert ddl.rstrip().endswith("STRICT") and "typeof(station_id)" in ddl


def _old_writer_rows(keys, n):
    """Rows as AutoWeld before schema 2 wrote them: 19 columns, no bundle_signed."""
    rows, prev = [], GENESIS_MAC
    for i in range(n):
        record = replace(
            make_record(i, plc_delivered=bool(i % 2)),
            seq=i + 1,
            record_id=f"00000000-0000-4000-8000-{i:012d}",
            key_id="k1",
            utc_time=f"2025-01-01T00:00:0{i}.000000+00:00",
            prev_mac=prev,
        )
        mac = compute_mac(keys.signing_key, record)
        data = {**record.to_dict(), "mac": mac}
        data["scores_json"] = json.dumps(data.pop("scores"), sort_keys=True, separators=(",", ":"))
        data["probabilities_json"] = json.dumps(
            data.pop("probabilities"), sort_keys=True, separators=(",", ":")
        )
        rows.append(tuple(data[c] for c in SCHEMA_1_COLUMNS))
        prev = mac
    return rows


def test_schema_1_ledger_opens_verifies_and_takes_new_records(tmp_path, keys):
    path = tmp_path / "old.db"
    make_schema_1_ledger(path)
    conn = sqlite3.connect(path)
    marks = ", ".join("?" * len(SCHEMA_1_COLUMNS))
    conn.executemany(f"INSERT INTO {TABLE} ({', '.join(SCHEMA_1_COLUMNS)}) VALUES ({marks})",
                     _old_writer_rows(keys, 3))  # fmt: skip
    conn.commit()
    conn.close()
    # read-only (an auditor's copy): nothing changes, the missing column reads as NULL
    with open_ledger(path, keys, read_only=True) as ledger:
        report = ledger.verify()
        assert (report.ok, report.checked) == (True, 3), report
        assert [r.bundle_signed for r in ledger.iter_records()] == [None] * 3
    columns = [row[1] for row in sqlite3.connect(path).execute(f"PRAGMA table_info({TABLE})")]
    assert "bundle_signed" not in columns
    # a station opens it: one nullable column is added, the old records stay as they were
    with open_ledger(path, keys) as ledger:
        stored = ledger.append(make_record(9, bundle_signed=False))
        assert (stored.seq, stored.bundle_signed) == (4, False)
        assert ledger.verify().ok and ledger.verify().checked == 4
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM ledger_meta").fetchone()[0] == "1"  # not rebuilt
    assert conn.execute(f"SELECT bundle_signed FROM {TABLE} ORDER BY seq").fetchall() == [
        (None,),
        (None,),
        (None,),
        (0,),
    ]
    conn.close()


def test_bundle_signed_is_stored_and_its_removal_is_named(tmp_path, keys):
    path = tmp_path / "ledger.db"
    kept = _fill(path, keys, 3, bundle_signed=False)
    with open_ledger(path, keys, read_only=True) as ledger:
        assert [r.bundle_signed for r in ledger.iter_records()] == [False] * 3
    tamper(path, "UPDATE ledger_records SET bundle_signed = NULL WHERE seq = 2", rebuild=False)
    with open_ledger(path, keys, read_only=True) as ledger:
        report = ledger.verify(expect_head=kept)
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert "MAC does not match" in report.reason


@pytest.mark.postgres
def test_postgres_schema_2_is_typed_and_checked(pg_url, keys):
    psycopg = pytest.importorskip("psycopg")
    _fill(pg_url, keys, 3, bundle_signed=True)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ledger_records DISABLE TRIGGER USER")
        for sql in (
            "UPDATE ledger_records SET scores_json = '[1.0]' WHERE seq = 2",
            "UPDATE ledger_records SET mac = upper(mac) WHERE seq = 2",
            "UPDATE ledger_records SET fused_probability = 1.5 WHERE seq = 2",
        ):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(sql)
        with pytest.raises(psycopg.errors.DatatypeMismatch):
            conn.execute("UPDATE ledger_records SET bundle_signed = 2 WHERE seq = 2")
    with open_ledger(pg_url, keys, read_only=True) as ledger:
        assert ledger.verify().ok
        assert [r.bundle_signed for r in ledger.iter_records()] == [True] * 3


@pytest.mark.postgres
def test_postgres_schema_1_ledger_gains_the_column_and_verifies(pg_url, keys):
    psycopg = pytest.importorskip("psycopg")
    from .ledger_tamper import SCHEMA_1_DDL

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(SCHEMA_1_DDL)
        conn.execute("CREATE TABLE ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO ledger_meta VALUES ('schema_version', '1')")
        marks = ", ".join(["%s"] * len(SCHEMA_1_COLUMNS))
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {TABLE} ({', '.join(SCHEMA_1_COLUMNS)}) VALUES ({marks})",
                _old_writer_rows(keys, 3),
            )
    with open_ledger(pg_url, keys, read_only=True) as ledger:
        assert ledger.verify().ok and ledger.verify().checked == 3
    with open_ledger(pg_url, keys) as ledger:
        assert ledger.append(make_record(5, bundle_signed=False)).seq == 4
        assert ledger.verify().ok and ledger.verify().checked == 4
