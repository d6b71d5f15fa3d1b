"""How well a bundle separates good from defective parts on its category's test split.

:func:`evaluate` runs the lean runtime (the same ``Inspector`` a station uses) over the test split
and reports image AUROC, pixel AUROC and AUPRO (to 30 % FPR, MVTec AD) for every head, for the
fused result, and per defect type. A per-defect metric compares that defect's images with all good
test images; its pixel metrics use those same images. Per-head image metrics use the head's raw
score, per-head pixel metrics the head's own anomaly map; fused metrics use the fused probability
and the fused probability map. ``autoweld-eval`` is its command line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from autoweld.evaluation.metrics import aupro, auroc, pixel_auroc

__all__ = ["Metrics", "evaluate", "format_table", "fusion_summary", "spread_samples"]

log = logging.getLogger(__name__)


@dataclass
class Metrics:
    """Image AUROC, pixel AUROC and AUPRO; None where undefined (e.g. only one class)."""

    image_auroc: float | None
    pixel_auroc: float | None
    aupro: float | None
    n_images: int = 0


def _safe(metric: Any, *args: Any) -> float | None:
    try:
        value = float(metric(*args))
    except ValueError as error:
        log.debug("metric undefined: %s", error)
        return None
    return value if math.isfinite(value) else None


def _metrics(
    scores: np.ndarray, labels: np.ndarray, maps: list[np.ndarray], masks: list[np.ndarray]
) -> Metrics:
    return Metrics(
        image_auroc=_safe(auroc, scores, labels),
        pixel_auroc=_safe(pixel_auroc, maps, masks),
        aupro=_safe(aupro, maps, masks),
        n_images=len(scores),
    )


@dataclass
class _Inspected:
    """What the inspection pass collected, per image that was inspected without error."""

    heads: list[str]
    scores: dict[str, list[float]]  # per head and "fused"
    maps: dict[str, list[np.ndarray]]  # per head and "fused"
    labels: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def empty(cls, heads: list[str]) -> _Inspected:
        names = heads + ["fused"]
        return cls(heads, {name: [] for name in names}, {name: [] for name in names})

    def add(self, sample: Any, result: Any) -> None:
        if result.error is not None:
            self.failed.append({"path": str(sample.path), "error": result.error})
            return
        self.labels.append(int(sample.label))
        self.defect_types.append(sample.defect_type)
        self.masks.append(sample.load_mask())
        self.scores["fused"].append(result.probability)
        self.maps["fused"].append(result.anomaly_map)
        for name in self.heads:
            self.scores[name].append(result.scores[name])
            self.maps[name].append(result.head_maps[name])


def evaluate(
    bundle: str | Path,
    data_root: str | Path | None = None,
    *,
    limit: int | None = None,
    providers: Sequence[str] = ("cpu",),
    threads: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    require_signed: bool | None = None,
    server: str | None = None,
    server_timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Evaluate a bundle on its category's test split; returns the JSON-ready report.

    ``limit`` keeps at most that many test images, taken evenly across good and each defect type
    so that every metric stays defined. Images that fail to inspect are listed under
    ``"failed"`` and left out of the metrics. ``server`` (grpc://HOST:PORT[/MODEL]) scores
    through a Triton server instead of in process (docs/serving.md).
    """
    from autoweld.serving.client import open_inspector

    if limit is not None and limit < 2:
        raise ValueError(f"--limit must be >= 2, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inspector = open_inspector(
        bundle,
        server=server,
        server_timeout_s=server_timeout_s,
        providers=providers,
        threads=threads,
        require_signed=require_signed,
    )
    from autoweld.data import load_category  # after the bundle check: usage errors come first

    category = load_category(inspector.bundle.category, data_root)
    samples = list(category.test)
    if limit is not None and limit < len(samples):
        samples = spread_samples(samples, limit)
    inspected = _Inspected.empty(list(inspector.heads))
    with (
        inspector,
        tqdm(total=len(samples), desc="inspecting", unit="img", disable=not progress) as bar,
    ):
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = [s.load_image() for s in chunk]
            results = inspector.inspect_batch(images, keep_head_maps=True)
            for sample, result in zip(chunk, results, strict=True):
                inspected.add(sample, result)
            bar.update(len(chunk))
    report: dict[str, Any] = {
        "bundle": str(bundle),
        "bundle_sha256": inspector.bundle.sha256,
        "category": category.name,
        "n_images": len(inspected.labels),
        "fused": None,
        "models": {},
        "per_defect": {},
        "failed": inspected.failed,
    }
    _add_metrics(report, inspected, progress)
    report["fusion"] = fusion_summary(report, dict(inspector.bundle.fusion_weights))
    return report


def fusion_summary(report: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    """Which head the fusion relies on (the largest weight), the best single head by test image
    AUROC, and how far the fused result is above (or below) it."""
    relies_on = max(weights, key=lambda name: weights[name]) if weights else None
    by_auroc = {
        name: m["image_auroc"]
        for name, m in report["models"].items()
        if m["image_auroc"] is not None
    }
    best = max(by_auroc, key=lambda name: by_auroc[name]) if by_auroc else None
    fused = report["fused"]["image_auroc"] if report["fused"] else None
    gain = fused - by_auroc[best] if best is not None and fused is not None else None
    return {
        "weights": {name: float(w) for name, w in weights.items()},
        "relies_on": relies_on,
        "best_single_head": best,
        "fused_minus_best_head_image_auroc": gain,
    }


def _add_metrics(report: dict[str, Any], inspected: _Inspected, progress: bool) -> None:
    """Fill the report's ``models``, ``fused`` and ``per_defect`` metrics."""
    maps, masks, defect_types = inspected.maps, inspected.masks, inspected.defect_types
    label_array = np.array(inspected.labels, dtype=np.int64)
    score_arrays = {name: np.array(values) for name, values in inspected.scores.items()}
    names = inspected.heads + ["fused"]
    for name in tqdm(names, desc="metrics", unit="model", disable=not progress):
        metrics = asdict(_metrics(score_arrays[name], label_array, maps[name], masks))
        if name == "fused":
            report["fused"] = metrics
        else:
            report["models"][name] = metrics
    good = np.flatnonzero(label_array == 0)
    for defect in sorted(set(defect_types) - {"good"}):
        chosen = np.concatenate([good, [i for i, d in enumerate(defect_types) if d == defect]])
        chosen = chosen.astype(np.int64)
        metrics = _metrics(
            score_arrays["fused"][chosen],
            label_array[chosen],
            [maps["fused"][i] for i in chosen],
            [masks[i] for i in chosen],
        )
        report["per_defect"][defect] = asdict(metrics)


def spread_samples(samples: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` samples, round-robin over defect types (good first), order kept."""
    groups: dict[str, list[Any]] = {}
    for sample in samples:
        groups.setdefault(sample.defect_type, []).append(sample)
    order = sorted(groups, key=lambda d: (d != "good", d))
    picked: list[Any] = []
    depth = 0
    while len(picked) < limit:
        added = False
        for defect in order:
            if depth < len(groups[defect]) and len(picked) < limit:
                picked.append(groups[defect][depth])
                added = True
        if not added:
            break
        depth += 1
    keep = {id(s) for s in picked}
    return [s for s in samples if id(s) in keep]


def _fmt(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "   n/a"


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table for people."""
    rows = [(name, m) for name, m in report["models"].items()]
    rows.append(("fused", report["fused"]))
    rows += [(f"  {defect}", m) for defect, m in report["per_defect"].items()]
    width = max(len(name) for name, _ in rows) + 2
    lines = [
        f"{report['category']}: {report['n_images']} test images, bundle {report['bundle_sha256'][:12]}",
        f"{'':<{width}}{'image AUROC':>12}{'pixel AUROC':>13}{'AUPRO':>9}{'images':>8}",
    ]
    for i, (name, m) in enumerate(rows):
        if i == len(report["models"]) + 1:
            lines.append("per defect type (fused; that defect's images vs all good images):")
        lines.append(
            f"{name:<{width}}{_fmt(m['image_auroc']):>12}{_fmt(m['pixel_auroc']):>13}"
            f"{_fmt(m['aupro']):>9}{m['n_images']:>8}"
        )
    fusion = report.get("fusion")
    if fusion:
        weights = ", ".join(f"{n} {w:.3f}" for n, w in fusion["weights"].items())
        gain = fusion["fused_minus_best_head_image_auroc"]
        lines.append(
            f"fusion weights {weights}; relies on {fusion['relies_on']}; best single head "
            f"{fusion['best_single_head']}"
            + (f" (fused - best head image AUROC {gain:+.4f})" if gain is not None else "")
        )
    if report["failed"]:
        lines.append(f"{len(report['failed'])} image(s) could not be inspected:")
        lines += [f"  {f['path']}: {f['error']}" for f in report["failed"][:10]]
    return "\n".join(lines)
