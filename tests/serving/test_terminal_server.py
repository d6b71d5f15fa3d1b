"""The terminal's station scoring through the Triton server: the same outcome as in process,
records in the station's own ledger, and a FAIL when the server is down."""

from __future__ import annotations

import cv2
import pytest
from tinybundle import defect_image, normal_image

from autoweld.serving.local import free_port

pytest.importorskip("fastapi", reason="the terminal extra (fastapi) is not installed")
pytestmark = pytest.mark.slow

from autoweld.terminal.service import Station, StationConfig  # noqa: E402


def _png(image) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def _outcomes(config: StationConfig, images) -> list:
    with Station(config) as station:
        station.start()
        return [station.submit(f"P{i}", data=_png(img)).result(60) for i, img in enumerate(images)]


def test_station_with_server_matches_in_process_and_fails_when_down(
    tiny_served, tmp_path, monkeypatch
):
    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "serving-test-secret-0123456789abcdef")
    bundle = tiny_served.bundles["cam1"]
    images = [normal_image(1), defect_image(2)]

    def config(name: str, server: str | None) -> StationConfig:
        return StationConfig(
            bundle_dir=bundle,
            ledger_url=f"sqlite:///{tmp_path / f'{name}.db'}",
            station_id="st-9",
            threads=1,
            server_url=server,
            server_timeout_s=2.0,
        )

    local = _outcomes(config("local", None), images)
    remote = _outcomes(config("remote", tiny_served.url), images)
    down = _outcomes(config("down", f"grpc://127.0.0.1:{free_port()}"), images[:1])
    assert [o.decision for o in remote] == [o.decision for o in local] == ["PASS", "FAIL"]
    for got, want in zip(remote, local, strict=True):
        assert got.error is None and got.record_seq is not None
        assert got.probability == pytest.approx(want.probability, abs=1e-5)
        assert got.scores == pytest.approx(want.scores, abs=1e-5)
    assert down[0].decision == "FAIL" and "UNAVAILABLE" in down[0].error
    assert down[0].record_seq is not None
