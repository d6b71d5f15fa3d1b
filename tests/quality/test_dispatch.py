"""The order of PLC signal and ledger record (autoweld.quality.dispatch), against a real SQLite
ledger and a real TCP PLC on loopback."""

import sqlite3
from dataclasses import dataclass, field

import pytest

from autoweld.quality import (
    LedgerError,
    open_ledger,
    open_plc,
    record_inspection,
    signal_and_record,
)
from autoweld.quality.plc import TCP_CODES

from .conftest import make_record, wait_written

PASS, FAIL = TCP_CODES["PASS"], TCP_CODES["FAIL"]


def break_ledger(db):
    """A real database failure for the next append: the table is gone under the writer."""
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE ledger_records RENAME TO moved_away")
    conn.commit()
    conn.close()


@pytest.fixture
def db(tmp_path, key_env):
    path = tmp_path / "ledger.db"
    with open_ledger(path) as ledger:  # create the schema
        ledger.append(make_record(1))
    return path


def test_unwritten_pass_never_leaves_pass_as_last_signal(db, byte_server_factory):
    plc = byte_server_factory("echo")
    with open_ledger(db) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link:
        break_ledger(db)
        with pytest.raises(LedgerError):
            signal_and_record(make_record(2), ledger, link)  # even i: a PASS record
        received = plc.wait_received(2)
    assert received[0] == PASS  # the PLC is told first, as documented
    assert received[-1] == FAIL  # ... and corrected when the record could not be written


def test_unwritten_fail_is_signalled_once(db, byte_server_factory):
    plc = byte_server_factory("echo")
    with open_ledger(db) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link:
        break_ledger(db)
        with pytest.raises(LedgerError):
            signal_and_record(make_record(3), ledger, link)  # odd i: a FAIL record
        assert plc.wait_received(1) == [FAIL]


def test_written_pass_is_signalled_once_and_recorded(db, byte_server_factory):
    plc = byte_server_factory("echo")
    with open_ledger(db) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link:
        stored = signal_and_record(make_record(2), ledger, link)
        assert (stored.decision, stored.plc_delivered, stored.seq) == ("PASS", True, 2)
        assert plc.wait_received(1, timeout=0.2) == [PASS]
        assert ledger.verify().ok


@dataclass
class Result:
    """The fields record_inspection reads from the runtime's InspectionResult."""

    decision: str = "PASS"
    probability: float = 0.2
    scores: dict = field(default_factory=lambda: {"patchcore": 1.5})
    probabilities: dict = field(default_factory=lambda: {"patchcore": 0.2})
    threshold: float = 0.5
    error: str | None = None


def _record(result, ledger, link=None, part_id="VIN-1", station_id="cell-1", **options):
    return record_inspection(
        result,
        part_id=part_id,
        station_id=station_id,
        bundle_sha256="ab" * 32,
        package_version="0.1.0",
        ledger=ledger,
        link=link,
        **options,
    )


def test_record_inspection_writes_and_signals_a_pass(db, byte_server_factory):
    plc = byte_server_factory("echo")
    with open_ledger(db) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link:
        outcome = _record(Result(), ledger, link)
    assert (outcome.decision, outcome.error, outcome.plc_delivered) == ("PASS", None, True)
    assert outcome.record_seq == 1 and outcome.record.fused_probability == 0.2
    assert plc.wait_received(1, timeout=0.2) == [PASS]


@pytest.mark.parametrize(
    ("overrides", "part_id", "station_id", "reason"),
    [
        ({"probability": 1.5, "decision": "FAIL"}, "VIN-1", "cell-1", "fused_probability"),
        ({"probabilities": {"patchcore": -0.3}}, "VIN-1", "cell-1", "probabilities"),
        ({}, "   ", "cell-1", "part_id"),
        ({}, "VIN-1", " ", "station_id"),
        ({}, "VIN\x00", "cell-1", "part_id"),
    ],
)
def test_refused_record_becomes_a_minimal_recorded_fail(
    db, byte_server_factory, overrides, part_id, station_id, reason
):
    plc = byte_server_factory("echo")
    with open_ledger(db) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link:
        outcome = _record(Result(**overrides), ledger, link, part_id, station_id)
        assert ledger.verify().ok
        assert ledger.count() == 2  # the inspection did not go unrecorded
    assert outcome.decision == "FAIL" and outcome.record_seq == 1
    assert "quality record refused" in outcome.error and reason in outcome.error
    stored = outcome.record
    assert stored.decision == "FAIL" and stored.error == outcome.error
    assert stored.fused_probability is None and dict(stored.probabilities) == {}
    if part_id.strip() and part_id.isprintable():
        assert stored.part_id == part_id
    else:
        assert stored.part_id == "INVALID-PART-ID"
    assert plc.wait_received(1, timeout=0.2) == [FAIL]


def test_probability_round_off_is_clamped_not_refused(db):
    with open_ledger(db) as ledger:
        outcome = _record(
            Result(decision="FAIL", probability=1.0 + 1e-9, probabilities={"patchcore": -1e-9}),
            ledger,
        )
    assert outcome.error is None and outcome.record.fused_probability == 1.0
    assert outcome.record.probabilities == {"patchcore": 0.0}


@pytest.mark.parametrize(
    "overrides",
    [
        {"error": "engine crashed"},
        {"probability": float("nan")},
        {"threshold": float("nan")},
        {"probability": 0.7},  # a "PASS" above its threshold
        {"decision": "MAYBE"},
    ],
)
def test_inconsistent_pass_is_recorded_as_fail(db, overrides):
    with open_ledger(db) as ledger:
        outcome = _record(Result(**overrides), ledger)
    assert outcome.decision == "FAIL" and outcome.record.decision == "FAIL"
    assert outcome.error and outcome.record.error == outcome.error


def test_unwritable_record_is_a_fail_and_corrected_on_the_plc(db, byte_server_factory):
    plc = byte_server_factory("echo")
    with open_ledger(db) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link:
        break_ledger(db)
        outcome = _record(Result(), ledger, link)
        received = plc.wait_received(2)
    assert outcome.decision == "FAIL" and outcome.record is None
    assert outcome.error.startswith("ledger write failed")
    assert "the PASS was corrected with a FAIL to the PLC (delivered)" in outcome.error
    assert outcome.plc_delivered is True  # the FAIL that now stands was delivered
    assert received == [PASS, FAIL]


def test_a_pass_record_durable_after_its_deadline_is_reported_as_corrected(
    db, byte_server_factory, monkeypatch
):
    """The other way a PASS record misses its deadline: the append is not cut off but returns
    after the watchdog sent the corrective FAIL. The record is stored, the FAIL stands, and the
    outcome names the correction as it does for an append that failed."""
    plc = byte_server_factory("echo")
    with open_ledger(db) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link:
        real_append = ledger.append

        def late_append(record, timeout=None):
            # returns only once the watchdog's corrective FAIL (50 ms deadline below) is at
            # the PLC, and is not interrupted by it
            plc.wait_received(2, timeout=10.0)
            return real_append(record)

        monkeypatch.setattr(ledger, "append", late_append)
        outcome = _record(Result(), ledger, link, part_id="VIN-LATE", record_deadline_s=0.05)
        received = plc.wait_received(2)
        monkeypatch.undo()
        assert wait_written(ledger) == 0
        # the late PASS record stands in the chain, the queued FAIL after it
        late = sorted(ledger.records(part_id="VIN-LATE"), key=lambda r: r.seq)
        assert [r.decision for r in late] == ["PASS", "FAIL"]
        assert ledger.verify().ok
    assert outcome.decision == "FAIL" and outcome.record is None
    assert "became durable" in outcome.error
    assert "the PASS was corrected with a FAIL to the PLC (delivered)" in outcome.error
    assert received == [PASS, FAIL]


def test_an_unwritable_fail_record_claims_no_correction(db, byte_server_factory):
    plc = byte_server_factory("echo")
    with open_ledger(db) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link:
        break_ledger(db)
        outcome = _record(Result(probability=0.9, decision="FAIL"), ledger, link)
        received = plc.wait_received(1)
    assert outcome.decision == "FAIL" and outcome.error.startswith("ledger write failed")
    assert "corrected" not in outcome.error
    assert received == [FAIL]


def test_the_caller_result_is_left_alone_and_a_new_one_returned(db):
    """record_inspection hands back a copy with the final decision; the result it was given,
    which the caller may still hold, keeps what the inspection said."""
    given = Result()
    with open_ledger(db) as ledger:
        break_ledger(db)
        outcome = _record(given, ledger)
    assert (given.decision, given.error) == ("PASS", None)
    assert outcome.result is not given and isinstance(outcome.result, Result)
    assert (outcome.result.decision, outcome.decision) == ("FAIL", "FAIL")
    assert outcome.result.error == outcome.error and outcome.error.startswith("ledger write")
    assert outcome.result.scores == given.scores and outcome.result.probability == 0.2


def test_plc_and_record_times_are_reported(db, byte_server_factory):
    """The benchmark's two station stages come from here: the send and the record."""
    plc = byte_server_factory("echo")
    with open_ledger(db) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}", timeout=1.0) as link:
        outcome = _record(Result(), ledger, link)
    assert set(outcome.timings_ms) == {"plc", "record"}
    assert all(ms > 0 for ms in outcome.timings_ms.values())
