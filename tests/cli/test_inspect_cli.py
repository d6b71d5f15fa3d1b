import json
import os
import subprocess
import sys

import cv2
import pytest
from tinybundle import defect_image, normal_image

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
    assert "'warp-drive' is unknown; available: best" in err and "cpu" in err
    assert main([*base, "--heatmap", str(tmp_path / "h.jpg")]) == 2
    assert main([*base, "--threads", "0"]) == 2
    assert main([*base, "--plc", "ftp://plc:1"]) == 2
    assert "unknown scheme 'ftp'" in capsys.readouterr().err
    assert main([*base, "--plc", "tcp://127.0.0.1:9", "--plc-timeout", "0"]) == 2
    assert "timeout" in capsys.readouterr().err


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


def test_bad_image_is_a_fail_with_error(capsys, tiny_bundle, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    status, payload = _run_json(capsys, "--bundle", tiny_bundle, "--image", empty, "--part-id", "C")
    assert status == 1 and "empty (0 bytes)" in payload["error"]


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


def _echo_plc():
    """A one-byte TCP PLC on loopback that echoes each byte and remembers it."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    received: list[int] = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(1):
                    received.append(data[0])
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server, received


def test_ledger_record_and_plc_signal(capsys, tiny_bundle, tmp_path, monkeypatch):
    from autoweld import quality

    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "unit-test-secret-0123456789-ghijklmnop")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    server, received = _echo_plc()
    plc_url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    good = _image(tmp_path, normal_image(1), "good.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    heatmap = tmp_path / "good_map.png"
    try:
        # a 1 s PLC timeout: the records' deadline (0.6 s) cannot be missed by a slow CI disk
        common = ["--bundle", tiny_bundle, "--ledger", ledger_url, "--plc", plc_url,
                  "--plc-timeout", "1"]  # fmt: skip
        status, first = _run_json(
            capsys, *common, "--image", good, "--part-id", "G1", "--heatmap", heatmap
        )
        assert status == 0 and first["record_seq"] == 1 and first["plc_delivered"] is True
        status, second = _run_json(capsys, *common, "--image", empty, "--part-id", "E1")
        assert status == 1 and second["record_seq"] == 2 and second["plc_delivered"] is True
    finally:
        server.close()
    assert received == [0x00, 0x01]  # PASS then FAIL on the wire
    with quality.open_ledger(ledger_url) as ledger:
        records = list(ledger.records())
        assert ledger.verify().ok
    by_part = {r.part_id: r for r in records}
    assert by_part["G1"].decision == "PASS" and by_part["G1"].plc_delivered is True
    assert by_part["G1"].heatmap_sha256 is not None
    assert by_part["G1"].fused_probability == pytest.approx(first["probability"])
    assert by_part["E1"].decision == "FAIL" and "empty" in by_part["E1"].error
    assert by_part["E1"].fused_probability is None


def test_unreachable_plc_is_recorded_not_delivered(capsys, tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "unit-test-secret-0123456789-ghijklmnop")
    import socket

    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    good = _image(tmp_path, normal_image(1))
    status, payload = _run_json(
        capsys,
        "--bundle",
        tiny_bundle,
        "--image",
        good,
        "--part-id",
        "P",
        "--ledger",
        f"sqlite:///{tmp_path / 'l.db'}",
        "--plc",
        f"tcp://127.0.0.1:{port}",
        "--plc-timeout",
        "1",
    )
    assert status == 0 and payload["plc_delivered"] is False and payload["record_seq"] == 1


def test_ledger_without_key_is_a_usage_error(capsys, tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOWELD_SECRET_KEY", raising=False)
    image = _image(tmp_path, normal_image(1))
    base = ["--bundle", str(tiny_bundle), "--image", str(image), "--part-id", "P1"]
    assert main([*base, "--ledger", f"sqlite:///{tmp_path}/l.db"]) == 2
    assert "--ledger" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--part-id", " "), ("--part-id", "VIN\x07"), ("--part-id", "P" * 201), ("--station", "  ")],
)
def test_bad_part_or_station_id_is_a_usage_error(
    capsys, tiny_bundle, tmp_path, monkeypatch, flag, value
):
    """Checked before inspecting: exit 2, and neither a record nor a ledger file appears."""
    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "unit-test-secret-0123456789-ghijklmnop")
    image = _image(tmp_path, normal_image(1))
    argv = ["--bundle", str(tiny_bundle), "--image", str(image), "--part-id", "P1"]
    argv += ["--station", "cell-1", "--ledger", f"sqlite:///{tmp_path}/l.db", flag, value]
    assert main(argv) == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "l.db").exists()


@pytest.mark.parametrize("providers", [["best"], ["tensorrt", "cpu"], ["CPUExecutionProvider"]])
def test_engine_choices_that_run_on_a_cpu_machine(capsys, tiny_bundle, tmp_path, providers):
    # 'best' and 'tensorrt' pass the usage check and run the ONNX graph where no plan can run
    # (the bundle has none): the same result as 'cpu'. Asking for TensorRT by name says why not.
    image = _image(tmp_path, defect_image(2))
    base = ["--bundle", tiny_bundle, "--image", image, "--part-id", "P1"]
    if providers[0] == "tensorrt":
        with pytest.warns(RuntimeWarning, match="TensorRT plan not used: the bundle has no"):
            status, chosen = _run_json(capsys, *base, "--providers", *providers)
    else:
        status, chosen = _run_json(capsys, *base, "--providers", *providers)
    _, reference = _run_json(capsys, *base, "--providers", "cpu")
    assert status == 1 and chosen["decision"] == "FAIL" and chosen["error"] is None
    assert chosen["probability"] == reference["probability"]


@pytest.mark.parametrize("what", ["image-fifo", "manifest-fifo", "manifest-dev-zero"])
def test_fifo_or_device_inputs_are_a_recorded_fail_not_a_hang(
    capsys, tiny_bundle, tmp_path, monkeypatch, deadline, what
):
    """Issue 15: a FIFO as --image, or manifest.json as a FIFO, hung autoweld-inspect; a
    manifest linked to /dev/zero was read until MemoryError. Each is now a recorded FAIL that
    says why, within seconds."""
    from autoweld import quality

    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "cli-test-secret-0123456789abcdef")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    image = _image(tmp_path, normal_image(1))
    blocker = None
    if what == "image-fifo":
        image.unlink()
        os.mkfifo(image)
        blocker, reason = image, "FIFO"
    else:
        manifest = tiny_bundle / "manifest.json"
        manifest.unlink()
        if what == "manifest-fifo":
            os.mkfifo(manifest)
            blocker, reason = manifest, "FIFO"
        else:
            manifest.symlink_to("/dev/zero")
            reason = "character device"
    argv = ["--bundle", tiny_bundle, "--image", image, "--part-id", "P-odd", "--ledger", ledger_url]
    status, payload = deadline(20, _run_json, capsys, *argv, fifos=[blocker] if blocker else [])
    assert status == 1 and payload["decision"] == "FAIL"
    assert reason in payload["error"] and payload["record_seq"] == 1
    with quality.open_ledger(ledger_url) as ledger:
        [record] = list(ledger.records())
    assert record.decision == "FAIL" and reason in record.error


# ---- unsigned bundles (issue 15 item 7) -----------------------------------------------------
BUNDLE_KEY = "line-3-bundle-key-0123456789-ghijklmnop"


def _rewrite_manifest(bundle, change):
    from autoweld.bundle.manifest import MANIFEST_NAME, canonical_json

    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_bytes(canonical_json(manifest))


def _forge_calibration(bundle):
    """Every head's Platt calibration set to p = 1 / (1 + e^50): every part 'passes'."""

    def change(manifest):
        for head in manifest["models"].values():
            head["calibration"] = {"a": 0.0, "b": 50.0}

    _rewrite_manifest(bundle, change)


def _forge_always_good_graph(bundle):
    """model.onnx swapped for a graph that multiplies every image by zero (a perfect mid-grey
    part), with its sha256 and size fixed up in the manifest."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string((bundle / "model.onnx").read_bytes())
    for node in model.graph.node:
        node.input[:] = ["blind" if name == "image" else name for name in node.input]
    model.graph.node.insert(0, helper.make_node("Mul", ["image", "zero"], ["blind"]))
    model.graph.initializer.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
    data = model.SerializeToString()
    (bundle / "model.onnx").write_bytes(data)

    def change(manifest):
        manifest["files"]["model.onnx"] = {
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()
        }  # fmt: skip

    _rewrite_manifest(bundle, change)


@pytest.mark.parametrize("forge", [_forge_calibration, _forge_always_good_graph])
def test_forged_unsigned_bundle_is_refused_or_recorded_unsigned(
    capsys, tiny_bundle, tmp_path, monkeypatch, caplog, forge
):
    """An edited calibration or an "always good" ONNX with fixed-up hashes made a defect PASS
    with no warning and nothing in the record. Now --require-signed (or the environment) refuses
    it (exit 2, a recorded FAIL), and without it the record says bundle_signed=false."""
    from autoweld import quality

    monkeypatch.delenv("AUTOWELD_BUNDLE_KEY", raising=False)
    monkeypatch.delenv("AUTOWELD_REQUIRE_SIGNED", raising=False)
    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "unit-test-secret-0123456789-ghijklmnop")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    defect = _image(tmp_path, defect_image(3))
    common = ["--bundle", tiny_bundle, "--image", defect, "--ledger", ledger_url]
    status, honest = _run_json(capsys, *common, "--part-id", "D0")
    assert status == 1 and honest["decision"] == "FAIL"  # the real bundle finds the defect
    forge(tiny_bundle)

    caplog.set_level("WARNING")
    status, forged = _run_json(capsys, *common, "--part-id", "D1")
    assert status == 0 and forged["decision"] == "PASS"  # the forgery works on its own terms ...
    assert "UNSIGNED BUNDLE" in caplog.text  # ... but is logged loudly and recorded as unsigned

    status, refused = _run_json(capsys, *common, "--part-id", "D2", "--require-signed")
    assert status == 2 and refused["decision"] == "FAIL" and refused["record_seq"] == 3
    assert "signed bundles are required" in refused["error"]
    assert "AUTOWELD_BUNDLE_KEY" in refused["error"]
    monkeypatch.setenv("AUTOWELD_REQUIRE_SIGNED", "1")
    status, refused_env = _run_json(capsys, *common, "--part-id", "D3")
    assert status == 2 and refused_env["decision"] == "FAIL"

    with quality.open_ledger(ledger_url, read_only=True) as ledger:
        assert ledger.verify().ok
        stored = {r.part_id: r for r in ledger.records()}
    assert stored["D0"].bundle_signed is False and stored["D1"].bundle_signed is False
    assert stored["D1"].decision == "PASS"
    assert stored["D2"].decision == "FAIL" and "signed bundles are required" in stored["D2"].error


def test_signed_bundle_is_recorded_signed_and_a_forgery_refused(
    capsys, tiny_bundle, tmp_path, monkeypatch
):
    import hashlib
    import hmac

    from autoweld import quality
    from autoweld.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, canonical_json

    monkeypatch.setenv("AUTOWELD_BUNDLE_KEY", BUNDLE_KEY)
    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "unit-test-secret-0123456789-ghijklmnop")
    bundle = tiny_bundle  # signed as export signs it when AUTOWELD_BUNDLE_KEY is set
    mac = hmac.new(BUNDLE_KEY.encode(), (bundle / MANIFEST_NAME).read_bytes(), hashlib.sha256)
    signature = {"algorithm": "HMAC-SHA256", "key_id": "bundle-k1", "mac": mac.hexdigest()}
    (bundle / SIGNATURE_NAME).write_bytes(canonical_json(signature))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    good = _image(tmp_path, normal_image(2))
    common = ["--bundle", bundle, "--image", good, "--ledger", ledger_url, "--require-signed"]
    status, payload = _run_json(capsys, *common, "--part-id", "G1")
    assert status == 0, payload
    _forge_calibration(bundle)
    status, payload = _run_json(capsys, *common, "--part-id", "G2")
    assert status == 2 and "signature does not match" in payload["error"]
    with quality.open_ledger(ledger_url, read_only=True) as ledger:
        stored = {r.part_id: r for r in ledger.records()}
    assert stored["G1"].bundle_signed is True and stored["G2"].decision == "FAIL"


def test_bad_require_signed_setting_is_a_usage_error(capsys, tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOWELD_REQUIRE_SIGNED", "maybe")
    image = _image(tmp_path, normal_image(1))
    assert main(["--bundle", str(tiny_bundle), "--image", str(image), "--part-id", "P1"]) == 2
    assert "AUTOWELD_REQUIRE_SIGNED='maybe'" in capsys.readouterr().err
