import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from autoweld.cli.ledger import main, parse_head
from autoweld.quality import InspectionRecord, open_ledger

SECRET = "cli-test-secret-0123456789-ghijklmnop"


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("AUTOWELD_SECRET_KEY", SECRET)
    for name in ("AUTOWELD_KEY_ID", "AUTOWELD_VERIFY_KEYS", "AUTOWELD_VERIFY_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ledger_url(tmp_path, env):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url) as ledger:
        for i in range(6):
            ledger.append(
                InspectionRecord(
                    station_id="st-7", part_id=f"SN{i}", bundle_sha256="0f" * 32,
                    package_version="0.1.0", decision="PASS" if i % 2 else "FAIL",
                    scores={"patchcore": 0.5 * i}, fused_probability=0.1, threshold=0.5,
                )
            )  # fmt: skip
    return url


def _edit(url, sql):
    conn = sqlite3.connect(url[len("sqlite:///") :])
    conn.execute("DROP TRIGGER ledger_records_no_update")
    conn.execute("DROP TRIGGER ledger_records_no_delete")
    # the typed table (schema 2) refuses odd types: the attacker copies it into an unchecked one
    conn.execute("CREATE TABLE unchecked AS SELECT * FROM ledger_records")
    conn.execute("DROP TABLE ledger_records")
    conn.execute("ALTER TABLE unchecked RENAME TO ledger_records")
    conn.execute(sql)
    conn.commit()
    conn.close()


def test_verify_ok(ledger_url, capsys):
    assert main(["verify", "--ledger", ledger_url]) == 0
    assert "OK: 6 records" in capsys.readouterr().out


def test_verify_names_first_bad_seq(ledger_url, capsys):
    _edit(ledger_url, "UPDATE ledger_records SET decision = 'FAIL' WHERE seq = 4")
    assert main(["verify", "--ledger", ledger_url]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "first bad seq 4" in out
    assert main(["verify", "--ledger", ledger_url, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["first_bad_seq"] == 4


def test_head_then_expect_head_detects_truncation(ledger_url, capsys):
    assert main(["head", "--ledger", ledger_url]) == 0
    head_line = capsys.readouterr().out.strip()
    station, seq, mac = head_line.rsplit(":", 2)
    assert (station, seq, len(mac)) == ("st-7", "6", 64)
    assert main(["verify", "--ledger", ledger_url, "--expect-head", head_line]) == 0
    assert main(["verify", "--ledger", ledger_url, "--expect-head", f"{seq}:{mac}"]) == 0
    capsys.readouterr()
    _edit(ledger_url, "DELETE FROM ledger_records WHERE seq >= 5")
    assert main(["verify", "--ledger", ledger_url]) == 0  # without the kept head: looks fine
    assert main(["verify", "--ledger", ledger_url, "--expect-head", head_line]) == 1
    out = capsys.readouterr().out
    assert "first bad seq 5" in out and "truncated" in out


def test_head_json(ledger_url, capsys):
    assert main(["head", "--ledger", ledger_url, "--json"]) == 0
    heads = json.loads(capsys.readouterr().out)
    assert heads["st-7"]["seq"] == 6


def test_export(ledger_url, tmp_path, capsys):
    out = tmp_path / "audit.csv"
    assert main(["export", "--ledger", ledger_url, "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 7  # header + 6
    assert main(["export", "--ledger", ledger_url, "--out", str(tmp_path / "a.json")]) == 0
    assert len(json.loads((tmp_path / "a.json").read_text())["records"]) == 6


def test_configuration_errors_exit_2(ledger_url, monkeypatch, capsys):
    assert main(["verify", "--ledger", ledger_url, "--expect-head", "nonsense"]) == 2
    assert "--expect-head" in capsys.readouterr().err
    monkeypatch.delenv("AUTOWELD_SECRET_KEY")
    assert main(["verify", "--ledger", ledger_url]) == 2
    assert "AUTOWELD_SECRET_KEY" in capsys.readouterr().err


def test_wrong_key_fails_verification(ledger_url, monkeypatch, capsys):
    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "some-other-secret-0123456789-ghijklmnop")
    assert main(["verify", "--ledger", ledger_url]) == 1
    assert "first bad seq 1" in capsys.readouterr().out


def test_parse_head():
    assert parse_head("st:a:12:ff") == ("st:a", (12, "ff"))
    assert parse_head("3:ab") == (None, (3, "ab"))
    with pytest.raises(ValueError):
        parse_head("x:ab")


def test_console_script_exit_codes(ledger_url):
    """The installed entry point, as an auditor runs it."""
    cmd = [sys.executable, "-m", "autoweld.cli.ledger", "verify", "--ledger", ledger_url]
    env = {**os.environ, "AUTOWELD_SECRET_KEY": SECRET}
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    _edit(ledger_url, "DELETE FROM ledger_records WHERE seq = 2")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "first bad seq 2" in done.stdout


def test_verify_of_a_missing_ledger_is_an_error_not_ok(tmp_path, env, capsys):
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    assert main(["verify", "--ledger", url]) == 2
    assert "no ledger file" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()


def test_init_creates_an_empty_ledger_that_head_then_reads(tmp_path, env, capsys):
    """``head`` opens read-only and never creates a ledger; ``init`` is the documented way to
    create one before least-privilege roles use it (docs/ledger.md)."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert main(["head", "--ledger", url]) == 2
    assert not (tmp_path / "new.db").exists()
    assert main(["init", "--ledger", url]) == 0
    assert "ledger ready" in capsys.readouterr().out
    assert main(["head", "--ledger", url]) == 0
    assert main(["verify", "--ledger", url]) == 0


def test_init_leaves_an_existing_ledger_as_it_is(ledger_url, capsys):
    assert main(["init", "--ledger", ledger_url]) == 0
    assert "6 records, 1 stations" in capsys.readouterr().out
    assert main(["verify", "--ledger", ledger_url]) == 0


@pytest.mark.parametrize(
    ("sql", "bad_seq"),
    [
        ("UPDATE ledger_records SET station_id = CAST(station_id AS BLOB) WHERE seq = 3", 3),
        ("UPDATE ledger_records SET seq = 2.5 WHERE seq = 2", 2),
        ("UPDATE ledger_records SET seq = 'six' WHERE seq = 6", 6),
        ("UPDATE ledger_records SET plc_delivered = 'no' WHERE seq = 5", 5),
    ],
)
def test_verify_names_a_record_stored_with_another_type(ledger_url, capsys, sql, bad_seq):
    assert main(["head", "--ledger", ledger_url]) == 0
    kept = capsys.readouterr().out.strip()
    _edit(ledger_url, sql)
    for extra in ([], ["--expect-head", kept], ["--expect-head", kept.split(":", 1)[1]]):
        assert main(["verify", "--ledger", ledger_url, *extra]) == 1, extra
        captured = capsys.readouterr()
        assert f"first bad seq {bad_seq}:" in captured.out and "stored as" in captured.out
        assert captured.err == ""


# ---- store and forward -----------------------------------------------------------------------
def _central(tmp_path):
    return f"sqlite:///{tmp_path / 'central.db'}"


def test_forward_once_then_verify_against(ledger_url, tmp_path, capsys):
    central = _central(tmp_path)
    assert main(["forward", "--once", "--ledger", ledger_url, "--central", central]) == 0
    assert "forwarded 6 records (0 already there); backlog 0" in capsys.readouterr().out
    assert main(["forward", "--once", "--ledger", ledger_url, "--central", central]) == 0
    assert "forwarded 0 records" in capsys.readouterr().out  # idempotent
    assert main(["verify", "--ledger", central, "--against", ledger_url]) == 0
    out = capsys.readouterr().out
    assert "central: OK" in out and "st-7: EQUAL" in out and "6 records" in out
    with open_ledger(ledger_url) as ledger:
        ledger.append(
            InspectionRecord(
                station_id="st-7", part_id="SN6", bundle_sha256="0f" * 32,
                package_version="0.1.0", decision="FAIL",
            )
        )  # fmt: skip
    assert main(["verify", "--ledger", central, "--against", ledger_url, "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["exit"] == 3 and report["chains"][0]["state"] == "behind"
    assert report["chains"][0]["central_records"] == 6
    assert report["chains"][0]["station_records"] == 7


def test_verify_against_names_a_tampered_central_copy(ledger_url, tmp_path, capsys):
    central = _central(tmp_path)
    assert main(["forward", "--once", "--ledger", ledger_url, "--central", central]) == 0
    _edit(central, "UPDATE ledger_records SET decision = 'PASS' WHERE seq = 5")
    assert main(["verify", "--ledger", central, "--against", ledger_url]) == 1
    out = capsys.readouterr().out
    assert "central: FAILED" in out and "first bad seq 5" in out
    assert "st-7: DIFFERS at seq 5" in out


def test_forward_of_a_forked_station_chain_is_refused(ledger_url, tmp_path, capsys):
    central = _central(tmp_path)
    assert main(["forward", "--once", "--ledger", ledger_url, "--central", central]) == 0
    fork = f"sqlite:///{tmp_path / 'fork.db'}"
    with open_ledger(fork) as ledger:  # the station re-installed: a new chain, same station id
        for i in range(8):
            ledger.append(
                InspectionRecord(
                    station_id="st-7", part_id=f"NEW{i}", bundle_sha256="0f" * 32,
                    package_version="0.1.0", decision="PASS",
                )
            )  # fmt: skip
    capsys.readouterr()
    assert main(["forward", "--once", "--ledger", fork, "--central", central]) == 1
    assert "forwarding conflict" in capsys.readouterr().err
    assert main(["verify", "--ledger", central, "--against", fork]) == 1
    assert "st-7: DIFFERS at seq 1" in capsys.readouterr().out
    assert main(["verify", "--ledger", central, "--against", ledger_url]) == 0  # untouched


def test_forward_exit_codes_for_outage_and_usage(ledger_url, tmp_path, capsys):
    down = "postgresql://fwd:hunter2secret@127.0.0.1:1/central?connect_timeout=2"
    assert main(["forward", "--once", "--ledger", ledger_url, "--central", down]) == 3
    err = capsys.readouterr().err
    assert "run again" in err and "hunter2secret" not in err
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    assert main(["forward", "--once", "--ledger", missing, "--central", _central(tmp_path)]) == 2
    assert "no ledger file" in capsys.readouterr().err
    assert not (tmp_path / "central.db").exists()


def test_forward_follows_until_sigterm(ledger_url, tmp_path):
    central = _central(tmp_path)
    cmd = [sys.executable, "-m", "autoweld.cli.ledger", "forward", "--ledger", ledger_url,
           "--central", central, "--poll", "0.05"]  # fmt: skip
    env = {**os.environ, "AUTOWELD_SECRET_KEY": SECRET}
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) as process:
        with open_ledger(ledger_url) as ledger:
            deadline = time.monotonic() + 60
            while not (tmp_path / "central.db").exists() or _count(central) < 6:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
            ledger.append(
                InspectionRecord(
                    station_id="st-7", part_id="SN-late", bundle_sha256="0f" * 32,
                    package_version="0.1.0", decision="FAIL",
                )
            )  # fmt: skip
        while _count(central) < 7:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        log = process.stderr.read()
    assert "forwarded 6 record(s)" in log and "forwarded 1 record(s)" in log


def _count(url):
    try:
        with open_ledger(url, read_only=True) as ledger:
            return ledger.count()
    except Exception:  # noqa: BLE001 - not created yet
        return 0
