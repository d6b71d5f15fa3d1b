"""Recipe -> data -> fit -> calibrate -> ONNX + bundle: what ``autoweld-export`` runs.

1. Resolve the recipe (CLI flags override it) and load the category's training images.
2. Split them into a *fit* part (the heads learn from it) and a held-out *validation* part.
3. Fit every head on the fit part.
4. Calibrate on validation normals plus anomalies — labelled images from ``--val-root`` or,
   by default, anomalies synthesised from the validation normals (weld: every defect kind of
   ``synthesize_defect``; other categories: ``synthesize_anomaly``). The test split is never
   touched. Scores come from the torch reference pipeline; Platt per head, fusion weights and
   the decision threshold are fitted on them.
5. Export the ONNX graph (verified against torch) and write the bundle atomically.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

import autoweld
from autoweld import native
from autoweld.bundle import Bundle, bundle_key_from_env, write_bundle
from autoweld.export.onnx_export import DEFAULT_OPSET, export_onnx
from autoweld.export.recipes import Recipe, resolve_recipe
from autoweld.train.backbones import build_backbone
from autoweld.train.calibration import (
    choose_threshold,
    fit_fusion_weights,
    fit_platt,
    platt,
)
from autoweld.train.heads import HeadContext, InspectionGraph, available_heads, build_head
from autoweld.train.reference import TorchReference, save_reference

logger = logging.getLogger(__name__)

__all__ = ["ExportOptions", "ExportResult", "export_category"]

ONNX_FILE = "model.onnx"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_PACKAGES = (
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "opencv-python-headless",
    "scipy",
)


@dataclass
class ExportOptions:
    """Everything ``autoweld-export`` can be told; ``None`` means "as the recipe says"."""

    category: str
    data_root: str | Path | None = None
    out_dir: str | Path = "bundles"
    backbone: str | None = None
    weights: str | Path | None = None
    random_weights: bool = False
    image_size: int | None = None
    models: list[str] | None = None
    seed: int | None = None
    val_root: str | Path | None = None
    coreset_ratio: float | None = None
    coreset_max: int | None = None
    recipe: str | Path | None = None
    opset: int = DEFAULT_OPSET
    save_reference: bool = True
    weld_params: Any = None  # autoweld.data.WeldParams for the built-in weld set (tests: tiny)


@dataclass
class CalibrationSummary:
    """What calibration found, on the calibration data (never the test split)."""

    source: str
    n_normal: int
    n_anomalous: int
    platt: dict[str, tuple[float, float]]
    fusion_weights: dict[str, float]
    threshold: float
    threshold_method: str
    f1: float
    frr: float
    far: float


@dataclass
class ExportResult:
    """The written bundle and what it took."""

    bundle: Bundle
    bundle_dir: Path
    bundle_bytes: int
    reference_path: Path | None
    recipe: Recipe
    graph: InspectionGraph
    calibration: CalibrationSummary
    n_fit: int
    bank_sizes: dict[str, int]
    onnx_max_abs_diff: float
    seconds: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------


def _packages() -> dict[str, str]:
    versions = {"python": platform.python_version(), "autoweld": autoweld.__version__}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _preprocess_all(images: Sequence[np.ndarray], recipe: Recipe, desc: str) -> torch.Tensor:
    size = recipe.image_size
    kwargs = {
        "clahe": recipe.preprocess["clahe"],
        "clip_limit": recipe.preprocess["clip_limit"],
        "tile_grid": tuple(recipe.preprocess["tile_grid"]),
        "sigma": recipe.preprocess["sigma"],
        "mean": recipe.mean,
        "std": recipe.std,
    }
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(tqdm(images, desc=desc, unit="img", leave=False)):
        out[i] = native.preprocess(image, size, **kwargs)
    return torch.from_numpy(out)


def _batches(images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [images[i : i + batch_size] for i in range(0, images.shape[0], batch_size)]


def _read_val_root(val_root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Labelled calibration images: ``VAL_ROOT/good/*`` normal, every other sub-folder anomalous."""
    if not val_root.is_dir():
        raise ValueError(f"val_root: {val_root} is not a directory")
    normals: list[np.ndarray] = []
    anomalies: list[np.ndarray] = []
    for folder in sorted(p for p in val_root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"val_root: cannot read image {path}")
            (normals if folder.name == "good" else anomalies).append(image)
    if not normals or not anomalies:
        raise ValueError(
            f"val_root: {val_root} needs normal images in good/ and anomalous ones in other "
            f"sub-folders (found {len(normals)} normal, {len(anomalies)} anomalous)"
        )
    return normals, anomalies


def _synthesise(
    normals: Sequence[np.ndarray], category: str, per_image: int, seed: int
) -> tuple[list[np.ndarray], list[str]]:
    from autoweld import data

    rng = np.random.default_rng(seed + 7919)
    anomalies: list[np.ndarray] = []
    kinds: list[str] = []
    weld_kinds = list(data.WELD_DEFECT_TYPES)
    for i, image in enumerate(tqdm(normals, desc="synthesise anomalies", unit="img", leave=False)):
        for j in range(per_image):
            if category == "weld":
                kind = weld_kinds[(i * per_image + j) % len(weld_kinds)]
                anomalous, _mask = data.synthesize_defect(image, kind, rng)
            else:
                kind = "synthetic"
                anomalous, _mask = data.synthesize_anomaly(image, rng)
            anomalies.append(anomalous)
            kinds.append(kind)
    return anomalies, kinds


def _score(reference: TorchReference, batches: list[torch.Tensor]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for batch in tqdm(batches, desc="calibration: scoring", unit="batch", leave=False):
        scores, _ = reference.patch_scores(batch)
        for name, values in scores.items():
            parts.setdefault(name, []).append(values.numpy())
    return {name: np.concatenate(v) for name, v in parts.items()}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


# ---------------------------------------------------------------------------------------------


def export_category(options: ExportOptions) -> ExportResult:
    """Fit, calibrate and export the bundle of one category to ``OUT/CATEGORY/``."""
    from autoweld import data

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    head_overrides: dict[str, dict[str, Any]] = {}
    if options.coreset_ratio is not None or options.coreset_max is not None:
        head_overrides["patchcore"] = {
            "coreset_ratio": options.coreset_ratio,
            "coreset_max": options.coreset_max,
        }
    recipe = resolve_recipe(
        options.category,
        recipe=options.recipe,
        backbone=options.backbone,
        image_size=options.image_size,
        models=options.models,
        seed=options.seed,
        head_overrides=head_overrides,
    )
    missing = [m for m in recipe.models if m not in available_heads()]
    if missing:
        raise ValueError(
            f"models: {', '.join(missing)} not implemented in this autoweld "
            f"(available: {', '.join(available_heads())})"
        )
    if "patchcore" in head_overrides and "patchcore" not in recipe.models:
        raise ValueError("--coreset-ratio/--coreset-max need the patchcore model in --models")
    seed = recipe.seed
    out_dir = Path(options.out_dir)
    logger.info("recipe %s, profile %s, models %s", recipe.source, recipe.profile, recipe.models)

    # -- data ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    load_kwargs: dict[str, Any] = {"seed": seed}
    if options.weld_params is not None:
        load_kwargs["weld_params"] = options.weld_params
    category = data.load_category(options.category, data_root=options.data_root, **load_kwargs)
    val_fraction = recipe.calibration["val_fraction"]
    if options.val_root is not None:
        fit_samples = list(category.train)
        val_normal_images, val_anomalous_images = _read_val_root(Path(options.val_root))
        anomaly_kinds: list[str] = []
        source = "val_root"
    else:
        fit_samples, val_samples = data.split_train(category.train, val_fraction, seed)
        if not val_samples:
            raise ValueError(
                f"category {options.category!r}: too few training images to hold out a "
                f"validation part ({len(category.train)} images, val_fraction {val_fraction})"
            )
        val_normal_images = [s.load_image() for s in val_samples]
        val_anomalous_images, anomaly_kinds = _synthesise(
            val_normal_images,
            options.category,
            recipe.calibration["anomalies_per_image"],
            seed,
        )
        source = "synthesised"
    if not fit_samples:
        raise ValueError(f"category {options.category!r}: no training images to fit on")
    fit_images = _preprocess_all(
        [s.load_image() for s in fit_samples], recipe, "preprocess: fit images"
    )
    seconds["data"] = time.perf_counter() - t0

    # -- fit -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    extractor = build_backbone(
        recipe.backbone,
        weights=options.weights,
        random_weights=options.random_weights,
        layers=recipe.layers,
    )
    heads = [
        build_head(
            name,
            HeadContext(extractor, recipe.image_size, recipe.head_settings.get(name, {}), seed),
        )
        for name in recipe.models
    ]
    fit_batches = _batches(fit_images, recipe.batch_size)
    torch.manual_seed(seed)
    for head in heads:
        logger.info("fitting %s on %d images", head.name, len(fit_samples))
        head.fit(extractor, fit_batches)
    del fit_batches, fit_images
    # held-out normals: what heads take from validation data (the student-teacher's map
    # quantiles, the feature autoencoder's threshold) -- never the test split
    val_normal_tensor = _preprocess_all(val_normal_images, recipe, "preprocess: validation normals")
    for head in heads:
        head.fit_validation(extractor, _batches(val_normal_tensor, recipe.batch_size))
    graph = InspectionGraph(extractor, heads)
    seconds["fit"] = time.perf_counter() - t0

    # -- calibrate -------------------------------------------------------------------------
    t0 = time.perf_counter()
    reference = TorchReference.from_graph(graph, map_sigma=recipe.scoring["map_sigma"])
    cal_images = torch.cat(
        [
            val_normal_tensor,
            _preprocess_all(val_anomalous_images, recipe, "preprocess: calibration anomalies"),
        ]
    )
    labels = np.array([0] * len(val_normal_images) + [1] * len(val_anomalous_images))
    raw = _score(reference, _batches(cal_images, recipe.batch_size))
    platt_params = {name: fit_platt(raw[name], labels) for name in graph.head_names}
    probabilities = np.stack(
        [platt(raw[name], *platt_params[name]) for name in graph.head_names], axis=1
    )
    weights = fit_fusion_weights(probabilities, labels)
    fused = probabilities @ weights
    choice = choose_threshold(
        fused,
        labels,
        method=recipe.calibration["threshold_method"],
        target_frr=recipe.calibration["target_frr"],
    )
    calibration = CalibrationSummary(
        source=source,
        n_normal=len(val_normal_images),
        n_anomalous=len(val_anomalous_images),
        platt=platt_params,
        fusion_weights={n: float(w) for n, w in zip(graph.head_names, weights, strict=True)},
        threshold=choice.threshold,
        threshold_method=choice.method,
        f1=choice.f1,
        frr=choice.frr,
        far=choice.far,
    )
    seconds["calibrate"] = time.perf_counter() - t0

    # -- export ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    files: dict[str, Any] = {}
    models: dict[str, Any] = {}
    bank_sizes: dict[str, int] = {}
    for head in graph.heads:
        entry = head.manifest_entry()
        a, b = platt_params[head.name]
        models[head.name] = {
            **entry,
            "kind": head.kind,
            "output": head.output_name,
            "feature_map": list(head.feature_map_size(recipe.image_size)),
            "calibration": {"a": a, "b": b},
        }
        head_files = head.bundle_files()
        clash = set(head_files) & set(files)
        if clash:
            raise ValueError(f"heads write the same bundle file(s) {sorted(clash)}")
        files.update(head_files)
        if "bank_size" in entry:
            bank_sizes[head.name] = int(entry["bank_size"])
    info = extractor.info
    manifest: dict[str, Any] = {
        "format_version": 1,
        "category": options.category,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "autoweld_version": autoweld.__version__,
        "packages": _packages(),
        "preprocess": {
            "size": recipe.image_size,
            **recipe.preprocess,
            "mean": list(recipe.mean),
            "std": list(recipe.std),
            "color_order": "BGR",
        },
        "backbone": {
            "name": info.name,
            "layers": list(info.layers),
            "channels": list(info.channels),
            "strides": list(info.strides),
            "weights": info.weights,
            "weights_sha256": info.weights_sha256,
        },
        "models": models,
        "scoring": {"map_sigma": recipe.scoring["map_sigma"]},
        "fusion": {
            "weights": calibration.fusion_weights,
            "threshold": calibration.threshold,
            "threshold_method": calibration.threshold_method,
            "target_frr": choice.target_frr,
        },
        "calibration_data": {
            "source": source,
            "val_root": str(options.val_root) if options.val_root is not None else None,
            "n_normal": calibration.n_normal,
            "n_anomalous": calibration.n_anomalous,
            "val_fraction": val_fraction if options.val_root is None else None,
            "seed": seed,
            "anomaly_kinds": sorted(set(anomaly_kinds)),
            "f1": calibration.f1,
            "frr": calibration.frr,
            "far": calibration.far,
        },
        "training_data": {
            "category": options.category,
            "data_root": str(options.data_root) if options.data_root is not None else None,
            "n_fit": len(fit_samples),
            "seed": seed,
        },
        "recipe": recipe.as_dict(),
    }
    with tempfile.TemporaryDirectory(prefix="autoweld-export-") as scratch:
        onnx_path = Path(scratch) / ONNX_FILE
        onnx_result = export_onnx(graph, onnx_path, recipe.image_size, opset=options.opset)
        manifest["engine"] = {
            "onnx": ONNX_FILE,
            "input": onnx_result.input_name,
            "opset": onnx_result.opset,
        }
        files[ONNX_FILE] = onnx_path
        bundle_dir = out_dir / options.category
        bundle = write_bundle(bundle_dir, manifest, files, sign_with=bundle_key_from_env())
    reference_path = None
    if options.save_reference:
        reference_path = save_reference(
            out_dir / f"{options.category}.reference.pt",
            graph,
            recipe.image_size,
            recipe.head_settings,
        )
    seconds["export"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    return ExportResult(
        bundle=bundle,
        bundle_dir=bundle_dir,
        bundle_bytes=_dir_bytes(bundle_dir),
        reference_path=reference_path,
        recipe=recipe,
        graph=graph,
        calibration=calibration,
        n_fit=len(fit_samples),
        bank_sizes=bank_sizes,
        onnx_max_abs_diff=onnx_result.max_abs_diff,
        seconds=seconds,
    )
