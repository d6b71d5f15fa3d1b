"""Fault injection on the decision path: how long can the PLC show PASS without a record, and how
long can one inspection stall, when the database or the PLC misbehaves?

For each fault it runs real inspections through ``autoweld.quality.record_inspection`` (a real
SQLite or PostgreSQL ledger, a real TCP PLC on loopback that timestamps every byte it receives)
and reports, per fault, the longest time the PLC showed PASS with no durable record and the
longest stall of an inspection (decision to ``record_inspection`` returning). Both must stay
within the PLC timeout + 20 ms. Afterwards every record that missed its deadline must have been
written from the ledger's queue and the ledger must verify.

    python bench/fault_injection.py                 # full run, writes bench/results/fault_injection.json
    python bench/fault_injection.py --short --json /tmp/fi.json   # the quick run the tests use
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from autoweld.quality import KeyRing, open_ledger, open_plc, record_inspection

PLC_TIMEOUT_S = 0.05
SLACK_S = 0.02
SECRET = "fault-injection-secret-0123456789abcdef"
RESULTS = Path(__file__).resolve().parent / "results" / "fault_injection.json"
PASS_CODE, FAIL_CODE = 0x00, 0x01


class StampingPlc:
    """A one-byte TCP PLC on loopback that records ``(time.monotonic(), byte)`` on arrival.
    ``echo_delay_s`` delays each acknowledgement (a slow PLC); ``stop()`` closes it."""

    def __init__(self, echo_delay_s: float = 0.0) -> None:
        self.echo_delay_s = echo_delay_s
        self.stamps: list[tuple[float, int]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(64)
            except OSError:
                return
            if not data:
                return
            now = time.monotonic()
            self.stamps.extend((now, code) for code in data)
            if self.echo_delay_s:
                time.sleep(self.echo_delay_s)
            try:
                conn.sendall(data)
            except OSError:
                return

    def bytes_between(self, start: float, end: float) -> list[tuple[float, int]]:
        return [(t, code) for t, code in list(self.stamps) if start <= t <= end]

    def stop(self) -> None:
        self._stopped.set()
        try:  # wakes the accepting thread: a plain close leaves the port accepting
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in self._open:
            conn.close()


@dataclass
class PassingResult:
    """An inspection result that passes (what record_inspection reads)."""

    decision: str = "PASS"
    probability: float = 0.1
    scores: dict = field(default_factory=lambda: {"patchcore": 1.0})
    probabilities: dict = field(default_factory=lambda: {"patchcore": 0.1})
    threshold: float = 0.5
    error: str | None = None


@dataclass
class Inspected:
    decided_at: float
    returned_at: float
    decision: str
    stored: bool
    durable_at: float | None = None


class TimedLedger:
    """The station's ledger, noting when each append returned (the record was durable)."""

    def __init__(self, ledger) -> None:
        self.ledger = ledger
        self.durable_at: dict[str, float] = {}

    def append(self, record, **deadline):
        stored = self.ledger.append(record, **deadline)
        self.durable_at[record.part_id] = time.monotonic()
        return stored

    def __getattr__(self, name):
        return getattr(self.ledger, name)


def inspect_once(ledger, link, part: str) -> Inspected:
    """One passing inspection decided now (record_inspection's ``decided_at`` default)."""
    timed = TimedLedger(ledger)
    decided_at = time.monotonic()
    outcome = record_inspection(
        PassingResult(), part_id=part, station_id="fault-bench", bundle_sha256="ab" * 32,
        package_version="bench", ledger=timed, link=link,
    )  # fmt: skip
    return Inspected(decided_at, time.monotonic(), outcome.decision, outcome.record is not None,
                     timed.durable_at.get(part))  # fmt: skip


def pass_without_record_s(plc: StampingPlc, item: Inspected, exact: bool = True) -> float:
    """How long the PLC showed this inspection's PASS with no durable record: from the PASS
    byte to the record (durable when its append returned) or to the corrective FAIL byte.
    ``exact=False`` (concurrent inspections, bytes not attributable): the bound decision →
    durable for a stored PASS."""
    durable = item.durable_at if item.durable_at is not None else item.returned_at
    if not exact:
        return durable - item.decided_at if item.decision == "PASS" else 0.0
    seen = plc.bytes_between(item.decided_at, item.returned_at + 0.5)
    passes = [t for t, code in seen if code == PASS_CODE]
    if not passes:
        return 0.0
    if item.stored and item.decision == "PASS":
        return max(0.0, durable - passes[0])
    fails = [t for t, code in seen if code == FAIL_CODE and t >= passes[0]]
    return (fails[0] if fails else float("inf")) - passes[0]


# ---- PostgreSQL ------------------------------------------------------------------------------
def pg_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(candidate, "pg_ctl"), os.X_OK):
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class ThrowawayPostgres:
    """A PostgreSQL server of its own (temporary directory, free loopback port, trust auth;
    as root it runs as ``postgres``) that faults can be injected into."""

    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (pg_ctl, initdb) not found")
        self.bindir, self.root = bindir, Path(tempfile.mkdtemp(prefix="autoweld-fi-pg-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.data = self.root / "data"
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _pg(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.prefix, str(self.bindir / tool), *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if done.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}{tail}")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c shared_buffers=32MB")  # fmt: skip
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options,
                 "-w", "-t", "90", "start")  # fmt: skip

    def restart_after_kill(self) -> None:
        """Start again after SIGKILL. A killed postmaster may stay a zombie (no init reaps it
        in a container), which PostgreSQL takes for a running server: clear its pid file."""
        pid_file = self.data / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        deadline = time.monotonic() + 10
        while process_alive(postmaster) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid_file.unlink(missing_ok=True)
        (self.root / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"fi_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pids(self) -> list[int]:
        """The postmaster and every process it started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        return [postmaster, *children_of(postmaster)]

    def signal_all(self, signum: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.signal_all(signal.SIGCONT)
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                        "immediate", "-w", "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Running (not gone and not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def children_of(parent: int) -> list[int]:
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(Path(stat).parent.name))
    return found


# ---- the faults ------------------------------------------------------------------------------
def run_fault(name: str, ledger, link, plc: StampingPlc, count: int, during, after) -> dict:
    """``count`` inspections one after another while ``during`` holds (a context manager);
    then ``after()`` restores and the queue must drain and the ledger verify."""
    items = []
    with during():
        for i in range(count):
            items.append(inspect_once(ledger, link, f"{name}-{i}"))
            time.sleep(0.01)
    after()
    return summarise(name, ledger, plc, items, exact=True)


def summarise(name: str, ledger, plc, items: list[Inspected], exact: bool) -> dict:
    deadline = time.monotonic() + 30
    while ledger.pending_records and time.monotonic() < deadline:
        time.sleep(0.05)
    window = max(pass_without_record_s(plc, item, exact) for item in items)
    stall = max(item.returned_at - item.decided_at for item in items)
    limit = PLC_TIMEOUT_S + SLACK_S
    report = ledger.verify()
    return {
        "fault": name,
        "inspections": len(items),
        "decisions": {d: sum(i.decision == d for i in items) for d in ("PASS", "FAIL")},
        "max_pass_without_record_ms": round(window * 1000, 1),
        "max_stall_ms": round(stall * 1000, 1),
        "records_not_written": ledger.pending_records,
        "ledger_records": ledger.count(),
        "ledger_verified": report.ok,
        "within_limit": window <= limit and stall <= limit,
    }


class _Holding:
    def __init__(self, enter, leave) -> None:
        self._enter, self._leave = enter, leave

    def __enter__(self):
        self._enter()

    def __exit__(self, *exc):
        self._leave()


def sqlite_lock(tmp: Path, keys: KeyRing, count: int) -> dict:
    path = tmp / "lock.db"
    plc = StampingPlc()
    with open_ledger(path, keys) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}",
                                                    PLC_TIMEOUT_S) as link:  # fmt: skip
        ledger.append_later  # noqa: B018 - the station's ledger, opened before the fault
        blocker = sqlite3.connect(path, isolation_level=None)
        hold = _Holding(lambda: blocker.execute("BEGIN IMMEDIATE"),
                        lambda: blocker.execute("ROLLBACK"))  # fmt: skip
        result = run_fault(
            "sqlite_lock_held", ledger, link, plc, count, lambda: hold, blocker.close
        )
    plc.stop()
    return result


def postgres_fault(pg: ThrowawayPostgres, keys: KeyRing, count: int, kill: bool) -> dict:
    plc = StampingPlc()
    with (
        open_ledger(pg.new_database(), keys) as ledger,
        open_plc(f"tcp://127.0.0.1:{plc.port}", PLC_TIMEOUT_S) as link,
    ):
        inspect_once(ledger, link, "warm-up")
        if kill:
            hold = _Holding(lambda: pg.signal_all(signal.SIGKILL), lambda: None)
            after = pg.restart_after_kill
        else:
            hold = _Holding(lambda: pg.signal_all(signal.SIGSTOP), lambda: None)
            after = lambda: pg.signal_all(signal.SIGCONT)  # noqa: E731
        name = "postgres_killed" if kill else "postgres_sigstop"
        result = run_fault(name, ledger, link, plc, count, lambda: hold, after)
    plc.stop()
    return result


def plc_fault(tmp: Path, keys: KeyRing, count: int, dead: bool) -> dict:
    plc = StampingPlc(echo_delay_s=0.0 if dead else 0.045)
    url = f"tcp://127.0.0.1:{plc.port}"
    if dead:
        plc.stop()  # nothing listens on the port any more
    with open_ledger(tmp / f"plc-{dead}.db", keys) as ledger, open_plc(url, PLC_TIMEOUT_S) as link:
        name = "plc_dead" if dead else "plc_slow_45ms"
        result = run_fault(name, ledger, link, plc, count, lambda: _Holding(int, int), int)
    plc.stop()
    return result


def _upload_load(stop: threading.Event) -> None:
    """What a burst of uploads does meanwhile: numpy work on the CPUs (mostly without the GIL)."""
    import numpy as np

    matrix = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    while not stop.is_set():
        np.sort(matrix @ matrix, axis=None)


def burst(tmp: Path, keys: KeyRing, count: int) -> dict:
    """``count`` inspections decided at once from as many threads (a burst of uploads), with
    two threads of upload work running."""
    plc = StampingPlc()
    with open_ledger(tmp / "burst.db", keys) as ledger, open_plc(f"tcp://127.0.0.1:{plc.port}",
                                                                PLC_TIMEOUT_S) as link:  # fmt: skip
        barrier = threading.Barrier(count)

        def one(i: int) -> Inspected:
            barrier.wait()
            return inspect_once(ledger, link, f"burst-{i}")

        stop = threading.Event()
        load = [threading.Thread(target=_upload_load, args=(stop,)) for _ in range(2)]
        for thread in load:
            thread.start()
        try:
            with ThreadPoolExecutor(count) as pool:
                items = list(pool.map(one, range(count)))
        finally:
            stop.set()
            for thread in load:
                thread.join()
        result = summarise(f"burst_{count}", ledger, plc, items, exact=False)
        result["plc_bytes_late"] = sum(
            1
            for t, _ in plc.stamps
            if t > min(i.decided_at for i in items) + PLC_TIMEOUT_S + SLACK_S
        )
    plc.stop()
    return result


def run(short: bool) -> dict:
    count = 3 if short else 20
    load_start = os.getloadavg()[0]
    keys = KeyRing.from_secret(SECRET, "k1")
    faults = []
    with tempfile.TemporaryDirectory(prefix="autoweld-fi-") as tmp_name:
        tmp = Path(tmp_name)
        faults.append(sqlite_lock(tmp, keys, count))
        faults.append(plc_fault(tmp, keys, count, dead=False))
        faults.append(plc_fault(tmp, keys, count, dead=True))
        faults.append(burst(tmp, keys, 8 if short else 32))
        pg = ThrowawayPostgres()
        try:
            faults.append(postgres_fault(pg, keys, count, kill=False))
            faults.append(postgres_fault(pg, keys, count, kill=True))
        finally:
            pg.close()
    return {
        "plc_timeout_ms": PLC_TIMEOUT_S * 1000,
        "limit_ms": (PLC_TIMEOUT_S + SLACK_S) * 1000,
        "short": short,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },  # fmt: skip
        "faults": faults,
        "all_within_limit": all(f["within_limit"] for f in faults),
        "all_records_written": all(
            f["records_not_written"] == 0 and f["ledger_verified"] for f in faults
        ),  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="3 inspections per fault")
    parser.add_argument("--json", type=Path, default=None, help=f"output (default {RESULTS})")
    args = parser.parse_args(argv)
    report = run(args.short)
    out = args.json or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'fault':<20} {'PASS w/o record ms':>18} {'stall ms':>9} {'verified':>9}")
    for f in report["faults"]:
        print(f"{f['fault']:<20} {f['max_pass_without_record_ms']:>18} {f['max_stall_ms']:>9} "
              f"{str(f['ledger_verified']):>9}")  # fmt: skip
    print(
        f"limit {report['limit_ms']:.0f} ms; all within: {report['all_within_limit']}; "
        f"all records written: {report['all_records_written']} -> {out}"
    )
    return 0 if report["all_within_limit"] and report["all_records_written"] else 1


if __name__ == "__main__":
    sys.exit(main())
