import json
import os
import sqlite3
import subprocess
import sys

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
