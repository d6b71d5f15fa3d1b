"""bench/multicamera.py runs end to end on a tiny bundle and writes its report (the figures
themselves are not asserted: speed claims live in bench/results, ARCHITECTURE.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "multicamera.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("multicamera_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multicamera_bench_writes_its_report(tiny_bundle, image_dir, tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "out"
    argv = ["--bundle", str(tiny_bundle), "--images", str(image_dir), "--cameras", "1,2"]
    argv += ["--frames", "3", "--rounds", "1", "--wait-sweep", "0", "--threads", "1"]
    assert bench.main([*argv, "--max-batch", "2", "--out", str(out)]) == 0
    report = json.loads((out / "multicamera.json").read_text())
    for trigger in ("back_to_back", "together"):
        for cameras in ("1", "2"):
            for way in ("shared", "batched"):
                run = report["runs"][trigger][cameras][way]
                assert run["images"] == 3 * int(cameras) and run["failed"] == 0
            batches = report["runs"][trigger][cameras]["batched"]["batches"]
            assert sum(int(k) * v for k, v in batches["sizes"].items()) == 3 * int(cameras)
    assert set(report["wait_sweep_together"]) == {"1@0", "1@2", "2@0", "2@2"}
    assert set(report["batch_cost"]) == {"1", "2", "4", "8"}
    found = report["agreement"]
    assert found["bit_exact"] == found["images"] == found["same_decision"] > 0
    assert "Several cameras" in (out / "multicamera.md").read_text()
    assert "Agreement" in capsys.readouterr().out
