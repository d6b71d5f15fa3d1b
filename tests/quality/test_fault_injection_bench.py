"""bench/fault_injection.py --short: every fault keeps the PLC's PASS-without-record window and
the inspection stall reported, and every record that missed its deadline is written in the end."""

import json
import subprocess
import sys

import pytest

from .conftest import _pg_bindir
from .fault_tools import BENCH_SCRIPT

pytestmark = pytest.mark.postgres


def test_short_fault_injection_run_reports_every_fault(tmp_path):
    pytest.importorskip("psycopg")
    if _pg_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found (.ci/run installs Debian's postgresql)")
    out = tmp_path / "fi.json"
    done = subprocess.run([sys.executable, str(BENCH_SCRIPT), "--short", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    report = json.loads(out.read_text())
    names = [f["fault"] for f in report["faults"]]
    assert names == ["sqlite_lock_held", "plc_slow_45ms", "plc_dead", "burst_8",
                     "postgres_sigstop", "postgres_killed"]  # fmt: skip
    assert report["all_records_written"], report["faults"]
    for fault in report["faults"]:
        assert fault["ledger_verified"] and fault["records_not_written"] == 0
        # FAIL decisions under a database fault: their records were queued, then written
        assert fault["ledger_records"] >= fault["inspections"]
        assert fault["max_pass_without_record_ms"] >= 0 and fault["max_stall_ms"] > 0
    db_faults = [f for f in report["faults"] if f["fault"] in ("sqlite_lock_held",
                                                               "postgres_sigstop")]  # fmt: skip
    assert all(f["decisions"]["PASS"] == 0 for f in db_faults)  # no PASS without a record
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: a timing over the limit
