"""The terminal's Station without the web layer: the shared record-and-signal path
(autoweld.quality.record_inspection) as the worker uses it, with a real SQLite ledger and a real
TCP PLC."""

from __future__ import annotations

import os
import sqlite3
import time

import cv2
import pytest
from tinybundle import normal_image

from autoweld.terminal.service import Station, StationConfig
from autoweld.terminal.watcher import (
    FAILED,
    INSPECTED,
    INVALID_NAME_PREFIX,
    FolderWatcher,
    WatchConfig,
)


def _png(image) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("station_id", ["  ", "cell\x07", "c" * 201])
def test_bad_station_id_is_refused_before_anything_opens(
    key_env, tiny_bundle, tmp_path, station_id
):
    config = StationConfig(
        bundle_dir=tiny_bundle, ledger_url=f"sqlite:///{tmp_path / 'l.db'}", station_id=station_id
    )
    with pytest.raises(ValueError, match="station_id"):
        Station(config)
    assert not (tmp_path / "l.db").exists()


def test_unwritable_record_is_a_fail_and_the_plc_ends_on_fail(
    key_env, tiny_bundle, tmp_path, echo_plc
):
    db = tmp_path / "l.db"
    config = StationConfig(
        bundle_dir=tiny_bundle,
        ledger_url=f"sqlite:///{db}",
        station_id="st-9",
        plc_url=echo_plc.url,
        plc_timeout_s=1.0,
        threads=1,
    )
    with Station(config) as station:
        first = station.submit("VIN-1", data=_png(normal_image(1))).result(60)
        assert first.decision == "PASS" and first.record_seq == 1
        conn = sqlite3.connect(db)  # the table vanishes under the writer: a real DB error
        conn.execute("ALTER TABLE ledger_records RENAME TO moved_away")
        conn.commit()
        conn.close()
        second = station.submit("VIN-2", data=_png(normal_image(1))).result(60)
    assert second.decision == "FAIL" and second.record_seq is None
    assert second.error.startswith("ledger write failed")
    deadline = time.monotonic() + 2
    while len(echo_plc.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo_plc.received == [0x00, 0x00, 0x01]  # PASS, PASS, corrective FAIL


def test_camera_file_with_a_bad_name_becomes_a_recorded_fail(key_env, tiny_bundle, tmp_path):
    camera = tmp_path / "camera"
    camera.mkdir()
    name = "VIN\x07" + "9" * 5 + ".png"
    (camera / name).write_bytes(_png(normal_image(1)))  # a good part, but an unusable name
    config = StationConfig(
        bundle_dir=tiny_bundle, ledger_url=f"sqlite:///{tmp_path / 'l.db'}", station_id="st-3"
    )
    with Station(config) as station:
        watcher = FolderWatcher(WatchConfig(camera, settle_s=0.01), station.submit)
        watcher.done_dir.mkdir()
        watcher.poll(now=0.0)
        assert watcher.poll(now=1.0) == [name]
        deadline = time.monotonic() + 60
        while station.latest() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        outcome = station.latest()
        [row] = station.records()
    assert outcome.decision == "FAIL" and outcome.record_seq == 1
    assert outcome.part_id.startswith(INVALID_NAME_PREFIX)
    assert row["part_id"] == outcome.part_id and row["decision"] == "FAIL"
    assert "not a valid part id" in row["error"] and row["signature"] == "valid"
    deadline = time.monotonic() + 5
    while not (camera / FAILED / name).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (camera / FAILED / name).exists()  # recorded, not inspected: failed/


def test_a_camera_path_that_is_a_fifo_is_a_recorded_fail_not_a_hang(
    key_env, tiny_bundle, tmp_path, deadline
):
    """Issue 15: the worker read a path with open(): a FIFO swapped in for a camera file hung
    it. It is now a recorded FAIL naming the file, at once."""
    fifo = tmp_path / "VIN-F.png"
    os.mkfifo(fifo)
    config = StationConfig(
        bundle_dir=tiny_bundle, ledger_url=f"sqlite:///{tmp_path / 'l.db'}", station_id="st-4"
    )
    with Station(config) as station:
        future = station.submit("VIN-F", path=fifo, source="camera")
        outcome = deadline(20, future.result, 60, fifos=[fifo])
        [row] = station.records()
    assert outcome.decision == "FAIL" and outcome.record_seq == 1
    assert "VIN-F.png" in row["error"] and "FIFO" in row["error"]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_manifest_that_is_a_fifo_or_device_refuses_the_bundle_not_the_station(
    key_env, tiny_bundle, tmp_path, deadline, kind
):
    """Issue 15: manifest.json as a FIFO hung the terminal at start; as a link to /dev/zero it
    exited with an empty error. The bundle is now refused with the reason, and parts FAIL."""
    manifest = tiny_bundle / "manifest.json"
    manifest.unlink()
    if kind == "fifo":
        os.mkfifo(manifest)
    else:
        manifest.symlink_to("/dev/zero")
    config = StationConfig(
        bundle_dir=tiny_bundle, ledger_url=f"sqlite:///{tmp_path / 'l.db'}", station_id="st-5"
    )
    station = deadline(20, Station, config, fifos=[manifest])
    with station:
        assert "manifest.json" in str(station.bundle.error)
        outcome = station.submit("VIN-M", data=_png(normal_image(1))).result(60)
    assert outcome.decision == "FAIL" and outcome.record_seq == 1
    assert "manifest.json" in outcome.error


def test_camera_entries_that_cannot_be_inspected_are_recorded_fails_signalled_and_moved(
    key_env, tiny_bundle, tmp_path, echo_plc
):
    """Issue 15 item 4: a .gif, a directory, a FIFO and a symlink in the watched folder got no
    record, no PLC signal and no alarm. Each is now a signed FAIL record naming the entry, the
    PLC gets FAIL, the page's latest result shows the error, and the entry lands in failed/
    while a good image next to them still passes into inspected/."""
    camera = tmp_path / "camera"
    camera.mkdir()
    (camera / "VIN-G.gif").write_bytes(b"GIF89a")
    (camera / "VIN-D.png").mkdir()
    os.mkfifo(camera / "VIN-F.png")
    (camera / "VIN-S.png").symlink_to(tmp_path / "elsewhere.png")
    (camera / "VIN-OK.png").write_bytes(_png(normal_image(1)))
    config = StationConfig(
        bundle_dir=tiny_bundle,
        ledger_url=f"sqlite:///{tmp_path / 'l.db'}",
        station_id="st-6",
        plc_url=echo_plc.url,
        plc_timeout_s=1.0,
    )
    with Station(config) as station:
        watcher = FolderWatcher(WatchConfig(camera, poll_s=0.02, settle_s=0.01), station.submit)
        watcher.start()
        try:
            deadline = time.monotonic() + 30
            while (
                len(list((camera / FAILED).iterdir())) + len(list((camera / INSPECTED).iterdir()))
                < 5
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)
        finally:
            watcher.stop()
        rows = {row["part_id"]: row for row in station.records()}
        latest = station.latest()
        counts = station.counts()
    assert sorted(p.name for p in (camera / FAILED).iterdir()) == [
        "VIN-D.png",
        "VIN-F.png",
        "VIN-G.gif",
        "VIN-S.png",
    ]
    assert [p.name for p in (camera / INSPECTED).iterdir()] == ["VIN-OK.png"]
    assert sorted(p.name for p in camera.iterdir()) == [FAILED, INSPECTED]
    assert (camera / FAILED / "VIN-S.png").is_symlink()
    assert rows["VIN-OK"]["decision"] == "PASS" and rows["VIN-OK"]["error"] is None
    for part_id, says in [
        ("VIN-G", "unsupported file type"),
        ("VIN-D", "directory"),
        ("VIN-F", "FIFO"),
        ("VIN-S", "symbolic link"),
    ]:
        row = rows[part_id]
        assert row["decision"] == "FAIL" and row["signature"] == "valid", row
        assert says in row["error"] and "not inspected" in row["error"], row
    assert counts["error"] == 4 and counts["fail"] == 4 and counts["pass"] == 1
    assert latest is not None and latest.decision == "FAIL" and "not inspected" in latest.error
    deadline = time.monotonic() + 5
    while len(echo_plc.received) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(echo_plc.received) == [0x00, 0x01, 0x01, 0x01, 0x01]  # one PASS, four FAIL


def test_the_plc_budget_runs_from_the_decision_not_from_the_overlay(
    key_env, tiny_bundle, tmp_path, echo_plc, monkeypatch
):
    """Work between the decision and the signal (here an overlay that takes longer than the PLC
    timeout) uses up the signal's budget: the PASS byte is not sent late, where the PLC would
    take it for the next part's result (perhaps a defective one). What reaches the PLC is the
    corrective FAIL, and the part's FAIL record is written."""
    from autoweld.terminal import service

    real_render = service.render_overlay

    def slow_render(image, result):
        time.sleep(1.5)  # far beyond the PLC timeout
        return real_render(image, result)

    db = tmp_path / "l.db"
    config = StationConfig(
        bundle_dir=tiny_bundle,
        ledger_url=f"sqlite:///{db}",
        station_id="st-9",
        plc_url=echo_plc.url,
        plc_timeout_s=0.5,  # so the corrective FAIL (a first connect) is delivered under load
        threads=1,
    )
    with Station(config) as station:
        monkeypatch.setattr(service, "render_overlay", slow_render)
        outcome = station.submit("VIN-LATE", data=_png(normal_image(1))).result(60)
    # the record's deadline has passed before its append starts: whether the append is cut off
    # or just makes it after the deadline, the PASS is corrected and the outcome says so
    assert outcome.decision == "FAIL"
    assert "the PASS was corrected with a FAIL to the PLC (delivered)" in outcome.error
    time.sleep(0.2)
    assert 0x00 not in echo_plc.received  # the PASS never reached the PLC after its budget
    assert 0x01 in echo_plc.received  # the corrective FAIL did
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT part_id, decision FROM ledger_records ORDER BY seq").fetchall()
    conn.close()
    # the FAIL that stands is the part's last record (a PASS record that became durable after
    # its deadline may stand before it, named in the FAIL's error)
    assert rows[-1] == ("VIN-LATE", "FAIL") and set(rows) <= {("VIN-LATE", "PASS"), rows[-1]}
