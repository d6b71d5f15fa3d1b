"""The terminal's JSON API through FastAPI's TestClient, on a tiny bundle and a real SQLite
ledger: decisions, fail-safe paths, counts, ledger rows with signature status, verify, and that
no route can change a record."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import cv2
import pytest
from tinybundle import defect_image, normal_image

pytest.importorskip("fastapi", reason="the terminal extra (fastapi) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from autoweld.terminal.app import create_app  # noqa: E402
from autoweld.terminal.security import Credentials, served_hosts  # noqa: E402
from autoweld.terminal.service import Station, StationConfig  # noqa: E402

from .conftest import (  # noqa: E402
    OCTET,
    QUALITY_TOKEN,
    auth,
    hold_inspections,
    write_credentials,
)

BASE_URL = "http://127.0.0.1:8080"
HOSTS = served_hosts("127.0.0.1", 8080)


def app_client(station, tmp_path, **kwargs) -> TestClient:
    """A client of the app as the terminal serves it on 127.0.0.1:8080, signed in as the
    quality engineer (who may do everything)."""
    credentials = Credentials.from_file(write_credentials(tmp_path / "credentials"))
    app = create_app(station, hosts=HOSTS, credentials=credentials, **kwargs)
    return TestClient(app, base_url=BASE_URL, headers=auth(QUALITY_TOKEN))


def png(image) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


@pytest.fixture
def station(key_env, tiny_bundle, tmp_path):
    config = StationConfig(
        bundle_dir=tiny_bundle,
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        station_id="st-7",
        threads=1,
    )
    with Station(config) as station:
        yield station


@pytest.fixture
def client(station, tmp_path):
    with app_client(station, tmp_path, watch_folder="/cam") as client:
        yield client


def inspect(client, part_id: str, data: bytes) -> dict:
    response = client.post("/api/inspect", params={"part_id": part_id}, content=data, headers=OCTET)
    assert response.status_code == 200, response.text
    return response.json()


def test_pass_fail_counts_and_records(client, tmp_path):
    good = inspect(client, "VIN-1", png(normal_image(1)))
    bad = inspect(client, "VIN-2", png(defect_image(2)))
    assert good["decision"] == "PASS" and good["error"] is None
    assert bad["decision"] == "FAIL" and bad["error"] is None
    assert good["probability"] < good["threshold"] <= bad["probability"]
    assert set(good["probabilities"]) == {"patchcore", "feature_ae"}
    assert (good["record_seq"], bad["record_seq"]) == (1, 2)

    status = client.get("/api/status").json()
    assert status["station_id"] == "st-7" and status["watch_folder"] == "/cam"
    assert status["bundle"]["category"] == "unit" and status["bundle"]["threshold"] == 0.5
    assert len(status["bundle"]["sha256"]) == 64 and status["bundle"]["error"] is None
    counts = status["counts"]
    assert (counts["total"], counts["pass"], counts["fail"], counts["error"]) == (2, 1, 1, 0)
    assert counts["yield"] == 0.5 and counts["rate_per_min"] > 0
    assert status["latest"]["part_id"] == "VIN-2" and status["latest"]["decision"] == "FAIL"
    assert status["plc"] == {"configured": False, "state": "no PLC configured",
                             "last_delivered": None}  # fmt: skip

    picture = client.get("/api/latest.png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    image = cv2.imdecode(__import__("numpy").frombuffer(picture.content, "uint8"), 1)
    assert image.shape[1] == 48 and image.shape[0] > 48  # the image plus the banner above it

    rows = client.get("/api/records").json()["records"]
    assert [(r["part_id"], r["decision"], r["signature"]) for r in rows] == [
        ("VIN-2", "FAIL", "valid"),
        ("VIN-1", "PASS", "valid"),
    ]
    only = client.get("/api/records", params={"part_id": "VIN-1"}).json()["records"]
    assert [r["seq"] for r in only] == [1]
    assert client.get("/api/records", params={"part_id": "nope"}).json()["records"] == []
    verify = client.get("/api/verify").json()
    assert verify["ok"] is True and verify["checked"] == 2 and verify["stations"] == 1


def test_bad_image_is_a_recorded_fail(client):
    result = inspect(client, "VIN-3", b"\x89PNG\r\n\x1a\n truncated")
    assert result["decision"] == "FAIL" and result["error"]
    assert result["probability"] is None and result["record_seq"] == 1
    row = client.get("/api/records").json()["records"][0]
    assert row["decision"] == "FAIL" and row["error"] == result["error"]
    counts = client.get("/api/status").json()["counts"]
    assert (counts["fail"], counts["error"], counts["pass"]) == (1, 1, 0)
    # the page still gets a picture: the banner says FAIL and why
    assert client.get("/api/latest.png").status_code == 200


def test_tampered_ledger_fails_verify_and_shows_bad_signature(client, tmp_path):
    for i in range(3):
        inspect(client, f"P{i}", b"not an image")  # three FAIL records
    assert client.get("/api/verify").json()["ok"] is True
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute("DROP TRIGGER ledger_records_no_update")
        db.execute("UPDATE ledger_records SET decision = 'PASS', error = NULL WHERE seq = 2")
    verify = client.get("/api/verify").json()
    assert verify["ok"] is False and verify["first_bad_seq"] == 2
    assert "MAC does not match" in verify["reason"] and verify["station_id"] == "st-7"
    rows = {r["seq"]: r["signature"] for r in client.get("/api/records").json()["records"]}
    assert rows == {1: "valid", 2: "INVALID", 3: "valid"}


def test_refused_bundle_fails_every_part(key_env, tiny_bundle, tmp_path):
    (tiny_bundle / "model.onnx").write_bytes(b"tampered")
    config = StationConfig(tiny_bundle, f"sqlite:///{tmp_path / 'l.db'}", "st-1")
    with Station(config) as station, app_client(station, tmp_path) as client:
        bundle = client.get("/api/status").json()["bundle"]
        assert bundle["error"].startswith("bundle refused") and "model.onnx" in bundle["error"]
        result = inspect(client, "P1", png(normal_image(1)))
        assert result["decision"] == "FAIL" and "bundle refused" in result["error"]
        assert result["record_seq"] == 1


def test_ledger_write_failure_turns_pass_into_fail(station, client, monkeypatch):
    def broken(record, **deadline):
        raise RuntimeError("disk full")

    monkeypatch.setattr(station._ledger, "append", broken)
    result = inspect(client, "VIN-9", png(normal_image(1)))  # would pass
    assert result["decision"] == "FAIL" and result["record_seq"] is None
    assert "ledger write failed: disk full" in result["error"]
    assert client.get("/api/status").json()["counts"]["pass"] == 0


def test_bad_requests(client):
    def post(content: bytes, **params: str) -> int:
        return client.post(
            "/api/inspect", params=params, content=content, headers=OCTET
        ).status_code

    assert post(b"", part_id="A") == 400
    assert post(b"x") == 422  # no part id
    assert post(b"x", part_id="  ") == 400
    assert post(b"x", part_id="a\nb") == 400
    assert client.get("/api/records", params={"limit": 0}).status_code == 422
    assert client.get("/api/latest.png").status_code == 404  # nothing inspected yet
    assert client.get("/api/status").json()["counts"]["total"] == 0  # nothing was recorded


def test_no_route_can_change_a_record(client, station):
    """The only non-GET route is the inspection path; the page's ledger connection is
    read-only, so even a bug in a read route could not write."""
    routes = {
        (method, route.path)
        for route in client.app.routes
        for method in getattr(route, "methods", None) or ()
    }
    writes = {(m, p) for m, p in routes if m not in ("GET", "HEAD")}
    assert writes == {("POST", "/api/inspect")}
    for method in ("PUT", "PATCH", "DELETE"):
        assert client.request(method, "/api/records").status_code == 405
    assert station.reader.read_only is True
    from autoweld.quality import LedgerError

    with pytest.raises(LedgerError, match="read-only"):
        station.reader.append(_record())


def _record():
    from autoweld.quality import InspectionRecord

    return InspectionRecord(
        station_id="st-7", part_id="X", bundle_sha256="ab" * 32, package_version="0",
        decision="PASS",
    )  # fmt: skip


def test_server_answers_while_inspection_runs(station, client, monkeypatch):
    """Inspection runs on the worker thread: status stays responsive while it is busy."""
    release = hold_inspections(station, monkeypatch, limit_s=10)
    future = station.submit("SLOW-1", data=png(normal_image(1)))
    start = time.monotonic()
    status = client.get("/api/status").json()
    assert time.monotonic() - start < 2.0
    assert status["counts"]["pending"] == 1 and status["latest"] is None
    release.set()
    assert future.result(10).decision == "PASS"


def test_close_fails_queued_jobs(key_env, tiny_bundle, tmp_path):
    config = StationConfig(tiny_bundle, f"sqlite:///{tmp_path / 'l.db'}", "st-1")
    station = Station(config)  # not started: jobs stay queued
    future = station.submit("Q1", data=b"x")
    station.close()
    with pytest.raises(RuntimeError, match="shut down before inspection"):
        future.result(1)
    with pytest.raises(ValueError, match="closed"):
        station.submit("Q2", data=b"x")


def test_submit_checks_arguments(station):
    with pytest.raises(ValueError, match="exactly one"):
        station.submit("A")
    with pytest.raises(ValueError, match="part_id"):
        station.submit("", data=b"x")
    with pytest.raises(ValueError, match="part_id"):
        station.submit("x" * 201, data=b"x")


def test_missing_key_is_refused(monkeypatch, tiny_bundle, tmp_path):
    monkeypatch.delenv("AUTOWELD_SECRET_KEY", raising=False)
    from autoweld.quality import MissingKeyError

    with pytest.raises(MissingKeyError):
        Station(StationConfig(tiny_bundle, f"sqlite:///{tmp_path / 'l.db'}", "st-1"))
    assert not Path(tmp_path / "l.db").exists()


def test_plc_is_told_first_and_its_state_shown(key_env, tiny_bundle, tmp_path, echo_plc):
    config = StationConfig(
        tiny_bundle, f"sqlite:///{tmp_path / 'l.db'}", "st-1", plc_url=echo_plc.url,
        plc_timeout_s=1.0,
    )  # fmt: skip
    with Station(config) as station, app_client(station, tmp_path) as client:
        assert client.get("/api/status").json()["plc"]["last_delivered"] is None
        good = inspect(client, "P1", png(normal_image(1)))
        bad = inspect(client, "P2", png(defect_image(2)))
        assert (good["decision"], bad["decision"]) == ("PASS", "FAIL")
        assert good["plc_delivered"] is True and bad["plc_delivered"] is True
        assert echo_plc.received == [0x00, 0x01]  # PASS, FAIL on the one-byte protocol
        plc = client.get("/api/status").json()["plc"]
        assert plc["configured"] and plc["last_delivered"] is True and plc["delivered"] == 2
        echo_plc.stop()  # the PLC goes away
        station.plc.close()  # drop the open connection so the next send must reconnect
        lost = inspect(client, "P3", png(normal_image(3)))
        assert lost["plc_delivered"] is False and lost["record_seq"] == 3
        plc = client.get("/api/status").json()["plc"]
        assert plc["last_delivered"] is False and "NOT delivered" in plc["state"]
        rows = client.get("/api/records").json()["records"]
        assert [r["plc_delivered"] for r in rows] == [False, True, True]


PLANTED_SECRET = "PlantedSecret42"
PG_URL_WITH_SECRETS = (
    f"postgresql://station:{PLANTED_SECRET}u@127.0.0.1:1/ledger"
    f"?password={PLANTED_SECRET}q&sslpassword={PLANTED_SECRET}s"
)


def test_status_does_not_show_a_database_password(key_env, tiny_bundle, tmp_path):
    from autoweld.quality import open_ledger

    db = tmp_path / "l.db"
    config = StationConfig(
        bundle_dir=tiny_bundle, ledger_url=PG_URL_WITH_SECRETS, station_id="st-r"
    )
    with (
        Station(config, ledger=open_ledger(db), reader=open_ledger(db, read_only=True)) as station,
        app_client(station, tmp_path) as client,
    ):
        body = client.get("/api/status").json()
    assert "127.0.0.1" in body["ledger"]
    assert PLANTED_SECRET not in json.dumps(body)


def test_status_shows_the_forwarding_backlog(station, tmp_path):
    """``autoweld-terminal --central URL``: the page sees how much is still to forward."""
    from autoweld.quality.forward import Forwarder

    central = f"sqlite:///{tmp_path / 'central.db'}"
    with Forwarder(station.config.ledger_url, central, poll_s=0.02) as forwarder:
        with app_client(station, tmp_path, forwarder=forwarder) as client:
            assert client.get("/api/status").json()["forwarding"]["state"] == "starting"
            inspect(client, "VIN-1", png(normal_image(1)))
            forwarder.start()
            deadline = time.monotonic() + 30
            while client.get("/api/status").json()["forwarding"]["forwarded"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            shown = client.get("/api/status").json()["forwarding"]
    assert shown["state"] == "ok" and shown["backlog"] == {"st-7": 0}
    assert shown["central"] == central and shown["backlog_total"] == 0
