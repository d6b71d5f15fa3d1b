"""Validly signed records spliced in from another ledger (same key, same station) are caught by
``verify``, on SQLite and on PostgreSQL: each record's own MAC is right, so only the chain can
tell (docs/ledger.md, "The chain and its MAC")."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import replace

import pytest

from autoweld.quality import open_ledger
from autoweld.quality.ledger import COLUMNS, TABLE, _record_to_row
from autoweld.quality.record import InspectionRecord

from .conftest import make_record

STATION = "cell-3"
N = 6


class Victim:
    """The ledger spliced into, and the SQL an attacker with database access runs on it."""

    def __init__(self, url: str, backend: str) -> None:
        self.url, self.backend = url, backend

    def _connect(self):
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            conn.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_update")
            conn.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_delete")
            return conn, "?"
        import psycopg

        conn = psycopg.connect(self.url)
        conn.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
        return conn, "%s"

    def splice(self, drop_seqs: Iterable[int], records: Iterable[InspectionRecord]) -> None:
        """Delete this station's records ``drop_seqs``, then insert ``records`` as they are."""
        conn, mark = self._connect()
        try:
            for seq in drop_seqs:
                conn.execute(
                    f"DELETE FROM {TABLE} WHERE station_id = {mark} AND seq = {mark}",
                    (STATION, seq),
                )
            insert = (
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join([mark] * len(COLUMNS))})"
            )
            for record in records:
                conn.execute(insert, _record_to_row(record))
            conn.commit()
        finally:
            conn.close()

    def verify(self, keys, expect_head=None):
        with open_ledger(self.url, keys, read_only=True) as ledger:
            return ledger.verify(expect_head=expect_head)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def victim(request, tmp_path) -> Victim:
    if request.param == "sqlite":
        return Victim(f"sqlite:///{tmp_path / 'victim.db'}", "sqlite")
    return Victim(request.getfixturevalue("pg_url"), "postgres")


def _fill(url: str, keys, start: int, n: int = N) -> list[InspectionRecord]:
    with open_ledger(url, keys) as ledger:
        return [ledger.append(make_record(start + i, STATION)) for i in range(n)]


@pytest.fixture
def ledgers(victim, keys, tmp_path):
    """The victim's records and those of another ledger of the same station, signed with the
    same key (a second line, a test rig, a restored backup), with other parts in it."""
    ours = _fill(victim.url, keys, start=0)
    theirs = _fill(f"sqlite:///{tmp_path / 'other.db'}", keys, start=100, n=N + 2)
    assert victim.verify(keys).ok
    return victim, ours, theirs


@pytest.mark.parametrize("seq", [2, 4, N])
def test_a_record_replaced_in_place_is_named(ledgers, keys, seq):
    victim, _, theirs = ledgers
    victim.splice([seq], [theirs[seq - 1]])
    report = victim.verify(keys)
    assert (report.ok, report.first_bad_seq, report.station_id) == (False, seq, STATION)
    assert "not chained" in report.reason


def test_the_first_record_replaced_is_caught_at_the_next(ledgers, keys):
    """Record 1 of any chain links to the same genesis, so the foreign record 1 chains; the
    victim's record 2 then no longer does."""
    victim, _, theirs = ledgers
    victim.splice([1], [theirs[0]])
    report = victim.verify(keys)
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert "not chained" in report.reason


def test_a_record_inserted_at_the_end_is_named(ledgers, keys):
    victim, _, theirs = ledgers
    victim.splice([], [theirs[N]])  # their record N + 1 as the victim's next record
    report = victim.verify(keys)
    assert (report.ok, report.first_bad_seq) == (False, N + 1)


def test_a_record_inserted_in_the_middle_is_named(ledgers, keys):
    """Their record 3 goes in and ours from 3 on move up one seq to make room (which breaks
    their MACs too): the first bad record is the foreign one."""
    victim, ours, theirs = ledgers
    moved_up = [replace(record, seq=record.seq + 1) for record in ours[2:]]
    victim.splice(range(3, N + 1), [theirs[2], *moved_up])
    report = victim.verify(keys)
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert "not chained" in report.reason


@pytest.mark.parametrize("start", [2, 4])
def test_a_tail_replaced_is_named(ledgers, keys, start):
    victim, _, theirs = ledgers
    victim.splice(range(start, N + 1), theirs[start - 1 :])
    report = victim.verify(keys)
    assert (report.ok, report.first_bad_seq) == (False, start)


def test_a_whole_chain_replaced_needs_the_kept_head(ledgers, keys):
    """Every record of the station swapped for the other ledger's: a whole, valid chain of that
    key and station. Only the head kept outside the ledger tells (docs/ledger.md)."""
    victim, ours, theirs = ledgers
    kept = {STATION: (ours[-1].seq, ours[-1].mac)}
    victim.splice(range(1, N + 1), theirs)
    assert victim.verify(keys).ok
    report = victim.verify(keys, expect_head=kept)
    assert (report.ok, report.first_bad_seq) == (False, N)
    assert "expected head" in report.reason


def test_a_forked_copy_spliced_at_the_tail_needs_the_kept_head(victim, keys, tmp_path):
    """A copy of the ledger taken at seq N - 1 (a backup) writes its own record N; swapped in
    for ours, it chains, as the copy shares our history. The kept head tells."""
    ours = _fill(victim.url, keys, start=0, n=N - 1)
    copy = Victim(f"sqlite:///{tmp_path / 'copy.db'}", "sqlite")
    with open_ledger(copy.url, keys):
        pass  # creates the schema
    copy.splice([], ours)  # the copy: the same records, byte for byte
    with open_ledger(copy.url, keys) as ledger:
        forked = ledger.append(make_record(200, STATION, decision="PASS"))
    with open_ledger(victim.url, keys) as ledger:
        mine = ledger.append(make_record(1, STATION))  # odd: our record N is a FAIL
        kept = {STATION: ledger.head(STATION)}
    assert forked.seq == mine.seq == N and forked.prev_mac == mine.prev_mac
    victim.splice([N], [forked])
    assert victim.verify(keys).ok
    report = victim.verify(keys, expect_head=kept)
    assert (report.ok, report.first_bad_seq) == (False, N)
