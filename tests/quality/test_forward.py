"""Store and forward: station SQLite ledgers copied, as signed, into a central ledger."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from autoweld.quality import KeyRing, LedgerError, open_ledger
from autoweld.quality.forward import (
    ChainConflict,
    Forwarder,
    compare_chains,
    forward_backlog,
)
from autoweld.quality.ledger import UnreadableRecord, signed_equal

from .conftest import OLD_SECRET, SECRET, _pg_bindir, free_port, make_record, wait_until
from .ledger_tamper import tamper


@pytest.fixture
def station_url(tmp_path, keys):
    """A station ledger with two stations' chains (a line computer may record for several)."""
    url = f"sqlite:///{tmp_path / 'station.db'}"
    with open_ledger(url, keys) as ledger:
        for i in range(23):
            ledger.append(make_record(i, "st-1"))
        for i in range(4):
            ledger.append(make_record(i, "st-2"))
    return url


@pytest.fixture
def central_url(tmp_path):
    return f"sqlite:///{tmp_path / 'central.db'}"


def _append(url, keys, n, station="st-1"):
    with open_ledger(url, keys) as ledger:
        return [ledger.append(make_record(i, station)) for i in range(n)]


def test_forward_copies_every_chain_as_signed_and_is_idempotent(station_url, central_url, keys):
    with Forwarder(station_url, central_url, keys, batch_size=5) as forwarder:
        first = forwarder.run_once()
        assert (first.forwarded, first.skipped, first.backlog) == (27, 0, {"st-1": 0, "st-2": 0})
        again = forwarder.run_once()
        assert (again.forwarded, again.skipped, again.backlog_total) == (0, 0, 0)
    with open_ledger(station_url, keys) as local, open_ledger(central_url, keys) as central:
        assert list(central.iter_records()) == list(local.iter_records())  # no re-signing
        assert central.verify(expect_head=local.heads()).ok
        assert forward_backlog(local, central) == {"st-1": 0, "st-2": 0}
    # a central ledger that only knows the station's key as a verify key still verifies
    other = KeyRing.from_secret(OLD_SECRET, "k9", verify_keys={"k1": keys.signing_key})
    with open_ledger(central_url, other) as central:
        assert central.verify().ok


def test_forward_resumes_from_the_central_head(station_url, central_url, keys):
    with Forwarder(station_url, central_url, keys) as forwarder:
        forwarder.run_once()
        added = _append(station_url, keys, 7, "st-2")
        with open_ledger(station_url, keys) as local, open_ledger(central_url, keys) as central:
            assert forward_backlog(local, central) == {"st-1": 0, "st-2": 7}
        done = forwarder.run_once()
        assert (done.forwarded, done.backlog_total) == (7, 0)
    with open_ledger(central_url, keys) as central:
        assert central.chain_after("st-2", 4, 100) == added
        assert central.chain_head("st-2") == (11, added[-1].mac)


def test_insert_signed_skips_what_is_there_and_refuses_what_differs(station_url, central_url, keys):
    with open_ledger(station_url, keys) as local, open_ledger(central_url, keys) as central:
        chain = local.chain_after("st-1", 0, 100)
        assert central.insert_signed(chain[:10]) == (10, 0)
        assert central.insert_signed(chain[5:15]) == (5, 5)  # an unacknowledged batch again
        assert central.insert_signed(chain[:15]) == (0, 15)
        with pytest.raises(ChainConflict, match="does not chain") as gap:
            central.insert_signed(chain[16:20])  # record 16 missing: would leave a gap
        assert gap.value.seq == 17
        forged = make_record(99, "st-1")
        with open_ledger(f"sqlite:///{central_url[10:]}.other", keys) as elsewhere:
            forked = [elsewhere.append(forged) for _ in range(3)]  # signed, same station
        with pytest.raises(ChainConflict, match="different record 1") as conflict:
            central.insert_signed(forked)
        assert (conflict.value.station_id, conflict.value.seq) == ("st-1", 1)
        assert central.count() == 15 and central.verify().ok  # all or nothing, no overwrite
        with pytest.raises(ValueError, match="does not follow"):
            central.insert_signed([chain[0], chain[2]])
        with pytest.raises(ValueError, match="signed records"):
            central.insert_signed([make_record(1)])


def test_a_forked_station_chain_is_a_conflict_and_nothing_is_overwritten(
    tmp_path, station_url, central_url, keys, caplog
):
    with Forwarder(station_url, central_url, keys) as forwarder:
        forwarder.run_once()
    reinstalled = f"sqlite:///{tmp_path / 'reinstalled.db'}"  # same station id, new chain
    _append(reinstalled, keys, 30)
    with Forwarder(reinstalled, central_url, keys) as forwarder:
        with pytest.raises(ChainConflict, match="record 23 of station 'st-1' differs") as error:
            forwarder.run_once()
        assert error.value.seq == 23
        with pytest.raises(ChainConflict):
            forwarder.run()  # follow mode: a conflict is logged and ends the loop, not retried
        assert forwarder.status()["state"] == "conflict"
    assert caplog.text.count("forwarding stopped") == 1
    with open_ledger(central_url, keys) as central, open_ledger(reinstalled, keys) as fork:
        assert central.count("st-1") == 23 and central.verify().ok
        compared = compare_chains(central, fork, "st-1")
        assert (compared.state, compared.first_bad_seq) == ("differs", 1)
    shorter = f"sqlite:///{tmp_path / 'shorter.db'}"
    _append(shorter, keys, 2)
    with Forwarder(shorter, central_url, keys) as forwarder:
        with pytest.raises(ChainConflict, match="holds 23 records of station 'st-1'"):
            forwarder.run_once()


def test_a_broken_local_chain_is_not_forwarded(station_url, central_url, keys):
    tamper(
        station_url[len("sqlite:///") :],
        "UPDATE ledger_records SET part_id = 'VIN-x' WHERE station_id = 'st-1' AND seq = 8",
        rebuild=False,
    )
    with Forwarder(station_url, central_url, keys, batch_size=5) as forwarder:
        with pytest.raises(ChainConflict, match="local record 8 .* MAC does not match"):
            forwarder.run_once()
    with open_ledger(central_url, keys) as central:
        assert central.chain_head("st-1")[0] == 5  # the batches before the bad one
    wrong_key = KeyRing.from_secret(OLD_SECRET, "k1")
    with Forwarder(station_url, f"{central_url}.2", wrong_key) as forwarder:
        with pytest.raises(ChainConflict, match="local record 1 .* MAC"):
            forwarder.run_once()


def test_compare_names_a_tampered_central_copy(station_url, central_url, keys):
    with Forwarder(station_url, central_url, keys) as forwarder:
        forwarder.run_once()
    with open_ledger(station_url, keys) as local, open_ledger(central_url, keys) as central:
        assert compare_chains(central, local, "st-1", batch=4).state == "equal"
    tamper(
        central_url[len("sqlite:///") :],
        "UPDATE ledger_records SET fused_probability = 0.0 WHERE seq = 9",
        "UPDATE ledger_records SET plc_delivered = 'no' WHERE seq = 3",  # both stations
        "DELETE FROM ledger_records WHERE station_id = 'st-2' AND seq = 2",
    )
    with open_ledger(station_url, keys) as local, open_ledger(central_url, keys) as central:
        edited = compare_chains(central, local, "st-1", batch=4)
        assert (edited.state, edited.first_bad_seq) == ("differs", 3)  # st-1 seq 3 retyped too
        assert "stored as text" in edited.reason
        deleted = compare_chains(central, local, "st-2", batch=4)
        assert (deleted.state, deleted.first_bad_seq) == ("differs", 2)
        with pytest.raises(UnreadableRecord) as unreadable:
            central.chain_after("st-1", 0, 100)
        assert unreadable.value.seq == 3


def test_compare_sees_a_copy_behind_and_one_ahead(station_url, central_url, keys):
    with open_ledger(station_url, keys) as local, open_ledger(central_url, keys) as central:
        central.insert_signed(local.chain_after("st-1", 0, 10))
        behind = compare_chains(central, local, "st-1", batch=4)
        assert (behind.state, behind.station_records, behind.central_records) == ("behind", 23, 10)
        central.insert_signed(local.chain_after("st-1", 10, 100))
        assert compare_chains(central, local, "st-1", batch=23).state == "equal"
        assert compare_chains(central, local, "st-3").state == "equal"  # in neither: vacuous
    _append(central_url, keys, 2)  # central now holds more of st-1 than the station
    with open_ledger(station_url, keys) as local, open_ledger(central_url, keys) as central:
        ahead = compare_chains(central, local, "st-1", batch=23)
        assert (ahead.state, ahead.first_bad_seq, ahead.central_records) == ("differs", 24, 25)


def test_background_forwarder_follows_and_reports_status(station_url, central_url, keys):
    forwarder = Forwarder(station_url, central_url, keys, poll_s=0.02)
    assert forwarder.status()["state"] == "starting"
    forwarder.start()
    try:
        _wait(lambda: forwarder.status()["forwarded"] == 27)
        _append(station_url, keys, 3)
        _wait(lambda: forwarder.status()["forwarded"] == 30)
        status = forwarder.status()
        assert status["state"] == "ok" and status["backlog"] == {"st-1": 0, "st-2": 0}
        assert status["central"] == central_url and status["last_error"] is None
    finally:
        forwarder.close()
    assert forwarder.status()["state"] == "stopped"


def test_a_forwarder_thread_that_cannot_go_on_says_so(tmp_path, central_url, keys, monkeypatch):
    """An error no retry can fix, outside the ledger's own errors, ends the thread: the
    status must then say stopped, with the reason, not "starting" for ever."""
    forwarder = Forwarder(f"sqlite:///{tmp_path / 'station.db'}", central_url, keys, poll_s=0.02)

    def broken() -> None:
        raise ValueError("planted: the local ledger cannot be read")

    monkeypatch.setattr(forwarder, "run_once", broken)
    forwarder.start()
    try:
        _wait(lambda: forwarder.status()["state"] == "stopped")
        assert "planted" in forwarder.status()["last_error"]
    finally:
        forwarder.close()


def test_unreachable_central_is_retried_with_backoff(station_url, keys, caplog):
    url = "postgresql://autoweld:hunter2secret@127.0.0.1:1/central"  # nothing listens on port 1
    forwarder = Forwarder(station_url, url, keys, poll_s=0.01, max_backoff_s=0.05)
    stop = threading.Event()
    threading.Timer(0.6, stop.set).start()
    forwarder.run(stop)  # returns when stopped: an outage is waited out, not an error
    status = forwarder.status()
    assert status["state"] == "stopped" and "127.0.0.1" in status["last_error"]
    assert status["backlog"] is None  # never reached
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 3
    assert "hunter2secret" not in caplog.text + str(status)
    with pytest.raises(LedgerError):
        forwarder.run_once()


def test_forwarder_refuses_bad_settings(station_url, central_url, keys):
    for bad in ({"batch_size": 0}, {"batch_size": True}, {"poll_s": 0}):
        with pytest.raises(ValueError):
            Forwarder(station_url, central_url, keys, **bad)


def test_signed_equal(keys, tmp_path):
    stored = _append(f"sqlite:///{tmp_path / 'a.db'}", keys, 2)
    assert signed_equal(stored[0], stored[0])
    assert not signed_equal(stored[0], stored[1])


def _wait(condition, timeout=30.0):
    assert wait_until(condition, timeout, 0.01), "condition not met in time"


# ---- against a real PostgreSQL server -------------------------------------------------------
class KillablePostgres:
    """A PostgreSQL server of one test's own, run in the foreground so that the test can SIGKILL
    its postmaster (the session's shared server must stay up for the other tests)."""

    def __init__(self) -> None:
        pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[test]')")
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries not found; install Debian's 'postgresql'")
        self.root = Path(tempfile.mkdtemp(prefix="autoweld-pg-kill-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse root
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root)
                pytest.skip("running as root but there is no 'postgres' system user")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.bindir, self.data, self.port = bindir, self.root / "data", free_port()
        subprocess.run([*self.prefix, str(bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                        "-U", "postgres", "--no-sync"], check=True, capture_output=True,
                       timeout=120)  # fmt: skip
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        """Start (again); after a SIGKILL the server runs crash recovery first. Retried while
        the killed server's backends still hold its shared memory."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            # fsync off: the test kills processes, not the machine (the OS keeps what was written)
            with open(self.root / "log", "ab") as server_log:  # the child keeps its own fd
                self.process = subprocess.Popen(
                    [*self.prefix, str(self.bindir / "postgres"), "-D", str(self.data),
                     "-p", str(self.port), "-k", str(self.root), "-c",
                     "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=20"],
                    stdout=subprocess.DEVNULL, stderr=server_log,
                )  # fmt: skip
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    psycopg.connect(self.url, connect_timeout=2).close()
                    return
                except psycopg.OperationalError:
                    time.sleep(0.1)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"postgres did not start: {(self.root / 'log').read_text()}")
            time.sleep(0.2)  # it exited: the old backends are still going away

    def kill(self) -> None:
        """SIGKILL the postmaster: what a crashed or power-cycled database server looks like to
        its clients (their connections drop, new ones are refused)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(30)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)  # "fast" shutdown
            self.process.wait(60)
        shutil.rmtree(self.root, ignore_errors=True)

    def count(self) -> int | None:
        """Records in the central ledger now; None while it cannot be asked."""
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                row = conn.execute("SELECT count(*) FROM ledger_records").fetchone()
                return int(row[0])
        except psycopg.Error:
            return None


@pytest.fixture
def killable_postgres():
    server = KillablePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


def _forwarder_process(local_url: str, central_url: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "autoweld.cli.ledger", "forward", "--ledger", local_url,
           "--central", central_url, "--poll", "0.05", "--batch-size", "5",
           "--max-backoff", "0.5", "-v"]  # fmt: skip
    env = {**os.environ, "AUTOWELD_SECRET_KEY": SECRET, "AUTOWELD_KEY_ID": "k1"}
    with open(log, "ab") as stderr:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


class _Writer(threading.Thread):
    """The station: appends records and keeps each one the ledger acknowledged."""

    def __init__(self, url: str, keys: KeyRing, count: int, pause_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.keys, self.count, self.pause_s = url, keys, count, pause_s
        self.acknowledged: list = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with open_ledger(self.url, self.keys) as ledger:
                for i in range(self.count):
                    self.acknowledged.append(ledger.append(make_record(i, "st-crash")))
                    time.sleep(self.pause_s)
        except BaseException as error:  # noqa: BLE001 - the test asserts it is None
            self.error = error


@pytest.mark.postgres
@pytest.mark.slow
def test_forwarding_survives_a_killed_database_and_a_killed_forwarder(
    tmp_path, keys, killable_postgres
):
    """Records stream from a station to PostgreSQL; the database is SIGKILLed mid-stream and
    restarted, then the forwarder is SIGKILLed mid-stream and restarted. Afterwards every
    acknowledged record is in the central ledger exactly once, in order, and both verify."""
    server, local_url = killable_postgres, f"sqlite:///{tmp_path / 'station.db'}"
    central_url = f"{server.url}?connect_timeout=2"
    log = tmp_path / "forwarder.log"
    _Writer(local_url, keys, 300, 0).run()  # a backlog from before the forwarder ran
    writer = _Writer(local_url, keys, 400, 0.004)
    writer.start()
    forwarder = _forwarder_process(local_url, central_url, log)
    try:
        _wait(lambda: (server.count() or 0) >= 40, timeout=120)
        server.kill()
        with open_ledger(local_url, keys, read_only=True) as local:
            at_db_kill = local.chain_head("st-crash")[0]
        time.sleep(1.5)  # the station keeps recording; the forwarder backs off and retries
        server.start()
        resumed = server.count()
        assert resumed is not None and resumed < at_db_kill  # the kill was mid-stream
        _wait(lambda: (server.count() or 0) >= resumed + 30, timeout=120)
        forwarder.kill()  # SIGKILL, perhaps inside a transaction: rolled back by the server
        forwarder.wait(30)
        at_forwarder_kill = server.count()
        writer.join(120)
        assert writer.error is None and len(writer.acknowledged) == 400
        assert at_forwarder_kill < 700  # mid-stream: records were still to forward
        forwarder = _forwarder_process(local_url, central_url, log)
        _wait(lambda: server.count() == 700, timeout=180)
        forwarder.terminate()  # SIGTERM: a clean stop, exit 0
        assert forwarder.wait(30) == 0
    finally:
        if forwarder.poll() is None:
            forwarder.kill()
            forwarder.wait(30)
    text = log.read_text()
    assert "retrying in" in text, text[-3000:]  # it did meet the outage
    with open_ledger(local_url, keys, read_only=True) as local:
        acknowledged = list(local.iter_records("st-crash"))
        assert len(acknowledged) == 700 and local.verify().ok
        with open_ledger(server.url, keys, read_only=True) as central:
            copied = list(central.iter_records("st-crash"))
            assert [r.seq for r in copied] == list(range(1, 701))  # exactly once, in order
            assert copied == acknowledged  # byte for byte as signed
            assert central.verify(expect_head=local.heads()).ok
            assert compare_chains(central, local, "st-crash").state == "equal"
    again = subprocess.run(
        [sys.executable, "-m", "autoweld.cli.ledger", "forward", "--once", "--ledger", local_url,
         "--central", central_url],
        env={**os.environ, "AUTOWELD_SECRET_KEY": SECRET}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and "forwarded 0 records" in again.stdout, again.stderr
    assert server.count() == 700


@pytest.mark.postgres
def test_forwarder_role_needs_only_select_and_insert(pg_url, station_url, keys):
    """docs/forwarding.md's grants: the owner creates the schema, the forwarder role may only
    read and append (no UPDATE, DELETE, TRUNCATE, no DDL)."""
    import psycopg

    with open_ledger(pg_url, keys):
        pass  # the owner creates the schema
    role = "forwarder_" + pg_url.rsplit("_", 1)[-1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT, INSERT ON ledger_records TO {role}")
        conn.execute(f"GRANT SELECT ON ledger_meta TO {role}")
    try:
        forwarder_url = pg_url.replace("postgresql://postgres@", f"postgresql://{role}@")
        with Forwarder(station_url, forwarder_url, keys, batch_size=7) as forwarder:
            assert forwarder.run_once().forwarded == 27
        with open_ledger(pg_url, keys) as central, open_ledger(station_url, keys) as local:
            assert central.verify(expect_head=local.heads()).ok
            assert compare_chains(central, local, "st-1").state == "equal"
            with pytest.raises(ChainConflict):
                central.insert_signed(_append(f"{station_url}.fork", keys, 1))
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON ledger_records, ledger_meta FROM {role}")
            conn.execute(f"DROP ROLE {role}")
