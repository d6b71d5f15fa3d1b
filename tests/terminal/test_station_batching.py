"""Several cameras on one station: the worker gathers queued jobs into one engine call
(``--max-batch``, ``--max-wait-ms``), then signals and records each in arrival order."""

from __future__ import annotations

import sqlite3
import time

import cv2
import pytest
from tinybundle import defect_image, normal_image

from autoweld.cli.terminal import build_parser
from autoweld.terminal.service import Station, StationConfig


def _png(image) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def test_queued_jobs_share_one_engine_call_and_keep_their_order(
    key_env, tiny_bundle, tmp_path, echo_plc, monkeypatch
):
    db = tmp_path / "l.db"
    config = StationConfig(
        bundle_dir=tiny_bundle,
        ledger_url=f"sqlite:///{db}",
        station_id="st-multi",
        plc_url=echo_plc.url,
        plc_timeout_s=1.0,
        threads=1,
        max_batch=5,
        max_wait_ms=60_000,  # the batch closes when five jobs are in hand, not on the clock
    )
    jobs = [
        ("CAM1-1", {"data": _png(normal_image(0))}),
        ("CAM2-1", {"data": _png(defect_image(1))}),
        ("CAM3-1", {"data": b"not an image"}),
        ("CAM4-1", {"data": _png(normal_image(2)), "error": "camera said no"}),
        ("CAM1-2", {"data": _png(normal_image(4))}),
    ]
    with Station(config) as station:
        alone = {
            i: station.inspector.inspect(image).probability
            for i, image in ((0, normal_image(0)), (1, defect_image(1)), (4, normal_image(4)))
        }
        calls: list[int] = []
        real = station.inspector.inspect_batch

        def counted(images, **kwargs):
            calls.append(len(images))
            return real(images, **kwargs)

        monkeypatch.setattr(station.inspector, "inspect_batch", counted)
        start = time.monotonic()
        futures = [station.submit(part, **kwargs) for part, kwargs in jobs]
        outcomes = [f.result(60) for f in futures]
        elapsed = time.monotonic() - start
    assert calls == [3]  # the three images that decode, in one call
    assert elapsed < 30  # closed by max_batch, not by the 60 s deadline
    assert [o.decision for o in outcomes] == ["PASS", "FAIL", "FAIL", "FAIL", "PASS"]
    assert {i: outcomes[i].probability for i in alone} == alone  # as inspected one by one
    assert outcomes[2].error and outcomes[3].error == "camera said no"
    assert [o.record_seq for o in outcomes] == [1, 2, 3, 4, 5]  # arrival order
    rows = sqlite3.connect(db).execute("SELECT part_id FROM ledger_records ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [part for part, _ in jobs]
    deadline = time.monotonic() + 2
    while len(echo_plc.received) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo_plc.received == [0x00, 0x01, 0x01, 0x01, 0x00]  # PASS=0, FAIL=1, in order


def test_batch_flags_parse_and_refuse_bad_values(capsys):
    parser = build_parser()
    base = ["--bundle", "b", "--ledger", "sqlite:///x.db"]
    args = parser.parse_args(base)
    assert (args.max_batch, args.max_wait_ms) == (1, 2.0)  # today's behaviour: one at a time
    args = parser.parse_args([*base, "--max-batch", "4", "--max-wait-ms", "0"])
    assert (args.max_batch, args.max_wait_ms) == (4, 0.0)
    for bad in (["--max-batch", "0"], ["--max-wait-ms", "-1"], ["--max-wait-ms", "inf"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*base, *bad])
        assert exit_info.value.code == 2
