"""``autoweld-eval``: how well a bundle separates good from defective parts on the test split.

Runs the lean runtime (the same ``Inspector`` a station uses) over the category's test split and
reports image AUROC, pixel AUROC and AUPRO (to 30 % FPR, MVTec AD) for every head, for the fused
result, and per defect type. A per-defect metric compares that defect's images with all good test
images; its pixel metrics use those same images. Per-head image metrics use the head's raw score,
per-head pixel metrics the head's own anomaly map; fused metrics use the fused probability and the
fused probability map. Exit status 0 on success, 1 when images failed to inspect, 2 for usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from autoweld.cli import configure_logging

__all__ = ["Metrics", "evaluate", "main"]

log = logging.getLogger("autoweld.eval")


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
    from autoweld.runtime.metrics import aupro, auroc, pixel_auroc

    return Metrics(
        image_auroc=_safe(auroc, scores, labels),
        pixel_auroc=_safe(pixel_auroc, maps, masks),
        aupro=_safe(aupro, maps, masks),
        n_images=len(scores),
    )


def evaluate(
    bundle: str | Path,
    data_root: str | Path | None = None,
    *,
    limit: int | None = None,
    providers: Sequence[str] = ("cpu",),
    threads: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a bundle on its category's test split; returns the JSON-ready report.

    ``limit`` keeps at most that many test images, taken evenly across good and each defect type
    so that every metric stays defined. Images that fail to inspect are listed under
    ``"failed"`` and left out of the metrics.
    """
    from autoweld.runtime.inspector import Inspector

    if limit is not None and limit < 2:
        raise ValueError(f"--limit must be >= 2, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inspector = Inspector(bundle, providers=providers, threads=threads)
    from autoweld.data import load_category  # after the bundle check: usage errors come first

    category = load_category(inspector.bundle.category, data_root)
    samples = list(category.test)
    if limit is not None and limit < len(samples):
        samples = _spread(samples, limit)
    heads = list(inspector.heads)

    scores: dict[str, list[float]] = {name: [] for name in heads + ["fused"]}
    maps: dict[str, list[np.ndarray]] = {name: [] for name in heads + ["fused"]}
    labels: list[int] = []
    masks: list[np.ndarray] = []
    defect_types: list[str] = []
    failed: list[dict[str, str]] = []
    with (
        inspector,
        tqdm(total=len(samples), desc="inspecting", unit="img", disable=not progress) as bar,
    ):
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = [s.load_image() for s in chunk]
            results = inspector.inspect_batch(images, keep_head_maps=True)
            for sample, result in zip(chunk, results, strict=True):
                if result.error is not None:
                    failed.append({"path": str(sample.path), "error": result.error})
                    continue
                labels.append(int(sample.label))
                defect_types.append(sample.defect_type)
                masks.append(sample.load_mask())
                scores["fused"].append(result.probability)
                maps["fused"].append(result.anomaly_map)
                for name in heads:
                    scores[name].append(result.scores[name])
                    maps[name].append(result.head_maps[name])
            bar.update(len(chunk))

    label_array = np.array(labels, dtype=np.int64)
    score_arrays = {name: np.array(values) for name, values in scores.items()}
    report: dict[str, Any] = {
        "bundle": str(bundle),
        "bundle_sha256": inspector.bundle.sha256,
        "category": category.name,
        "n_images": len(labels),
        "fused": None,
        "models": {},
        "per_defect": {},
        "failed": failed,
    }
    evaluated = tqdm(heads + ["fused"], desc="metrics", unit="model", disable=not progress)
    for name in evaluated:
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
    return report


def _spread(samples: list[Any], limit: int) -> list[Any]:
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
    if report["failed"]:
        lines.append(f"{len(report['failed'])} image(s) could not be inspected:")
        lines += [f"  {f['path']}: {f['error']}" for f in report["failed"][:10]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="autoweld-eval",
        description="Image AUROC, pixel AUROC and AUPRO of a bundle on its test split.",
    )
    parser.add_argument("--bundle", required=True, help="bundle directory")
    parser.add_argument("--data-root", help="data root (MVTec AD layout; weld is generated)")
    parser.add_argument("--json", dest="json_path", help="also write the report as JSON here")
    parser.add_argument("--limit", type=int, help="evaluate at most N test images (spread evenly)")
    parser.add_argument(
        "--providers",
        nargs="+",
        default=["cpu"],
        help="engines in order of preference: best, tensorrt, cuda, cpu or ORT provider names",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per engine call")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        report = evaluate(
            args.bundle,
            args.data_root,
            limit=args.limit,
            providers=args.providers,
            threads=args.threads,
            batch_size=args.batch_size,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"autoweld-eval: error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["failed"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
