"""verify on odd stored types (issue 15 item 8): a stored value that is not what was signed —
another SQLite storage class, a non-integer seq, JSON that is not the canonical text (duplicate
keys) — names the first bad record; never a traceback, never a usage error."""

import pytest

from autoweld.quality import open_ledger

from .conftest import make_record
from .ledger_tamper import make_schema_1_ledger
from .ledger_tamper import tamper as _tamper


@pytest.fixture(params=["schema-1", "schema-2"])
def schema(request):
    """Odd stored types live in a ledger of the untyped schema 1 (made by earlier releases), or in
    a schema-2 ledger whose table an attacker rebuilt without its checks."""
    return request.param


def _ledger(path, keys, n=5, station="st-1", schema="schema-2"):
    if schema == "schema-1" and not path.exists():
        make_schema_1_ledger(path)
    with open_ledger(path, keys) as ledger:
        for i in range(n):
            ledger.append(make_record(i, station, plc_delivered=bool(i % 2)))
        return ledger.head(station)


def tamper(path, *statements):
    _tamper(path, *statements, rebuild=True)


def _verify(path, keys, expect_head=None):
    with open_ledger(path, keys, read_only=True) as ledger:
        return ledger.verify(expect_head=expect_head)


# each edit keeps the value SQL-equal or json-equal enough for the old verify to accept it (or
# crash on it); (statement, first bad seq, words the reason must name)
EDITS = {
    "station_id as blob": (
        "UPDATE ledger_records SET station_id = CAST(station_id AS BLOB) WHERE seq = 3",
        3, ("station_id", "blob")),
    "plc_delivered as text": (
        "UPDATE ledger_records SET plc_delivered = 'yes' WHERE seq = 2", 2,
        ("plc_delivered", "text")),
    "plc_delivered as 2": (
        "UPDATE ledger_records SET plc_delivered = 2 WHERE seq = 2", 2, ("plc_delivered",)),
    "plc_delivered as real": (
        "UPDATE ledger_records SET plc_delivered = 0.5 WHERE seq = 4", 4,
        ("plc_delivered", "real")),
    "float seq": ("UPDATE ledger_records SET seq = 3.5 WHERE seq = 3", 3, ("seq", "real")),
    "text seq": ("UPDATE ledger_records SET seq = 'x' WHERE seq = 5", 5, ("seq", "text")),
    "duplicate json key": (
        """UPDATE ledger_records SET scores_json =
           '{"patchcore":9.0,' || substr(scores_json, 2) WHERE seq = 2""",
        2, ("scores_json", "duplicate")),
    "json not canonical": (
        "UPDATE ledger_records SET probabilities_json = ' ' || probabilities_json WHERE seq = 4",
        4, ("probabilities_json", "canonical")),
    "fused as text": (
        "UPDATE ledger_records SET fused_probability = 'high' WHERE seq = 2", 2,
        ("fused_probability", "text")),
    "part_id as blob": (
        "UPDATE ledger_records SET part_id = CAST(part_id AS BLOB) WHERE seq = 2", 2,
        ("part_id", "blob")),
    "mac as blob": (
        "UPDATE ledger_records SET mac = CAST(mac AS BLOB) WHERE seq = 5", 5, ("mac", "blob")),
    "utc_time as blob": (
        "UPDATE ledger_records SET utc_time = x'00' WHERE seq = 1", 1, ("utc_time", "blob")),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EDITS))
def test_odd_stored_type_names_the_record(tmp_path, keys, name, schema):
    sql, bad_seq, words = EDITS[name]
    path = tmp_path / "ledger.db"
    kept = _ledger(path, keys, schema=schema)
    assert _verify(path, keys, kept).ok
    tamper(path, sql)
    for expect in (None, kept, {"st-1": kept}):
        report = _verify(path, keys, expect)
        assert not report.ok, (name, expect)
        assert (report.station_id, report.first_bad_seq) == ("st-1", bad_seq), report
        assert all(word in report.reason for word in words), report.reason


def test_odd_type_in_one_station_leaves_the_others_verified(tmp_path, keys, schema):
    path = tmp_path / "ledger.db"
    _ledger(path, keys, 3, "st-a", schema)
    _ledger(path, keys, 3, "st-b", schema)
    tamper(path, "UPDATE ledger_records SET station_id = CAST(station_id AS BLOB) "
                 "WHERE station_id = 'st-a' AND seq = 3")  # fmt: skip
    report = _verify(path, keys)
    assert (report.ok, report.station_id, report.first_bad_seq) == (False, "st-a", 3)
    assert [p[:2] for p in report.problems] == [("st-a", 3)]
    assert report.checked == 5


def test_batched_walk_copes_with_a_text_seq_at_a_batch_edge(tmp_path, keys, schema):
    path = tmp_path / "ledger.db"
    _ledger(path, keys, 4, schema=schema)
    tamper(path, "UPDATE ledger_records SET seq = 'x' WHERE seq = 4")
    with open_ledger(path, keys, read_only=True) as ledger:
        ledger.batch_rows = 2
        report = ledger.verify()
    assert (report.ok, report.first_bad_seq) == (False, 4)
    assert "seq" in report.reason


@pytest.mark.postgres
def test_postgres_json_not_stored_as_signed_is_named(pg_url, keys):
    psycopg = pytest.importorskip("psycopg")
    with open_ledger(pg_url, keys) as ledger:
        for i in range(4):
            ledger.append(make_record(i, plc_delivered=True))
        kept = ledger.head()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the database owner, a 2nd session
        conn.execute("ALTER TABLE ledger_records DISABLE TRIGGER USER")
        conn.execute("""UPDATE ledger_records SET scores_json =
                        '{"patchcore":9.0,' || substr(scores_json, 2) WHERE seq = 3""")
    with open_ledger(pg_url, keys, read_only=True) as ledger:
        report = ledger.verify(expect_head=kept)
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert "duplicate" in report.reason and "scores_json" in report.reason
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE ledger_records SET probabilities_json = "
                     "replace(probabilities_json, ',', ', ') WHERE seq = 2")  # fmt: skip
    with open_ledger(pg_url, keys, read_only=True) as ledger:
        report = ledger.verify(expect_head=kept)
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert "canonical" in report.reason
