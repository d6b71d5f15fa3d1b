"""``autoweld-terminal``: usage errors exit 2 before anything is served; the real console script
serves the API and inspects what lands in the camera folder; no torch on the station side."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import cv2
import pytest
from tinybundle import defect_image, normal_image

pytest.importorskip("fastapi", reason="the terminal extra (fastapi) is not installed")

from autoweld.cli.terminal import main  # noqa: E402


def test_usage_errors_exit_2(capsys, monkeypatch, key_env, tiny_bundle, tmp_path):
    ledger = f"sqlite:///{tmp_path / 'l.db'}"
    base = ["--bundle", str(tiny_bundle), "--ledger", ledger]
    assert main([*base, "--watch", str(tmp_path / "no-such-dir")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([*base, "--plc", "udp://x:1"]) == 2
    assert "unknown scheme" in capsys.readouterr().err
    assert main([*base, "--providers", "warp-drive"]) == 2
    assert "warp-drive" in capsys.readouterr().err
    assert main(["--bundle", str(tiny_bundle), "--ledger", "mysql://db/x"]) == 2
    assert "unknown scheme" in capsys.readouterr().err
    assert main([*base, "--station", "bad\nid"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--port", "70000"])
    assert exit_info.value.code == 2
    monkeypatch.delenv("AUTOWELD_SECRET_KEY")
    assert main(base) == 2
    assert "AUTOWELD_SECRET_KEY" in capsys.readouterr().err
    assert not (tmp_path / "l.db").exists()  # nothing was created for a refused start


def _status(url: str) -> dict:
    with urllib.request.urlopen(url + "api/status", timeout=5) as response:
        return json.loads(response.read())


def test_console_script_inspects_the_camera_folder(terminal_factory, tiny_bundle):
    terminal = terminal_factory(tiny_bundle, "--no-credentials")  # loopback: reads are open
    status = _status(terminal.url)
    assert status["bundle"]["category"] == "unit" and status["counts"]["total"] == 0
    assert status["watch_folder"] == str(terminal.watch.resolve())
    cv2.imwrite(str(terminal.watch / ".A-1.png"), normal_image(1))
    (terminal.watch / ".A-1.png").rename(terminal.watch / "A-1.png")
    cv2.imwrite(str(terminal.watch / ".A-2.png"), defect_image(2))
    (terminal.watch / ".A-2.png").rename(terminal.watch / "A-2.png")
    deadline = time.monotonic() + 30
    while _status(terminal.url)["counts"]["total"] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    status = _status(terminal.url)
    assert (status["counts"]["pass"], status["counts"]["fail"]) == (1, 1), status
    assert status["latest"]["part_id"] == "A-2" and status["latest"]["decision"] == "FAIL"
    with urllib.request.urlopen(terminal.url + "api/records?part_id=A-1", timeout=5) as response:
        rows = json.loads(response.read())["records"]
    assert [(r["decision"], r["signature"], r["station_id"]) for r in rows] == [
        ("PASS", "valid", "line1-cell4")
    ]
    with urllib.request.urlopen(terminal.url, timeout=5) as response:
        page = response.read().decode()
    assert 'id="decision"' in page and "terminal.js" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_station_side_never_imports_torch():
    code = (
        "import sys\n"
        "import autoweld.terminal, autoweld.terminal.app, autoweld.cli.terminal\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
