"""The order of PLC signal and ledger record (autoweld.quality.station), against a real SQLite
ledger and a real TCP PLC on loopback."""

import sqlite3

import pytest

from autoweld.quality import LedgerError, open_ledger, open_plc, signal_and_record
from autoweld.quality.plc import TCP_CODES

from .conftest import make_record

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
