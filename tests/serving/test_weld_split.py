"""The must-show: on the weld test split, the Triton path gives the in-process Inspector's
scores and decisions (within 1e-5), with four cameras sending to one server at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_triton_server import TOLERANCE, assert_same

from autoweld.runtime import Inspector
from autoweld.serving import RemoteInspector

pytestmark = pytest.mark.slow


def test_weld_split_four_cameras_at_once_match_in_process(weld_served, weld_split):
    images = [path.read_bytes() for path in weld_split.images]
    with Inspector(weld_split.bundle_dir) as local:
        expected = [local.inspect(image) for image in images]
    assert {r.decision for r in expected} == {"PASS", "FAIL"}  # both decisions are exercised
    cameras = sorted(weld_served.bundles)
    start = threading.Barrier(len(cameras))

    def camera_loop(camera):
        url = f"{weld_served.url}/autoweld_{camera}"
        with RemoteInspector(weld_served.bundles[camera], url, timeout_s=30) as remote:
            start.wait()
            return [remote.inspect(image) for image in images]

    with ThreadPoolExecutor(len(cameras)) as pool:
        runs = list(pool.map(camera_loop, cameras))
    for results in runs:
        for got, want in zip(results, expected, strict=True):
            assert_same(got, want)


def test_autoweld_eval_through_the_server_reports_the_same_metrics(weld_served, weld_split):
    from autoweld.evaluation import evaluate

    local = evaluate(weld_split.bundle_dir, weld_split.data_root, progress=False, batch_size=4)
    remote = evaluate(
        weld_split.bundle_dir,
        weld_split.data_root,
        progress=False,
        batch_size=4,
        server=f"{weld_served.url}/autoweld_line1",
        server_timeout_s=30,
    )
    assert remote["failed"] == [] and remote["n_images"] == local["n_images"]
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert remote["fused"][key] == pytest.approx(local["fused"][key], abs=TOLERANCE)
        for head in local["models"]:
            assert remote["models"][head][key] == pytest.approx(
                local["models"][head][key], abs=TOLERANCE
            )
