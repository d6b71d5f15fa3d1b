"""End to end through a real Triton server on 127.0.0.1 (nvidia-pytriton's tritonserver):
the same results as the in-process Inspector, many cameras at once, and FAIL -- within the
deadline, never a hang -- when the server is down, silent or serves another bundle."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from tinybundle import defect_image, normal_image

from autoweld.bundle import load_bundle
from autoweld.runtime import Inspector
from autoweld.serving import RemoteInspector
from autoweld.serving.local import free_port

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5


def assert_same(remote, local, head_maps: bool = False) -> None:
    """The remote result is the in-process one, within TOLERANCE (a FAIL for the same reason)."""
    if local.error is not None:
        assert (remote.decision, remote.error) == ("FAIL", local.error)
        return
    assert remote.error is None, remote.error
    assert remote.decision == local.decision
    assert remote.probability == pytest.approx(local.probability, abs=TOLERANCE)
    assert remote.scores.keys() == local.scores.keys()
    for head in local.scores:
        assert remote.scores[head] == pytest.approx(local.scores[head], abs=TOLERANCE)
        assert remote.probabilities[head] == pytest.approx(local.probabilities[head], abs=TOLERANCE)
    assert remote.anomaly_map.shape == local.anomaly_map.shape
    np.testing.assert_allclose(remote.anomaly_map, local.anomaly_map, atol=TOLERANCE)
    if head_maps:
        for head, local_map in local.head_maps.items():
            np.testing.assert_allclose(remote.head_maps[head], local_map, atol=TOLERANCE)


TINY_IMAGES = [normal_image(1), defect_image(2), normal_image(3, 40), defect_image(4, 64)]


@pytest.mark.parametrize("camera", ["cam1", "ens"])
def test_python_model_and_ensemble_give_the_inspectors_results(tiny_served, camera):
    bundle = tiny_served.bundles[camera]
    url = f"{tiny_served.url}/autoweld_{camera}"
    with Inspector(bundle) as local, RemoteInspector(bundle, url) as remote:
        expected = local.inspect_batch(TINY_IMAGES, keep_head_maps=True)
        got = remote.inspect_batch(TINY_IMAGES, keep_head_maps=True)
        single = remote.inspect(TINY_IMAGES[1])
        assert remote.served_sha256 == load_bundle(bundle).sha256
    assert [r.decision for r in expected] == ["PASS", "FAIL", "PASS", "FAIL"]
    for remote_result, local_result in zip(got, expected, strict=True):
        assert_same(remote_result, local_result, head_maps=True)
    assert_same(single, expected[1])
    assert set(single.timings_ms) == {"decode", "preprocess", "server"}


def test_the_model_is_found_by_the_local_bundle_and_a_mismatch_is_a_fail(tiny_served):
    cam2 = tiny_served.bundles["cam2"]
    with RemoteInspector(cam2, tiny_served.url) as remote:  # no model named: found by sha256
        assert remote.inspect(normal_image(5)).error is None
        assert remote.model == "autoweld_cam2"
    with RemoteInspector(cam2, f"{tiny_served.url}/autoweld_cam1") as remote:
        result = remote.inspect(normal_image(5))
    assert result.decision == "FAIL"
    assert "serves no model of the local bundle" in result.error
    assert load_bundle(cam2).sha256 in result.error


def test_a_non_finite_image_fails_alone_through_the_server(tiny_served):
    dark = np.zeros((32, 32, 3), np.uint8)
    with RemoteInspector(tiny_served.bundles["cam2"], tiny_served.url) as remote:
        results = remote.inspect_batch([normal_image(6), dark, b"not an image"])
    assert results[0].error is None and results[0].decision == "PASS"
    assert results[1].decision == "FAIL" and "feature_ae" in results[1].error
    assert "NaN" in results[1].error
    assert results[2].decision == "FAIL" and results[2].error  # refused by the station's decoder


def test_cameras_sending_concurrently_get_their_own_bundles_results(tiny_served):
    import tritonclient.grpc as grpcclient

    cameras = ["cam1", "cam2", "ens", "cam1", "cam2", "ens"]
    expected = {}
    for camera in set(cameras):
        with Inspector(tiny_served.bundles[camera]) as local:
            expected[camera] = local.inspect_batch(TINY_IMAGES)
    start = threading.Barrier(len(cameras))

    def camera_loop(camera):
        url = f"{tiny_served.url}/autoweld_{camera}"
        with RemoteInspector(tiny_served.bundles[camera], url) as remote:
            start.wait()
            return [[remote.inspect(image) for image in TINY_IMAGES] for _ in range(3)]

    with ThreadPoolExecutor(len(cameras)) as pool:
        runs = list(pool.map(camera_loop, cameras))
    for camera, rounds in zip(cameras, runs, strict=True):
        for results in rounds:
            for got, want in zip(results, expected[camera], strict=True):
                assert_same(got, want)
    client = grpcclient.InferenceServerClient(tiny_served.url.removeprefix("grpc://"))
    stats = client.get_inference_statistics("autoweld_cam2", as_json=True)
    client.close()
    counted = int(stats["model_stats"][0]["inference_count"])
    assert counted >= 2 * 3 * len(TINY_IMAGES)


def test_server_down_is_a_fail_within_the_deadline(tiny_bundle, deadline):
    url = f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    with RemoteInspector(tiny_bundle, url, timeout_s=2.0) as remote:
        started = time.monotonic()
        result = deadline(10, remote.inspect, normal_image(1))
        elapsed = time.monotonic() - started
        again = deadline(10, remote.inspect, normal_image(1))  # and stays usable
    assert result.decision == "FAIL" and url in result.error
    assert "UNAVAILABLE" in result.error
    assert elapsed < 4.0
    assert again.decision == "FAIL"


def test_a_silent_server_is_a_fail_after_the_timeout(tiny_bundle, deadline):
    """A listener that accepts and never answers (a hung server): FAIL at the deadline."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"grpc://127.0.0.1:{listener.getsockname()[1]}/autoweld_cam1"
    try:
        with RemoteInspector(tiny_bundle, url, timeout_s=1.5) as remote:
            started = time.monotonic()
            result = deadline(15, remote.inspect, normal_image(1))
            elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join(2)
        for connection in accepted:
            connection.close()
        listener.close()
    assert result.decision == "FAIL" and "DEADLINE_EXCEEDED" in result.error
    assert 1.0 < elapsed < 6.0


def test_autoweld_inspect_with_server_records_locally(tiny_served, tmp_path, monkeypatch, capsys):
    from autoweld import quality
    from autoweld.cli.inspect import main

    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "serving-test-secret-0123456789abcdef")
    bundle = tiny_served.bundles["cam1"]
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    cv2.imwrite(str(good), normal_image(1))
    cv2.imwrite(str(bad), defect_image(2))
    payloads = {}
    for where, extra in (("local", []), ("remote", ["--server", tiny_served.url])):
        for image in (good, bad):
            argv = [
                "--bundle",
                str(bundle),
                "--image",
                str(image),
                "--part-id",
                f"{where}-{image.stem}",
            ]
            status = main([*argv, "--ledger", ledger_url, "--json", *extra])
            payloads[where, image.stem] = (status, json.loads(capsys.readouterr().out))
    down = f"grpc://127.0.0.1:{free_port()}"
    argv = ["--bundle", str(bundle), "--image", str(good), "--part-id", "down"]
    status_down = main(
        [*argv, "--ledger", ledger_url, "--json", "--server", down, "--server-timeout", "2"]
    )
    payload_down = json.loads(capsys.readouterr().out)
    for stem in ("good", "bad"):
        (status_local, local), (status_remote, remote) = (
            payloads["local", stem],
            payloads["remote", stem],
        )
        assert status_remote == status_local and list(remote) == list(local)
        assert remote["decision"] == local["decision"] and remote["error"] is None
        assert remote["probability"] == pytest.approx(local["probability"], abs=TOLERANCE)
        assert remote["scores"] == pytest.approx(local["scores"], abs=TOLERANCE)
    assert payloads["remote", "good"][1]["decision"] == "PASS"
    assert status_down == 1 and payload_down["decision"] == "FAIL"
    assert down in payload_down["error"] and payload_down["record_seq"] is not None
    with quality.open_ledger(ledger_url) as ledger:
        records = {r.part_id: r for r in ledger.records()}
        assert ledger.verify().ok
    sha = load_bundle(bundle).sha256
    assert records["remote-good"].bundle_sha256 == sha and records["down"].bundle_sha256 == sha
    assert records["down"].decision == "FAIL" and down in records["down"].error


def test_server_flag_usage_errors(tiny_bundle, tmp_path, capsys):
    from autoweld.cli.inspect import main

    image = tmp_path / "x.png"
    cv2.imwrite(str(image), normal_image(1))
    for bad in ("http://127.0.0.1:8001", "grpc://127.0.0.1", "grpc://h:1/a/b"):
        argv = ["--bundle", str(tiny_bundle), "--image", str(image), "--part-id", "p"]
        assert main([*argv, "--server", bad]) == 2
        assert "--server" in capsys.readouterr().err


def test_ensemble_with_the_onnxruntime_backend(triton_dist, tiny_bundle, tmp_path):
    if not (triton_dist.backends / "onnxruntime").is_dir():
        pytest.skip(
            "nvidia-pytriton's tritonserver has no onnxruntime backend; the ensemble's graph "
            "model is validated structurally (test_repository.py) and served here with "
            "--graph-backend python; a full Triton (the NGC container) serves it as written"
        )
    from autoweld.serving import RepositoryOptions, write_triton_repository
    from autoweld.serving.local import LocalTritonServer

    repository = write_triton_repository(
        {"cam1": tiny_bundle}, tmp_path / "repo", RepositoryOptions(variant="ensemble", threads=1)
    )
    with LocalTritonServer(triton_dist, repository, tmp_path / "log") as server:
        with Inspector(tiny_bundle) as local, RemoteInspector(tiny_bundle, server.url) as remote:
            for image in TINY_IMAGES:
                assert_same(remote.inspect(image), local.inspect(image))
