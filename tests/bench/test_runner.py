"""The bench's measurement and report on the tiny ONNX bundle (runtime side only, no torch)."""

import json

import numpy as np
import pytest
from bench_helpers import slow_first_append

from autoweld.bench.runner import STAGES, BenchConfig, load_images, measure_side, run_bench
from autoweld.bench.sink import StationSink
from autoweld.bundle import load_bundle
from autoweld.cli.bench import main
from autoweld.runtime.inspector import Inspector

SUMMARY_KEYS = {"n", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "min_ms"}


def _check_summary(summary: dict, n: int) -> None:
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n"] == n
    assert 0 <= summary["min_ms"] <= summary["p50_ms"] <= summary["p95_ms"]
    assert summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]


def test_measure_side_times_every_stage_inside_end_to_end(tiny_bundle, image_dir):
    images = load_images(BenchConfig(bundle=tiny_bundle, images=image_dir))
    assert len(images) == 5 and all(data[:4] == b"\x89PNG" for _, data in images)
    # a 1 s PLC timeout (0.6 s per record): the exact counts below hold even where a commit
    # stalls past the 50 ms default's 30 ms (a late record is written twice: PASS, then FAIL)
    sink = StationSink("d" * 64, plc_timeout_s=1.0)
    with Inspector(tiny_bundle, threads=1) as inspector, sink as station:
        run = measure_side("ours", inspector.inspect_batch, station, images, 7, 2, 3, False)
        written = station.ledger.count()
    assert set(run.stage_ms) == set(STAGES)
    assert all(len(v) == 7 for v in run.stage_ms.values())
    assert len(run.end_to_end_ms) == 7
    # every stage ran inside its inspection: the stages add up to no more than end to end
    per_image = np.sum([run.stage_ms[s] for s in STAGES], axis=0)
    assert np.all(per_image <= np.asarray(run.end_to_end_ms) * 1.001 + 1e-3)
    assert np.all(np.asarray(run.stage_ms["engine"]) > 0)
    # 2 warm-up + 7 timed + one warm-up batch of 3 + max(2, ceil(7/2/3)) = 2 batches of 3
    assert written == 2 + 7 + 3 + 6
    assert run.records == 7 + 6 and run.plc_delivered == 13 and run.failed == 0
    assert set(run.throughput) == {"batch_1_images_per_s", "batch_3_images_per_s"}
    assert all(v > 0 for v in run.throughput.values())
    # one outcome per distinct image, and the defects score higher than the normal images
    assert sorted(run.outcomes) == list(range(5))
    names = [name for name, _ in images]
    normal = [run.outcomes[i]["probability"] for i, n in enumerate(names) if "good" in n]
    defect = [run.outcomes[i]["probability"] for i, n in enumerate(names) if "defect" in n]
    assert min(defect) > max(normal)


def test_run_bench_without_reference_reports_the_documented_keys(tiny_bundle, image_dir):
    config = BenchConfig(
        bundle=tiny_bundle,
        images=image_dir,
        n=6,
        warmup=1,
        batch=2,
        threads=1,
        reference=False,
        cold_repeats=2,
        progress=False,
    )
    result = run_bench(config, command="autoweld-bench --test")
    report = json.loads(json.dumps(result.report))  # JSON-able as a whole
    for key in (
        "stages",
        "end_to_end",
        "cold_start_ms",
        "peak_rss_mb",
        "reference",
        "speedup_median",
        "throughput",
        "machine",
        "providers",
        "versions",
        "bundle",
    ):
        assert key in report, key
    assert set(report["stages"]) == set(STAGES)
    for summary in report["stages"].values():
        _check_summary(summary, 6)
    _check_summary(report["end_to_end"], 6)
    assert report["reference"] is None and report["speedup_median"] is None
    assert report["goals"] == {} and report["agreement"] is None
    assert report["bundle"]["sha256"] == load_bundle(tiny_bundle).sha256
    assert report["providers"] == ["CPUExecutionProvider"]
    assert report["machine"]["threads"] == 1 and report["machine"]["logical_cores"] >= 1
    assert report["machine"]["cpu"]
    assert report["versions"]["onnxruntime"] and report["versions"]["numpy"]
    assert report["inspections"]["failed_inspections"] == 0
    assert report["bottleneck"] in STAGES
    # the cold start: two new processes, the median of them, and no torch in a runtime process
    runs = report["cold_start_runs"]
    assert len(runs) == 2 and not any(r["torch_loaded"] for r in runs)
    assert report["cold_start_ms"] == pytest.approx(
        float(np.median([r["cold_start_ms"] for r in runs])), abs=0.01
    )
    for r in runs:
        assert r["cold_start_ms"] >= r["import_ms"] + r["load_ms"] + r["first_inspection_ms"]
    assert 10 < report["peak_rss_mb"] < 4096
    # raw samples for the plot match the summaries
    samples = result.samples["ours"]
    assert max(samples["end_to_end"]) == pytest.approx(report["end_to_end"]["max_ms"], abs=1e-3)
    assert "reference" not in result.samples


def test_cli_writes_json_markdown_and_plot(tiny_bundle, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            "--bundle",
            str(tiny_bundle),
            "--images",
            str(image_dir),
            "-n",
            "4",
            "--warmup",
            "1",
            "--batch",
            "2",
            "--threads",
            "1",
            "--cold-repeats",
            "1",
            "--no-reference",
            "--no-progress",
            "--json",
            str(out / "r.json"),
            "--markdown",
            str(out / "r.md"),
            "--plot",
            str(out / "r.png"),
        ]
    )
    assert status == 0
    report = json.loads((out / "r.json").read_text())
    assert report["command"].startswith("autoweld-bench --bundle")
    table = (out / "r.md").read_text()
    assert "| **end to end** |" in table and "sign + write record" in table
    assert f"{report['end_to_end']['p50_ms']:.2f}"[:3] in table
    assert capsys.readouterr().out.strip() == table.strip()
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bundle", "/nonexistent"], "manifest.json"),
        (["-n", "0"], "must be >= 1"),
        (["--plot", "x.svg"], "must end in .png"),
        (["--threads", "two"], "not an integer"),
    ],
)
def test_cli_usage_errors(tiny_bundle, args, message, capsys):
    argv = ["--bundle", str(tiny_bundle), *args] if args[0] != "--bundle" else args
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_config_checks_its_arguments(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match="images"):
        BenchConfig(bundle=tiny_bundle, images=tmp_path / "missing")
    with pytest.raises(ValueError, match="batch"):
        BenchConfig(bundle=tiny_bundle, batch=0)
    with pytest.raises(ValueError, match="reference_file"):
        BenchConfig(bundle=tiny_bundle, reference_file=tmp_path / "none.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_images(BenchConfig(bundle=tiny_bundle, images=empty))


def test_bench_package_import_loads_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, autoweld.bench, autoweld.bench.runner, autoweld.bench.report, "
        "autoweld.bench.sink, autoweld.bench.coldstart, autoweld.cli.bench\n"
        "assert 'torch' not in sys.modules\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_late_record_is_counted_and_reported(tiny_bundle, image_dir):
    """A record past its deadline (a stalled disk) is a measurement: counted, shown in the
    report, the run goes on (it once ended a CI run)."""
    from autoweld.bench.report import _late_records

    images = load_images(BenchConfig(bundle=tiny_bundle, images=image_dir))
    # 1 s PLC timeout: 0.6 s per record, which only the slowed one misses
    sink = StationSink("d" * 64, plc_timeout_s=1.0)
    with Inspector(tiny_bundle, threads=1) as inspector, sink as station:
        slow_first_append(station.ledger, 1.0)
        run = measure_side("ours", inspector.inspect_batch, station, images, 4, 0, 2, False)
    assert run.records_late == 1 and run.records == 4 + 4
    assert max(run.stage_ms["record"]) >= 900
    ours = run.to_json()
    assert ours["records_late"] == 1
    report = {"inspections": ours, "reference": {"inspections": {**ours, "records_late": 0}}}
    assert "ours 1 of 8, torch way 0 of 8" in _late_records(report)
    assert _late_records({"inspections": {**ours, "records_late": 0}, "reference": None}) == ""


def test_cold_start_children_may_use_cached_bytecode(monkeypatch, tmp_path):
    """A station's installed package has compiled bytecode; the cold start must not pay for
    compiling autoweld's sources because the developer's shell says PYTHONDONTWRITEBYTECODE."""
    import subprocess

    from autoweld.bench import runner

    seen = []

    def fake_run(command, **kwargs):
        seen.append(kwargs.get("env"))
        return subprocess.CompletedProcess(command, 0, '{"first_result_monotonic": 1e12}\n', "")

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("AUTOWELD_MARKER", "kept")
    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    reports = runner.cold_start("ours", tmp_path, "image.png", 2, 2, progress=False)
    assert len(reports) == 2 and len(seen) == 2
    for env in seen:
        assert env is not None and "PYTHONDONTWRITEBYTECODE" not in env
        assert env["AUTOWELD_MARKER"] == "kept"  # the rest of the environment is passed on
