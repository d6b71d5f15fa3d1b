import json
import subprocess
import sys

import cv2
import pytest
from tinybundle import defect_image, normal_image, requires_native

from autoweld.cli.inspect import main

JSON_KEYS = [
    "decision",
    "probability",
    "scores",
    "probabilities",
    "threshold",
    "timings_ms",
    "record_seq",
    "plc_delivered",
    "error",
]


def _image(tmp_path, image, name="part.png"):
    path = tmp_path / name
    cv2.imwrite(str(path), image)
    return path


def _run_json(capsys, *argv):
    status = main([*map(str, argv), "--json"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # exactly one JSON object on stdout
    return status, json.loads(lines[0])


def test_usage_errors_exit_2(capsys, tiny_bundle, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--bundle", str(tiny_bundle)])
    assert exit_info.value.code == 2
    image = _image(tmp_path, normal_image(1))
    base = ["--bundle", str(tiny_bundle), "--image", str(image), "--part-id", "P1"]
    assert main([*base, "--providers", "warp-drive"]) == 2
    err = capsys.readouterr().err
    assert "'warp-drive' is unknown; available:" in err and "CPUExecutionProvider" in err
    assert main([*base, "--heatmap", str(tmp_path / "h.jpg")]) == 2
    assert main([*base, "--threads", "0"]) == 2


def test_tampered_bundle_is_a_recorded_fail(capsys, tiny_bundle, tmp_path):
    manifest = tiny_bundle / "model.onnx"
    manifest.write_bytes(manifest.read_bytes() + b"x")
    image = _image(tmp_path, normal_image(1))
    status, payload = _run_json(
        capsys, "--bundle", tiny_bundle, "--image", image, "--part-id", "P1"
    )
    assert status == 1
    assert list(payload) == JSON_KEYS
    assert payload["decision"] == "FAIL" and payload["probability"] is None
    assert "bundle refused" in payload["error"] and "model.onnx" in payload["error"]
    assert payload["record_seq"] is None and payload["plc_delivered"] is None


def test_missing_bundle_dir_is_a_fail(capsys, tmp_path):
    image = _image(tmp_path, normal_image(1))
    status, payload = _run_json(
        capsys, "--bundle", tmp_path / "none", "--image", image, "--part-id", "P1"
    )
    assert status == 1 and "no bundle directory" in payload["error"]


@requires_native
def test_pass_and_fail_exit_codes_and_json_keys(capsys, tiny_bundle, tmp_path):
    good = _image(tmp_path, normal_image(1), "good.png")
    bad = _image(tmp_path, defect_image(2), "bad.png")
    status, payload = _run_json(capsys, "--bundle", tiny_bundle, "--image", good, "--part-id", "A")
    assert status == 0 and list(payload) == JSON_KEYS
    assert payload["decision"] == "PASS" and payload["error"] is None
    assert 0.0 <= payload["probability"] < payload["threshold"] == 0.5
    assert set(payload["scores"]) == set(payload["probabilities"]) == {"patchcore", "feature_ae"}
    assert {"load_bundle", "decode", "preprocess", "engine", "knn", "scoring"} <= set(
        payload["timings_ms"]
    )
    status, payload = _run_json(capsys, "--bundle", tiny_bundle, "--image", bad, "--part-id", "B")
    assert status == 1 and payload["decision"] == "FAIL" and payload["error"] is None
    assert payload["probability"] >= 0.5


@requires_native
def test_bad_image_is_a_fail_with_error(capsys, tiny_bundle, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    status, payload = _run_json(capsys, "--bundle", tiny_bundle, "--image", empty, "--part-id", "C")
    assert status == 1 and "empty (0 bytes)" in payload["error"]


@requires_native
def test_heatmap_is_written(capsys, tiny_bundle, tmp_path):
    image = _image(tmp_path, defect_image(2, size=64))
    target = tmp_path / "maps" / "part.png"
    status = main(
        [
            "--bundle",
            str(tiny_bundle),
            "--image",
            str(image),
            "--part-id",
            "D",
            "--heatmap",
            str(target),
        ]
    )
    assert status == 1
    picture = cv2.imread(str(target))
    assert picture.shape[1] == 64 and picture.shape[0] > 64  # banner above the image
    out = capsys.readouterr().out
    assert out.startswith("FAIL  probability")


def test_ledger_and_plc_need_the_quality_package(capsys, tiny_bundle, tmp_path):
    from autoweld import quality

    if hasattr(quality, "open_ledger"):
        pytest.skip("autoweld.quality is merged; covered by the ledger tests")
    image = _image(tmp_path, normal_image(1))
    base = ["--bundle", str(tiny_bundle), "--image", str(image), "--part-id", "P1"]
    assert main([*base, "--ledger", f"sqlite:///{tmp_path}/l.db"]) == 2
    assert "not available yet" in capsys.readouterr().err


@requires_native
def test_console_module_runs_in_a_fresh_process(tiny_bundle, tmp_path):
    image = _image(tmp_path, normal_image(1))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoweld.cli.inspect",
            "--bundle",
            str(tiny_bundle),
            "--image",
            str(image),
            "--part-id",
            "E",
            "--json",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["decision"] == "PASS"
