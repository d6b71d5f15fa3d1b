"""The measurement behind ``autoweld-bench``: both sides, stage by stage, in one run.

Order of work: load the images (encoded bytes in memory, so file I/O is not timed); measure the
runtime ("ours": :class:`~autoweld.runtime.inspector.Inspector`) — warm-up, ``n`` inspections at
batch 1, then throughput at ``batch``; then the same for the torch way
(:class:`~autoweld.bench.torch_way.TorchWay`, imported only now, so torch is not even loaded
while ours is measured); then the cold starts, alternating sides, each a new process
(:mod:`autoweld.bench.coldstart`). Every inspection of both sides ends at the same station: PLC
signal, then a signed ledger record (:class:`~autoweld.bench.sink.StationSink`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from autoweld.bench.sink import StationSink
from autoweld.bench.stats import median, ratio, summarize

__all__ = [
    "GOALS",
    "STAGES",
    "BenchConfig",
    "BenchResult",
    "SideRun",
    "cold_start",
    "load_images",
    "measure_side",
    "run_bench",
]

log = logging.getLogger(__name__)

#: Stages in the order an inspection runs them; the keys of ``stages`` in the JSON report.
STAGES = ("decode", "preprocess", "engine", "knn", "scoring", "record", "plc")
#: What each stage key means, for the table and the plot.
STAGE_LABELS = {
    "decode": "decode",
    "preprocess": "preprocess",
    "engine": "engine",
    "knn": "kNN",
    "scoring": "scoring + fusion",
    "record": "sign + write record",
    "plc": "PLC send",
}
#: Issue 7's goals, as ratios measured in one run.
GOALS = {"speedup_median": 3.0, "cold_start_speedup": 5.0, "peak_rss_ratio": 1.0 / 3.0}

ImageList = list[tuple[str, bytes]]  # (file path, encoded bytes)
InspectBatch = Callable[[Sequence[bytes]], list[Any]]


@dataclass
class BenchConfig:
    """What ``autoweld-bench`` was asked to do (see ``autoweld-bench --help``)."""

    bundle: Path
    images: Path | None = None
    category: str = "weld"
    data_root: Path | None = None
    n: int = 200
    warmup: int = 20
    batch: int = 8
    threads: int = 2
    ledger: str | None = None
    plc: str | None = None
    reference: bool = True
    reference_file: Path | None = None
    cold_repeats: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        self.bundle = Path(self.bundle)
        if not (self.bundle / "manifest.json").is_file():
            raise ValueError(f"bundle: {self.bundle} has no manifest.json")
        for name, low in (("n", 1), ("warmup", 0), ("batch", 1), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.cold_repeats, bool) or not isinstance(self.cold_repeats, int):
            raise ValueError(f"cold_repeats must be an integer >= 0, got {self.cold_repeats!r}")
        if self.cold_repeats < 0:
            raise ValueError(f"cold_repeats must be an integer >= 0, got {self.cold_repeats!r}")
        if self.images is not None:
            self.images = Path(self.images)
            if not self.images.is_dir():
                raise ValueError(f"images: {self.images} is not a directory")
        if self.reference_file is not None:
            self.reference_file = Path(self.reference_file)
            if not self.reference_file.is_file():
                raise ValueError(f"reference_file: {self.reference_file} is not a file")


@dataclass
class SideRun:
    """What one side measured in this process: per-stage samples (ms), end-to-end samples (ms),
    throughput (images/s) at batch 1 and at ``batch``, and each distinct image's outcome."""

    name: str
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    end_to_end_ms: list[float] = field(default_factory=list)
    throughput: dict[str, float] = field(default_factory=dict)
    outcomes: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    plc_delivered: int = 0
    records: int = 0
    records_late: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": {s: summarize(v).to_json() for s, v in self.stage_ms.items() if v},
            "end_to_end": summarize(self.end_to_end_ms).to_json(),
            "throughput": {k: round(v, 3) for k, v in self.throughput.items()},
            "failed_inspections": self.failed,
            "errors": sorted(set(self.errors))[:5],
            "plc_delivered": self.plc_delivered,
            "records_written": self.records,
            "records_late": self.records_late,
        }


# ---- inputs ----------------------------------------------------------------------------------


def load_images(config: BenchConfig) -> ImageList:
    """The benchmark's images as encoded bytes: every image file in ``config.images``, or the
    test split of ``config.category`` (``weld`` is generated on first use)."""
    from autoweld.data import IMAGE_SUFFIXES, load_category

    if config.images is not None:
        paths = sorted(
            p for p in config.images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not paths:
            raise ValueError(f"images: {config.images} holds no image files ({IMAGE_SUFFIXES})")
    else:
        category = load_category(config.category, config.data_root)
        paths = [sample.path for sample in category.test]
        if not paths:
            raise ValueError(f"category {config.category!r} has no test images")
    return [(str(p), Path(p).read_bytes()) for p in paths]


# ---- one side, warm, in this process ----------------------------------------------------------


def _record(run: SideRun, result: Any, station: Any) -> dict[str, float]:
    timings = station.deliver(result)
    run.records += 1
    run.records_late += timings.late
    run.plc_delivered += bool(timings.delivered)
    if result.error is not None:
        run.failed += 1
        run.errors.append(str(result.error))
    return {"record": timings.record_ms, "plc": timings.plc_ms}


def measure_side(
    name: str,
    inspect_batch: InspectBatch,
    station: Any,
    images: ImageList,
    n: int,
    warmup: int,
    batch: int,
    progress: bool = True,
) -> SideRun:
    """Warm-up, then ``n`` inspections at batch 1 (image ``i % len(images)``), each timed end to
    end and per stage, then throughput at ``batch``.

    ``inspect_batch`` maps encoded images to results with ``timings_ms`` (per stage),
    ``decision``, ``probability``, ``scores``, ``probabilities``, ``threshold`` and ``error``;
    ``station`` has ``deliver(result)`` returning record/PLC timings.
    """
    if not images:
        raise ValueError("images must not be empty")
    run = SideRun(name=name, stage_ms={stage: [] for stage in STAGES})
    for i in tqdm(range(warmup), desc=f"{name}: warm-up", unit="img", disable=not progress):
        station.deliver(inspect_batch([images[i % len(images)][1]])[0])

    loop_start = time.perf_counter()
    for i in tqdm(range(n), desc=f"{name}: batch 1", unit="img", disable=not progress):
        index = i % len(images)
        start = time.perf_counter()
        result = inspect_batch([images[index][1]])[0]
        station_ms = _record(run, result, station)
        run.end_to_end_ms.append((time.perf_counter() - start) * 1e3)
        for stage, ms in {**result.timings_ms, **station_ms}.items():
            if stage in run.stage_ms:
                run.stage_ms[stage].append(float(ms))
        if index not in run.outcomes:
            run.outcomes[index] = {
                "decision": result.decision,
                "probability": result.probability,
                "scores": dict(result.scores),
            }
    run.throughput["batch_1_images_per_s"] = n / (time.perf_counter() - loop_start)

    # Throughput at `batch`: one warm-up batch, then enough batches for about n/2 images.
    batches = max(2, math.ceil(n / 2 / batch))
    chunks = [
        [images[(b * batch + j) % len(images)][1] for j in range(batch)] for b in range(batches)
    ]
    for result in inspect_batch(chunks[0]):
        station.deliver(result)
    start = time.perf_counter()
    for chunk in tqdm(chunks, desc=f"{name}: batch {batch}", unit="batch", disable=not progress):
        for result in inspect_batch(chunk):
            _record(run, result, station)
    run.throughput[f"batch_{batch}_images_per_s"] = batches * batch / (time.perf_counter() - start)
    return run


# ---- cold start: a new process per run ----------------------------------------------------------


def cold_start(
    side: str,
    bundle: Path,
    image_path: str,
    threads: int,
    repeats: int,
    reference_file: Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Start ``repeats`` new processes (:mod:`autoweld.bench.coldstart`) for ``side``; each
    report gets ``cold_start_ms``: from just before the process was started to its first
    result.

    The children run without ``PYTHONDONTWRITEBYTECODE``: an installed package has its
    bytecode compiled at install time, so a station never compiles autoweld's sources at start;
    a source checkout with that variable set would (30-40 ms of every cold start here)."""
    command = [
        sys.executable,
        "-m",
        "autoweld.bench.coldstart",
        "--side",
        side,
        "--bundle",
        str(bundle),
        "--image",
        image_path,
        "--threads",
        str(threads),
    ]
    if reference_file is not None:
        command += ["--reference", str(reference_file)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    reports = []
    for _ in tqdm(range(repeats), desc=f"{side}: cold start", unit="proc", disable=not progress):
        started = time.monotonic()
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, check=False, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"cold start of {side} failed (exit {done.returncode}): {done.stderr[-2000:]}"
            )
        report = json.loads(done.stdout.strip().splitlines()[-1])
        report["cold_start_ms"] = (report["first_result_monotonic"] - started) * 1e3
        reports.append(report)
    return reports


def _cold_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    if not reports:
        return {"cold_start_ms": None, "peak_rss_mb": None, "cold_start_runs": []}
    return {
        "cold_start_ms": round(median([r["cold_start_ms"] for r in reports]), 2),
        "peak_rss_mb": round(median([r["peak_rss_kb"] for r in reports]) / 1024.0, 2),
        "cold_start_runs": [
            {
                "cold_start_ms": round(r["cold_start_ms"], 2),
                "import_ms": round(r["import_ms"], 2),
                "load_ms": round(r["load_ms"], 2),
                "first_inspection_ms": round(r["first_ms"], 2),
                "peak_rss_mb": round(r["peak_rss_kb"] / 1024.0, 2),
                "torch_loaded": r["torch_loaded"],
                "decision": r["decision"],
            }
            for r in reports
        ],
    }


# ---- the machine --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, the threads each side used, load, OS and Python."""
    from autoweld import native

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "threads": threads,
        "avx2_fma": bool(native.has_avx2_fma()),
        "load_average_1_5_15": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str | None]:
    """Installed versions (read from package metadata: torch is not imported for this)."""
    out: dict[str, str | None] = {}
    for name in ("autoweld", "numpy", "onnxruntime", "opencv-python-headless", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---- the whole run ------------------------------------------------------------------------------


def _agreement(ours: SideRun, reference: SideRun) -> dict[str, Any]:
    common = sorted(set(ours.outcomes) & set(reference.outcomes))
    prob_diffs, score_diffs, same = [], [], 0
    for index in common:
        a, b = ours.outcomes[index], reference.outcomes[index]
        same += a["decision"] == b["decision"]
        if math.isfinite(a["probability"]) and math.isfinite(b["probability"]):
            prob_diffs.append(abs(a["probability"] - b["probability"]))
        for head, score in a["scores"].items():
            if head in b["scores"]:
                other = b["scores"][head]
                score_diffs.append(abs(score - other) / max(abs(other), 1e-12))
    return {
        "images_compared": len(common),
        "same_decision": same,
        "max_abs_probability_diff": round(max(prob_diffs), 6) if prob_diffs else None,
        "max_rel_score_diff": round(max(score_diffs), 6) if score_diffs else None,
        "note": "the torch way preprocesses with OpenCV + numpy, ours with the native kernels "
        "(within one grey level of each other), so scores agree closely, not bit for bit",
    }


def _goal(value: float | None, goal: float, higher_is_better: bool) -> dict[str, Any]:
    met = None
    if value is not None:
        met = value >= goal if higher_is_better else value <= goal
    return {"value": None if value is None else round(value, 3), "goal": round(goal, 4), "met": met}


@dataclass
class BenchResult:
    """The report (the ``autoweld-bench --json`` object) and the raw samples behind it:
    side (``"ours"``, ``"reference"``) -> stage or ``"end_to_end"`` -> milliseconds."""

    report: dict[str, Any]
    samples: dict[str, dict[str, list[float]]]


def run_bench(config: BenchConfig, command: str | None = None) -> BenchResult:
    """Run the benchmark (see the module docstring)."""
    images = load_images(config)
    log.info("%d images, %d inspections per side", len(images), config.n)
    ours, context = _measure_ours(config, images)
    reference = reference_file = None
    if config.reference:
        reference, context["model_source"], reference_file = _measure_reference(
            config, images, context["bundle"].sha256
        )
    cold = _cold_starts(config, images[0][0], reference_file)
    report = _report(config, command, images, ours, cold["ours"], context)
    if reference is not None:
        _add_reference(report, config, ours, reference, cold["reference"], context)
    report["bottleneck"] = max(report["stages"], key=lambda s: report["stages"][s]["p50_ms"])
    samples = {"ours": {**ours.stage_ms, "end_to_end": ours.end_to_end_ms}}
    if reference is not None:
        samples["reference"] = {**reference.stage_ms, "end_to_end": reference.end_to_end_ms}
    return BenchResult(report=report, samples=samples)


def _measure_ours(config: BenchConfig, images: list[Any]) -> tuple[SideRun, dict[str, Any]]:
    """The runtime's side; also what the report says of the bundle, engine and station."""
    from autoweld.runtime.inspector import Inspector

    with Inspector(config.bundle, threads=config.threads) as inspector:
        bundle = inspector.bundle
        context: dict[str, Any] = {
            "bundle": bundle,
            "providers": inspector.engine.active_providers,
            "model_source": None,
        }
        with StationSink(bundle.sha256, config.ledger, config.plc) as station:
            context["quality"] = {
                "ledger": station.ledger_description,
                "plc": station.plc_description,
            }
            ours = _measure("ours", inspector.inspect_batch, station, images, config)
    return ours, context


def _measure(
    name: str, inspect_batch: Any, station: StationSink, images: list[Any], config: BenchConfig
) -> SideRun:
    return measure_side(
        name, inspect_batch, station, images, config.n, config.warmup, config.batch, config.progress
    )


def _measure_reference(
    config: BenchConfig, images: list[Any], bundle_sha256: str
) -> tuple[SideRun, str, Path | None]:
    """The torch way's side: its run, where its model came from, and its reference file."""
    from autoweld.bench.torch_way import TorchWay

    way = TorchWay(config.bundle, config.reference_file, threads=config.threads)
    model_source, reference_file = way.model_source, way.reference_file
    with StationSink(bundle_sha256, config.ledger, config.plc) as station:
        reference = _measure("torch way", way.inspect_batch, station, images, config)
    del way
    return reference, model_source, reference_file


def _cold_starts(
    config: BenchConfig, cold_image: Any, reference_file: Path | None
) -> dict[str, list[dict[str, Any]]]:
    """Cold starts per side. They alternate sides, so a load spike on this machine hits both
    alike."""
    cold: dict[str, list[dict[str, Any]]] = {"ours": [], "reference": []}
    sides = ["ours", "reference"] if config.reference else ["ours"]
    for _ in tqdm(range(config.cold_repeats), desc="cold starts", disable=not config.progress):
        for side in sides:
            cold[side] += cold_start(
                side,
                config.bundle,
                cold_image,
                config.threads,
                1,
                reference_file=reference_file if side == "reference" else None,
                progress=False,
            )
    return cold


def _report(
    config: BenchConfig,
    command: str | None,
    images: list[Any],
    ours: SideRun,
    cold_ours: list[dict[str, Any]],
    context: dict[str, Any],
) -> dict[str, Any]:
    """The report of the runtime's side; the reference's keys are filled by _add_reference."""
    bundle = context["bundle"]
    ours_json = ours.to_json()
    return {
        "schema": 1,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": {
            "n": config.n,
            "warmup": config.warmup,
            "batch": config.batch,
            "threads": config.threads,
            "cold_repeats": config.cold_repeats,
            "images": str(config.images) if config.images else f"category:{config.category}",
            "n_images": len(images),
            "image_shape_first": _shape(images[0][1]),
        },
        "stages": ours_json.pop("stages"),
        "end_to_end": ours_json.pop("end_to_end"),
        "throughput": ours_json.pop("throughput"),
        **_cold_summary(cold_ours),
        "inspections": ours_json,
        "reference": None,
        "speedup_median": None,
        "ratios": {},
        "goals": {},
        "agreement": None,
        "machine": machine_info(config.threads),
        "providers": context["providers"],
        "versions": versions(),
        "bundle": {
            "path": str(config.bundle),
            "sha256": bundle.sha256,
            "category": bundle.category,
            "backbone": bundle.manifest.backbone.name if bundle.manifest.backbone else None,
            "image_size": bundle.preprocess.size,
            "heads": list(bundle.heads),
            "onnx_sha256": _sha256(bundle.onnx_path),
        },
        "quality": context["quality"],
        "stage_labels": STAGE_LABELS,
    }


def _add_reference(
    report: dict[str, Any],
    config: BenchConfig,
    ours: SideRun,
    reference: SideRun,
    cold_reference: list[dict[str, Any]],
    context: dict[str, Any],
) -> None:
    """The torch way's side, the ratios of ours to it, the goals and the agreement."""
    ref_json = reference.to_json()
    report["reference"] = {
        "what": "torch eager model, torch.cdist + topk, OpenCV + numpy preprocessing, "
        "torch interpolate + blur for maps",
        "model": context["model_source"],
        "stages": ref_json.pop("stages"),
        "end_to_end": ref_json.pop("end_to_end"),
        "throughput": ref_json.pop("throughput"),
        **_cold_summary(cold_reference),
        "inspections": ref_json,
    }
    ref = report["reference"]
    speedup = ratio(ref["end_to_end"]["p50_ms"], report["end_to_end"]["p50_ms"])
    cold_ratio = ratio(ref["cold_start_ms"], report["cold_start_ms"])
    rss_ratio = ratio(report["peak_rss_mb"], ref["peak_rss_mb"])
    report["speedup_median"] = None if speedup is None else round(speedup, 3)
    report["ratios"] = {
        "speedup_median": report["speedup_median"],
        "speedup_p95": _round(ratio(ref["end_to_end"]["p95_ms"], report["end_to_end"]["p95_ms"])),
        "speedup_p99": _round(ratio(ref["end_to_end"]["p99_ms"], report["end_to_end"]["p99_ms"])),
        "cold_start_speedup": _round(cold_ratio),
        "peak_rss_ratio": _round(rss_ratio),
        **{
            f"throughput_batch_{batch}": _round(
                ratio(
                    report["throughput"][f"batch_{batch}_images_per_s"],
                    ref["throughput"][f"batch_{batch}_images_per_s"],
                )
            )
            for batch in (1, config.batch)
        },
        "stage_speedup_p50": {
            stage: _round(ratio(ref["stages"][stage]["p50_ms"], report["stages"][stage]["p50_ms"]))
            for stage in STAGES
            if stage in ref["stages"] and stage in report["stages"]
        },
    }
    report["goals"] = {
        "speedup_median": _goal(speedup, GOALS["speedup_median"], True),
        "cold_start_speedup": _goal(cold_ratio, GOALS["cold_start_speedup"], True),
        "peak_rss_ratio": _goal(rss_ratio, GOALS["peak_rss_ratio"], False),
    }
    report["agreement"] = _agreement(ours, reference)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shape(data: bytes) -> list[int] | None:
    from autoweld.runtime.decode import read_header

    try:
        header = read_header(data)
    except ValueError:
        return None
    return [header.height, header.width, header.channels]
