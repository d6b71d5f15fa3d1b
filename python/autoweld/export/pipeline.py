"""Recipe -> data -> fit -> calibrate -> ONNX + bundle: what ``autoweld-export`` runs.

:func:`export_category` is a short sequence of named steps, each a function with typed inputs
and outputs:

1. :func:`resolve_export_recipe` -- the recipe, with the CLI flags applied.
2. :func:`load_export_data` -- the category's training images, split into a *fit* part
   (:class:`FitSet`, the heads learn from it) and held-out calibration data
   (:class:`CalibrationSet`): validation normals plus anomalies, either labelled images from
   ``--val-root`` or, by default, anomalies synthesised from the validation normals (weld: every
   defect kind of ``synthesize_defect``; other categories: ``synthesize_anomaly``). The test
   split is never touched.
3. :func:`fit_model` -- every head fitted on the fit part, then on the validation normals
   (:class:`FittedModel`).
4. :func:`calibrate` -- the torch reference pipeline scores the calibration data;
   :func:`autoweld.train.calibration.fit_calibration` fits Platt per head, the fusion weights and
   the decision threshold (:class:`CalibrationSummary`).
   With ``precision = "int8"`` (``--int8``), :func:`quantize_engine` then quantises the
   verified ONNX graph (:mod:`autoweld.export.quantize`) and refits the banks and calibration on
   the INT8 graph's outputs.
5. :func:`build_manifest` -- the typed :class:`~autoweld.bundle.Manifest`, after the graph is
   exported to ONNX (verified against torch) and the bundle's files are collected.
6. :func:`write_export` -- the bundle, written atomically, and the torch reference file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib.metadata
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

import autoweld
from autoweld import data, native
from autoweld.bundle import (
    BackboneSpec,
    Bundle,
    Calibration,
    EngineSpec,
    FusionSpec,
    HeadSpec,
    Manifest,
    PreprocessSpec,
    Provenance,
    ScoringSpec,
    bundle_key_from_env,
    head_from_json,
    write_bundle,
)
from autoweld.bundle.schema import QuantizationSpec
from autoweld.export.onnx_export import DEFAULT_OPSET, OnnxExport, export_onnx
from autoweld.export.quantize import (
    EngineScorer,
    QuantizationSettings,
    QuantizedOnnx,
    quantize_onnx,
    refit_banks,
)
from autoweld.export.recipes import Recipe, resolve_recipe
from autoweld.export.selection import (
    CandidateScore,
    SelectionSettings,
    apply_candidate,
    combined_score,
    measure_latency_ms,
    validation_score,
)
from autoweld.train.backbones import BackboneInfo, build_backbone
from autoweld.train.calibration import CalibrationSummary, fit_calibration
from autoweld.train.heads import (
    ExportHead,
    HeadContext,
    InspectionGraph,
    available_heads,
    build_head,
)
from autoweld.train.reference import TorchReference, save_reference

logger = logging.getLogger(__name__)

__all__ = [
    "BundleContent",
    "CalibrationSet",
    "CalibrationSummary",
    "ExportOptions",
    "ExportResult",
    "FitSet",
    "FittedModel",
    "QuantizedEngine",
    "WrittenExport",
    "build_manifest",
    "calibrate",
    "choose_recipe",
    "export_category",
    "fit_model",
    "load_export_data",
    "quantize_engine",
    "resolve_export_recipe",
    "write_export",
]

ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
_PACKAGES = (
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "opencv-python-headless",
    "scipy",
)
#: The manifest type of each head kind (``ExportHead.kind``).


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
    quick: bool = False  # today's single-model path: the recipe's profile, no [selection]
    precision: str | None = None  # "int8" (--int8) or "fp32"; None: as the recipe says
    weld_params: Any = None  # autoweld.data.WeldParams for the built-in weld set (tests: tiny)


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
    quantization: QuantizationSpec | None = None  # how the INT8 graph was made (None: FP32)


@dataclass(frozen=True)
class FitSet:
    """The training images the heads are fitted on, preprocessed: float32 ``[n, 3, S, S]``."""

    images: torch.Tensor

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class CalibrationSet:
    """Held-out images (BGR) that calibration is fitted on -- never the test split."""

    normals: list[np.ndarray]
    anomalies: list[np.ndarray]
    source: str  # "synthesised" or "val_root"
    anomaly_kinds: list[str]  # the synthesised defect kinds, one per anomaly ([] for val_root)
    masks: list[np.ndarray] = field(default_factory=list)  # per anomaly when synthesised


@dataclass(frozen=True)
class FittedModel:
    """The fitted graph, and the validation normals preprocessed (calibration scores them)."""

    graph: InspectionGraph
    val_normals: torch.Tensor
    n_fit: int


@dataclass(frozen=True)
class BundleContent:
    """What goes into the bundle: the manifest and file name -> array or file to copy."""

    manifest: Manifest
    files: dict[str, np.ndarray | Path]

    @property
    def bank_sizes(self) -> dict[str, int]:
        """Memory-bank rows per head that has a bank."""
        return {
            name: int(head.extras["bank_size"])
            for name, head in self.manifest.heads.items()
            if "bank_size" in head.extras
        }


@dataclass(frozen=True)
class WrittenExport:
    """The bundle as written (and loaded back, checked) and the torch reference file."""

    bundle: Bundle
    bundle_dir: Path
    reference_path: Path | None


# ---- helpers ----------------------------------------------------------------------------------


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


def _read_val_root(val_root: Path, test_dir: Path) -> CalibrationSet:
    """Labelled calibration images: ``VAL_ROOT/good/*`` normal, every other sub-folder anomalous.

    ``test_dir`` is the category's test split: a validation root inside it (or containing it)
    is refused, since calibrating on the test split would inflate every reported figure.
    """
    if not val_root.is_dir():
        raise ValueError(f"val_root: {val_root} is not a directory")
    resolved, test_resolved = val_root.resolve(), test_dir.resolve()
    if (
        resolved == test_resolved
        or test_resolved in resolved.parents
        or (resolved in test_resolved.parents)
    ):
        raise ValueError(
            f"val_root: {val_root} overlaps the test split {test_dir}; calibration must use "
            "held-out validation images, never the test split"
        )
    normals: list[np.ndarray] = []
    anomalies: list[np.ndarray] = []
    for folder in sorted(p for p in val_root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in data.IMAGE_SUFFIXES:
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
    return CalibrationSet(normals, anomalies, source="val_root", anomaly_kinds=[])


#: calibration anomaly source (recipe ``anomaly_sources``) -> (kind recorded, painter)
_SOURCE_PAINTERS = {
    "generic": ("synthetic", data.synthesize_anomaly),
    "perlin": ("perlin", data.synthesize_perlin_anomaly),
    "subtle": ("subtle", data.synthesize_subtle_anomaly),
}


def _synthesise(
    normals: list[np.ndarray],
    category: str,
    per_image: int,
    seed: int,
    sources: Sequence[str] = ("generic",),
) -> CalibrationSet:
    """``per_image`` anomalies synthesised from each held-out normal (seeded). Outside weld the
    anomalies cycle through ``sources`` (``generic``: ``synthesize_anomaly``; ``perlin``:
    ``synthesize_perlin_anomaly``; ``subtle``: ``synthesize_subtle_anomaly``), so calibration
    sees several kinds, sizes and contrasts."""
    rng = np.random.default_rng(seed + 7919)
    anomalies: list[np.ndarray] = []
    kinds: list[str] = []
    masks: list[np.ndarray] = []
    weld_kinds = list(data.WELD_DEFECT_TYPES)
    for i, image in enumerate(tqdm(normals, desc="synthesise anomalies", unit="img", leave=False)):
        for j in range(per_image):
            index = i * per_image + j
            if category == "weld":
                kind = weld_kinds[index % len(weld_kinds)]
                anomalous, mask = data.synthesize_defect(image, kind, rng)
            else:
                kind, paint = _SOURCE_PAINTERS[sources[index % len(sources)]]
                anomalous, mask = paint(image, rng)
            anomalies.append(anomalous)
            kinds.append(kind)
            masks.append(np.asarray(mask) > 0)
    return CalibrationSet(normals, anomalies, "synthesised", kinds, masks)


def _score(
    reference: TorchReference | EngineScorer, batches: list[torch.Tensor]
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """Raw image scores and patch score maps ([N,h,w]) per head."""
    parts: dict[str, list[np.ndarray]] = {}
    map_parts: dict[str, list[torch.Tensor]] = {}
    for batch in tqdm(batches, desc="calibration: scoring", unit="batch", leave=False):
        scores, patch_maps = reference.patch_scores(batch)
        for name, values in scores.items():
            parts.setdefault(name, []).append(values.numpy())
            map_parts.setdefault(name, []).append(patch_maps[name])
    return (
        {name: np.concatenate(v) for name, v in parts.items()},
        {name: torch.cat(v) for name, v in map_parts.items()},
    )


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - started


# ---- the steps --------------------------------------------------------------------------------


def resolve_export_recipe(options: ExportOptions) -> Recipe:
    """The category's recipe with the CLI flags applied; unknown heads are refused here."""
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
        precision=options.precision,
    )
    missing = [m for m in recipe.models if m not in available_heads()]
    if missing:
        raise ValueError(
            f"models: {', '.join(missing)} not implemented in this autoweld "
            f"(available: {', '.join(available_heads())})"
        )
    if "patchcore" in head_overrides and "patchcore" not in recipe.models:
        raise ValueError("--coreset-ratio/--coreset-max need the patchcore model in --models")
    logger.info("recipe %s, profile %s, models %s", recipe.source, recipe.profile, recipe.models)
    return recipe


def load_export_data(options: ExportOptions, recipe: Recipe) -> tuple[FitSet, CalibrationSet]:
    """The fit part of the training images (preprocessed) and the held-out calibration data."""
    load_kwargs: dict[str, Any] = {"seed": recipe.seed}
    if options.weld_params is not None:
        load_kwargs["weld_params"] = options.weld_params
    category = data.load_category(options.category, data_root=options.data_root, **load_kwargs)
    if options.val_root is not None:
        fit_samples = list(category.train)
        calibration_set = _read_val_root(Path(options.val_root), category.root / "test")
    else:
        val_fraction = recipe.calibration["val_fraction"]
        fit_samples, val_samples = data.split_train(category.train, val_fraction, recipe.seed)
        if not val_samples:
            raise ValueError(
                f"category {options.category!r}: too few training images to hold out a "
                f"validation part ({len(category.train)} images, val_fraction {val_fraction})"
            )
        calibration_set = _synthesise(
            [s.load_image() for s in val_samples],
            options.category,
            recipe.calibration["anomalies_per_image"],
            recipe.seed,
            recipe.calibration["anomaly_sources"],
        )
    if not fit_samples:
        raise ValueError(f"category {options.category!r}: no training images to fit on")
    images = [s.load_image() for s in fit_samples]
    return FitSet(_preprocess_all(images, recipe, "preprocess: fit images")), calibration_set


def fit_model(
    fit_set: FitSet, calibration_set: CalibrationSet, recipe: Recipe, options: ExportOptions
) -> FittedModel:
    """Every head of the recipe fitted on the fit part, then on the held-out normals (what a
    head takes from validation data: the student-teacher's map quantiles, the feature
    autoencoder's threshold) -- never on the test split."""
    extractor = build_backbone(
        recipe.backbone,
        weights=options.weights,
        random_weights=options.random_weights,
        layers=recipe.layers,
    )
    heads = [
        build_head(
            name,
            HeadContext(
                extractor, recipe.image_size, recipe.head_settings.get(name, {}), recipe.seed
            ),
        )
        for name in recipe.models
    ]
    fit_batches = _batches(fit_set.images, recipe.batch_size)
    torch.manual_seed(recipe.seed)
    for head in heads:
        logger.info("fitting %s on %d images", head.name, fit_set.n_images)
        head.fit(extractor, fit_batches)
    del fit_batches
    val_normals = _preprocess_all(calibration_set.normals, recipe, "preprocess: validation normals")
    for head in heads:
        head.fit_validation(extractor, _batches(val_normals, recipe.batch_size))
    return FittedModel(InspectionGraph(extractor, heads), val_normals, fit_set.n_images)


@dataclass(frozen=True)
class _CalibrationScores:
    """The torch reference's scores of the calibration data (normals first, then anomalies)."""

    reference: TorchReference
    raw: dict[str, np.ndarray]
    patch_maps: dict[str, torch.Tensor]
    labels: np.ndarray


def _score_calibration(
    model: FittedModel,
    calibration_set: CalibrationSet,
    recipe: Recipe,
    engine_path: Path | None = None,
) -> _CalibrationScores:
    """Score the calibration data with the torch reference or, given ``engine_path``, with that
    exported graph's outputs (an INT8 graph: its calibration must match the graph that serves)."""
    reference = TorchReference.from_graph(model.graph, map_sigma=recipe.scoring["map_sigma"])
    scorer = reference if engine_path is None else EngineScorer(engine_path, reference)
    anomalies = _preprocess_all(
        calibration_set.anomalies, recipe, "preprocess: calibration anomalies"
    )
    images = torch.cat([model.val_normals, anomalies])
    labels = np.array([0] * len(calibration_set.normals) + [1] * len(calibration_set.anomalies))
    raw, patch_maps = _score(scorer, _batches(images, recipe.batch_size))
    return _CalibrationScores(reference, raw, patch_maps, labels)


def _fit_calibration(
    model: FittedModel, scored: _CalibrationScores, recipe: Recipe, source: str
) -> CalibrationSummary:
    return fit_calibration(
        {name: scored.raw[name] for name in model.graph.head_names},  # head order: fusion columns
        scored.labels,
        method=recipe.calibration["threshold_method"],
        target_frr=recipe.calibration["target_frr"],
        source=source,
    )


def calibrate(
    model: FittedModel,
    calibration_set: CalibrationSet,
    recipe: Recipe,
    engine_path: Path | None = None,
) -> CalibrationSummary:
    """Score the calibration data with the torch reference (or, given ``engine_path``, with
    that exported graph's outputs), then fit Platt per head, the fusion weights and the
    threshold on those scores."""
    scored = _score_calibration(model, calibration_set, recipe, engine_path)
    return _fit_calibration(model, scored, recipe, calibration_set.source)


def _head_spec(head: ExportHead, calibration: Calibration, image_size: int) -> HeadSpec:
    """A head's manifest entry, typed and checked by the bundle schema (``manifest_entry()``
    gives the head's own fields; the typed ones become attributes, the rest extras)."""
    entry = {
        **head.manifest_entry(),
        "kind": head.kind,
        "output": head.output_name,
        "feature_map": list(head.feature_map_size(image_size)),
        "calibration": calibration.to_json(),
    }
    return head_from_json(head.name, entry, "export")


def _head_files(graph: InspectionGraph) -> dict[str, np.ndarray | Path]:
    """Every head's bundle files; two heads naming the same file is an error."""
    files: dict[str, np.ndarray | Path] = {}
    for head in graph.heads:
        head_files = head.bundle_files()
        clash = set(head_files) & set(files)
        if clash:
            raise ValueError(f"heads write the same bundle file(s) {sorted(clash)}")
        files.update(head_files)
    return files


def _preprocess_spec(recipe: Recipe) -> PreprocessSpec:
    settings = recipe.preprocess
    return PreprocessSpec(
        size=recipe.image_size,
        clahe=settings["clahe"],
        clip_limit=float(settings["clip_limit"]),
        tile_grid=(int(settings["tile_grid"][0]), int(settings["tile_grid"][1])),
        sigma=float(settings["sigma"]),
        mean=recipe.mean,
        std=recipe.std,
    )


def _backbone_spec(info: BackboneInfo) -> BackboneSpec:
    return BackboneSpec(
        name=info.name,
        layers=tuple(info.layers),
        channels=tuple(info.channels),
        strides=tuple(info.strides),
        weights=info.weights,
        weights_sha256=info.weights_sha256,
    )


def _provenance(
    options: ExportOptions,
    recipe: Recipe,
    calibration: CalibrationSummary,
    calibration_set: CalibrationSet,
    n_fit: int,
) -> Provenance:
    """When and with what the bundle was made, and which data it was fitted and calibrated
    on (never the test split)."""
    by_val_root = options.val_root is not None
    calibration_data = {
        "source": calibration.source,
        "val_root": str(options.val_root) if by_val_root else None,
        "n_normal": calibration.n_normal,
        "n_anomalous": calibration.n_anomalous,
        "val_fraction": None if by_val_root else recipe.calibration["val_fraction"],
        "seed": recipe.seed,
        "anomaly_kinds": sorted(set(calibration_set.anomaly_kinds)),
        "f1": calibration.f1,
        "frr": calibration.frr,
        "far": calibration.far,
    }
    training_data = {
        "category": options.category,
        "data_root": str(options.data_root) if options.data_root is not None else None,
        "n_fit": n_fit,
        "seed": recipe.seed,
    }
    return Provenance(
        created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        autoweld_version=autoweld.__version__,
        packages=_packages(),
        training_data=training_data,
        calibration_data=calibration_data,
        recipe=recipe.as_dict(),
    )


def build_manifest(
    options: ExportOptions,
    recipe: Recipe,
    model: FittedModel,
    calibration: CalibrationSummary,
    calibration_set: CalibrationSet,
    onnx: OnnxExport,
    quantization: QuantizationSpec | None = None,
) -> BundleContent:
    """The typed manifest of the bundle and its files (the ONNX graph and the heads' arrays);
    ``write_bundle`` fills in the file table. ``quantization``: the graph is INT8."""
    graph = model.graph
    files = {**_head_files(graph), onnx.path.name: onnx.path}
    heads = {
        head.name: _head_spec(head, Calibration(*calibration.platt[head.name]), recipe.image_size)
        for head in graph.heads
    }
    manifest = Manifest(
        category=options.category,
        preprocess=_preprocess_spec(recipe),
        engine=EngineSpec(
            onnx=onnx.path.name,
            input=onnx.input_name,
            opset=onnx.opset,
            precision="fp32" if quantization is None else "int8",
            quantization=quantization,
        ),
        heads=heads,
        fusion=FusionSpec(
            weights=dict(calibration.fusion_weights),
            threshold=calibration.threshold,
            threshold_method=calibration.threshold_method,
            target_frr=calibration.target_frr,
        ),
        scoring=ScoringSpec(map_sigma=float(recipe.scoring["map_sigma"])),
        backbone=_backbone_spec(graph.extractor.info),
        provenance=_provenance(options, recipe, calibration, calibration_set, model.n_fit),
    )
    return BundleContent(manifest, files)


@dataclass(frozen=True)
class QuantizedEngine:
    """The INT8 graph (``onnx.max_abs_diff`` is the FP32 graph's check against torch) and the
    calibration fitted on its scores."""

    onnx: OnnxExport
    calibration: CalibrationSummary
    spec: QuantizationSpec


def quantize_engine(
    onnx: OnnxExport,
    model: FittedModel,
    fit_images: torch.Tensor,
    calibration_set: CalibrationSet,
    recipe: Recipe,
) -> QuantizedEngine:
    """Quantise the verified FP32 graph to INT8 (QDQ, ranges from the fit images), rebuild the
    kNN heads' banks from the INT8 graph's embeddings of the fit images and fit the calibration
    again on the INT8 graph's scores: the bundle's bank and thresholds match the graph that
    serves."""
    settings = QuantizationSettings.from_mapping(recipe.engine or {})
    images = fit_images.numpy()
    quantized: QuantizedOnnx = quantize_onnx(
        onnx.path, onnx.path.with_name(INT8_ONNX_FILE), images, settings, onnx.input_name
    )
    refit_banks(model.graph, quantized.path, images, recipe.batch_size)
    calibration = calibrate(model, calibration_set, recipe, engine_path=quantized.path)
    spec = QuantizationSpec(
        calibration_method=settings.calibration_method,
        calibration_images=quantized.n_calibration_images,
        fp32_nodes=quantized.fp32_nodes,
    )
    return QuantizedEngine(dataclasses.replace(onnx, path=quantized.path), calibration, spec)


def write_export(
    options: ExportOptions, recipe: Recipe, model: FittedModel, content: BundleContent
) -> WrittenExport:
    """Write the bundle atomically to ``OUT/CATEGORY/`` (signed when a bundle key is set) and
    the torch reference file beside it.

    ``write_bundle`` checks the manifest as a loader will read it before it writes anything, so
    a manifest the runtime would refuse never replaces a bundle already there."""
    bundle_dir = Path(options.out_dir) / options.category
    bundle = write_bundle(
        bundle_dir, content.manifest, content.files, sign_with=bundle_key_from_env()
    )
    reference_path = None
    if options.save_reference:
        reference_path = save_reference(
            Path(options.out_dir) / f"{options.category}.reference.pt",
            model.graph,
            recipe.image_size,
            recipe.head_settings,
        )
    return WrittenExport(bundle, bundle_dir, reference_path)


@dataclass
class _Candidate:
    """A fitted and calibrated candidate recipe, its score on the calibration data and, once
    timed, its checked ONNX graph (reused by the final export when it wins)."""

    recipe: Recipe
    model: FittedModel
    calibration: CalibrationSummary
    calibration_set: CalibrationSet
    score: CandidateScore
    onnx: OnnxExport | None = None


def _fit_candidate(options: ExportOptions, recipe: Recipe, score: CandidateScore) -> _Candidate:
    """Data, fit, calibrate, then the validation score on the calibration data."""
    started = time.perf_counter()
    fit_set, calibration_set = load_export_data(options, recipe)
    model = fit_model(fit_set, calibration_set, recipe, options)
    del fit_set
    scored = _score_calibration(model, calibration_set, recipe)
    calibration = _fit_calibration(model, scored, recipe, calibration_set.source)
    masks: list[np.ndarray] = []
    if calibration_set.masks:
        masks = [np.zeros(n.shape[:2], bool) for n in calibration_set.normals]
        masks += calibration_set.masks
    score.image_auroc, score.pixel_auroc = validation_score(
        scored.reference,
        {name: torch.from_numpy(v) for name, v in scored.raw.items()},
        scored.patch_maps,
        recipe.image_size,
        scored.labels,
        masks,
        calibration,
    )
    score.score = combined_score(score.image_auroc, score.pixel_auroc)
    score.fusion_weights = dict(calibration.fusion_weights)
    score.seconds = time.perf_counter() - started
    score.status = "scored"
    logger.info("candidate %s: validation %s", score.name, score.score)
    return _Candidate(recipe, model, calibration, calibration_set, score)


def _time_candidate(
    candidate: _Candidate, options: ExportOptions, threads: int, scratch: Path
) -> None:
    """Export the candidate's graph (kept for the final export), write its bundle to a scratch
    folder and time it through the runtime (``measure_latency_ms`` on up to 4 held-out normals);
    the seconds count to the candidate."""
    started = time.perf_counter()
    recipe = candidate.recipe
    folder = scratch / candidate.score.name
    candidate.onnx = export_onnx(
        candidate.model.graph, folder / ONNX_FILE, recipe.image_size, opset=options.opset
    )
    content = build_manifest(
        options,
        recipe,
        candidate.model,
        candidate.calibration,
        candidate.calibration_set,
        candidate.onnx,
    )
    bundle_dir = folder / "bundle"
    write_bundle(bundle_dir, content.manifest, content.files)
    candidate.score.latency_ms = measure_latency_ms(
        bundle_dir, candidate.calibration_set.normals[:4], threads
    )
    shutil.rmtree(bundle_dir, ignore_errors=True)  # the graph stays; the bank is in memory
    candidate.score.seconds += time.perf_counter() - started


def _expected_seconds(fitted: Sequence[_Candidate], table: dict[str, Any], recipe: Recipe) -> float:
    """What the next candidate will likely take: the slowest one so far, scaled by the number of
    input pixels (fit, scoring and the graph's export all grow with it)."""
    size = int(table.get("image_size", recipe.image_size))
    return max((c.score.seconds * (size / c.recipe.image_size) ** 2 for c in fitted), default=0.0)


def _try_candidates(
    options: ExportOptions, recipe: Recipe, settings: SelectionSettings, scratch: Path
) -> tuple[list[_Candidate], list[CandidateScore]]:
    """Fit, score and time every candidate while the time budget lasts (the first one always):
    one is not started when the time so far plus what it will likely take passes the budget."""
    started = time.perf_counter()
    fitted: list[_Candidate] = []
    scores: list[CandidateScore] = []
    bar = tqdm(settings.candidates, desc="selection", unit="candidate", leave=False)
    for table in bar:
        score = CandidateScore(str(table["name"]), {k: v for k, v in table.items() if k != "name"})
        scores.append(score)
        expected = _expected_seconds(fitted, table, recipe)
        elapsed = time.perf_counter() - started
        if fitted and elapsed + expected > settings.time_budget_s:
            score.status = (
                f"skipped: time budget {settings.time_budget_s:.0f} s "
                f"({elapsed:.0f} s spent, about {expected:.0f} s more needed)"
            )
            continue
        bar.set_postfix_str(score.name)
        candidate = _fit_candidate(options, apply_candidate(recipe, table), score)
        _time_candidate(candidate, options, settings.latency_threads, scratch)
        fitted.append(candidate)
    return fitted, scores


def choose_recipe(options: ExportOptions, recipe: Recipe, scratch: Path) -> _Candidate:
    """The default export's choice among the recipe's ``[selection]`` candidates, scored on the
    calibration data only (docs/recipes.md, "Selection"); the winner's recipe records the
    choice in ``selection`` (the manifest's ``provenance.recipe.selection``)."""
    settings = SelectionSettings.from_mapping(recipe.selection, recipe.source)
    fitted, scores = _try_candidates(options, recipe, settings, scratch)
    ranked = sorted(fitted, key=lambda c: -(c.score.score or 0.0))  # stable: ties keep order
    within = [c for c in ranked if (c.score.latency_ms or 0.0) <= settings.latency_budget_ms]
    for candidate in ranked:
        if candidate not in within:
            candidate.score.status = "over latency budget"
    if within:
        chosen = within[0]
        reason = (
            f"highest validation score (mean of image and pixel AUROC on held-out normals + "
            f"synthesised anomalies) within {settings.latency_budget_ms} ms"
        )
    else:  # none fits: the fastest one, said so
        chosen = min(ranked, key=lambda c: c.score.latency_ms or float("inf"))
        reason = f"no candidate within {settings.latency_budget_ms} ms: the fastest"
    chosen.score.status = "chosen"
    report = {
        **recipe.selection,
        "chosen": chosen.score.name,
        "reason": reason,
        "seconds": round(sum(s.seconds for s in scores), 1),
        "results": [s.to_json() for s in scores],
    }
    logger.info("selection: %s (%s)", chosen.score.name, reason)
    chosen.recipe = dataclasses.replace(chosen.recipe, selection=report)
    return chosen


@dataclass
class _Fitted:
    """What the fit (or the choice among candidates) hands to the final export."""

    recipe: Recipe
    model: FittedModel
    calibration: CalibrationSummary
    calibration_set: CalibrationSet
    fit_images: torch.Tensor | None  # the preprocessed fit images, for an INT8 graph only
    onnx: OnnxExport | None  # the graph already exported and checked (the chosen candidate's)


def _fit_or_choose(
    options: ExportOptions, recipe: Recipe, seconds: dict[str, float], scratch: Path
) -> _Fitted:
    """Today's single path (``--quick``, a recipe without candidates, or flags that name the
    backbone, size or heads themselves), or the choice among candidates."""
    flags_chose = any(v is not None for v in (options.backbone, options.image_size, options.models))
    if not (options.quick or flags_chose) and recipe.selection.get("candidates"):
        with _timed(seconds, "select"):
            chosen = choose_recipe(options, recipe, scratch / "candidates")
        fit_images = None
        if chosen.recipe.precision == "int8":  # the chosen candidate's own size and split
            with _timed(seconds, "data"):
                fit_images = load_export_data(options, chosen.recipe)[0].images
        return _Fitted(
            chosen.recipe,
            chosen.model,
            chosen.calibration,
            chosen.calibration_set,
            fit_images,
            chosen.onnx,
        )
    with _timed(seconds, "data"):
        fit_set, calibration_set = load_export_data(options, recipe)
    with _timed(seconds, "fit"):
        model = fit_model(fit_set, calibration_set, recipe, options)
    fit_images = fit_set.images if recipe.precision == "int8" else None
    del fit_set  # the preprocessed fit images are not needed past fitting (but by INT8)
    with _timed(seconds, "calibrate"):
        calibration = calibrate(model, calibration_set, recipe)
    return _Fitted(recipe, model, calibration, calibration_set, fit_images, None)


def export_category(options: ExportOptions) -> ExportResult:
    """Fit, calibrate and export the bundle of one category to ``OUT/CATEGORY/``."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    recipe = resolve_export_recipe(options)
    with tempfile.TemporaryDirectory(prefix="autoweld-export-") as scratch:
        fitted = _fit_or_choose(options, recipe, seconds, Path(scratch))
        recipe, model, calibration = fitted.recipe, fitted.model, fitted.calibration
        calibration_set = fitted.calibration_set
        with _timed(seconds, "export"):
            onnx = fitted.onnx  # the chosen candidate's graph, still in the scratch folder
            if onnx is None:
                onnx = export_onnx(
                    model.graph, Path(scratch) / ONNX_FILE, recipe.image_size, opset=options.opset
                )
            quantization = None
            if fitted.fit_images is not None:
                with _timed(seconds, "quantize"):
                    int8 = quantize_engine(onnx, model, fitted.fit_images, calibration_set, recipe)
                onnx, calibration, quantization = int8.onnx, int8.calibration, int8.spec
            content = build_manifest(
                options, recipe, model, calibration, calibration_set, onnx, quantization
            )
            written = write_export(options, recipe, model, content)
    seconds["total"] = time.perf_counter() - started
    return ExportResult(
        bundle=written.bundle,
        bundle_dir=written.bundle_dir,
        bundle_bytes=_dir_bytes(written.bundle_dir),
        reference_path=written.reference_path,
        recipe=recipe,
        graph=model.graph,
        calibration=calibration,
        n_fit=model.n_fit,
        bank_sizes=content.bank_sizes,
        onnx_max_abs_diff=onnx.max_abs_diff,
        seconds=seconds,
        quantization=quantization,
    )
