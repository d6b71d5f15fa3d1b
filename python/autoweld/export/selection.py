"""The default export's automatic choice among candidate recipes (docs/recipes.md, "Selection").

A recipe's ``[selection]`` table lists candidates: each one a few profile keys (backbone, image
size, heads, taps) laid over the recipe's profile. Every candidate is fitted on the same fit
part and calibrated on the same held-out calibration data (held-out normals plus synthesised
anomalies, or ``--val-root``; never the test split), then scored on that calibration data:
image AUROC of the fused probability and pixel AUROC of the fused map against the synthesised
masks. The best score wins (ties: the earlier, cheaper candidate) if its bundle meets the latency
budget, measured end to end with the runtime :class:`~autoweld.runtime.inspector.Inspector` at
batch 1; otherwise the next best. Candidates stop being tried when the time budget would be
exceeded. What was tried, the scores and why the winner won go into the manifest's
``provenance.recipe.selection``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from autoweld.evaluation.metrics import auroc, pixel_auroc
from autoweld.export.recipes import Recipe
from autoweld.train.calibration import CalibrationSummary
from autoweld.train.reference import TorchReference

logger = logging.getLogger(__name__)

__all__ = ["CandidateScore", "SelectionSettings", "apply_candidate", "validation_score"]

#: profile keys a candidate may set
CANDIDATE_KEYS = frozenset({"name", "backbone", "image_size", "models", "layers", "coreset_ratio"})


@dataclass(frozen=True)
class SelectionSettings:
    """The recipe's ``[selection]`` table, typed."""

    candidates: tuple[dict[str, Any], ...] = ()
    time_budget_s: float = 600.0
    latency_budget_ms: float = 40.0
    latency_threads: int = 2

    @classmethod
    def from_mapping(cls, table: dict[str, Any], where: str) -> SelectionSettings:
        unknown = set(table) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{where} [selection]: unknown key(s) {sorted(unknown)}")
        candidates = tuple(dict(c) for c in table.get("candidates", ()))
        for i, candidate in enumerate(candidates):
            bad = set(candidate) - CANDIDATE_KEYS
            if bad or "name" not in candidate:
                raise ValueError(
                    f"{where} [selection] candidate {i}: needs 'name', may set "
                    f"{sorted(CANDIDATE_KEYS - {'name'})}; got {sorted(candidate)}"
                )
        names = [c["name"] for c in candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"{where} [selection]: candidate names repeat: {names}")
        return cls(
            candidates=candidates,
            time_budget_s=float(table.get("time_budget_s", cls.time_budget_s)),
            latency_budget_ms=float(table.get("latency_budget_ms", cls.latency_budget_ms)),
            latency_threads=int(table.get("latency_threads", cls.latency_threads)),
        )


@dataclass
class CandidateScore:
    """One candidate's result on the calibration data (never the test split)."""

    name: str
    settings: dict[str, Any]
    image_auroc: float | None = None
    pixel_auroc: float | None = None
    score: float | None = None
    fusion_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    latency_ms: float | None = None
    status: str = "not tried"  # "scored", "chosen", "over latency budget", "skipped: ..."

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_candidate(recipe: Recipe, candidate: dict[str, Any]) -> Recipe:
    """The recipe with a candidate's profile keys (and PatchCore's ``coreset_ratio``) laid over
    it; a head the profile has no table for gets the head's own defaults."""
    from autoweld.export.recipes import normalisation_of

    changes: dict[str, Any] = {}
    if "backbone" in candidate and candidate["backbone"] != recipe.backbone:
        changes["backbone"] = str(candidate["backbone"])
        changes["mean"], changes["std"] = normalisation_of(changes["backbone"])
        changes["layers"] = None  # the profile's taps belong to its own backbone
    if "image_size" in candidate:
        size = int(candidate["image_size"])
        if size < 32 or size % 8:
            raise ValueError(
                f"candidate {candidate['name']}: image_size {size} not a multiple of 8"
            )
        changes["image_size"] = size
    if "layers" in candidate:
        changes["layers"] = [str(v) for v in candidate["layers"]]
    if "models" in candidate:
        changes["models"] = [str(v) for v in candidate["models"]]
        changes["head_settings"] = {
            name: dict(recipe.head_settings.get(name, {})) for name in changes["models"]
        }
    if "coreset_ratio" in candidate:  # a bigger grid needs a sparser bank to stay fast
        settings = copy.deepcopy(changes.get("head_settings", recipe.head_settings))
        settings.setdefault("patchcore", {})["coreset_ratio"] = float(candidate["coreset_ratio"])
        changes["head_settings"] = settings
    return dataclasses.replace(recipe, **changes)


def _masks_at(masks: list[np.ndarray], size: int) -> list[np.ndarray]:
    return [
        cv2.resize((m > 0).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        for m in masks
    ]


@torch.no_grad()
def validation_score(
    reference: TorchReference,
    scores: dict[str, torch.Tensor],
    patch_maps: dict[str, torch.Tensor],
    size: int,
    labels: np.ndarray,
    masks: list[np.ndarray],
    calibration: CalibrationSummary,
) -> tuple[float | None, float | None]:
    """(image AUROC of the fused probability, pixel AUROC of the fused map) on calibration data,
    from the scores calibration already computed (no second pass over the images).

    ``masks``: one per image (zeros for normals); empty when the anomalies carry no masks
    (``--val-root``), then the pixel figure is None."""
    reference.settings.platt = dict(calibration.platt)
    reference.settings.fusion_weights = dict(calibration.fusion_weights)
    _, fused, fused_map = reference.calibrate(scores, reference.anomaly_maps(patch_maps, size))
    image_auroc = float(auroc(fused.numpy(), labels))
    if not masks:
        return image_auroc, None
    return image_auroc, float(pixel_auroc(list(fused_map.numpy()), _masks_at(masks, size)))


def combined_score(image_auroc: float | None, pixel_value: float | None) -> float:
    """The figure candidates are ranked by: the mean of the image and pixel AUROC (image alone
    when there are no masks)."""
    values = [v for v in (image_auroc, pixel_value) if v is not None]
    return float(np.mean(values)) if values else 0.0


def measure_latency_ms(
    bundle_dir: Path, images: Sequence[np.ndarray], threads: int, runs: int = 15
) -> float:
    """End-to-end latency through the runtime Inspector at batch 1 (decode excluded, BGR arrays
    passed in): the median of ``runs`` inspections cycling through ``images``, after two warm-up
    calls. The median, not the fastest run: it is what ``autoweld-bench`` reports as p50 (the
    fastest run read 20 ms for a bundle whose bench p50 was 32 ms); on a machine busy with other
    work it reads high, and the manifest's figure says what the choice saw."""
    from autoweld.runtime.inspector import Inspector

    if not images:
        raise ValueError("latency probe: no image to time")
    with Inspector(bundle_dir, threads=threads) as inspector:
        for i in range(2):
            inspector.inspect(images[i % len(images)])
        seconds = []
        for i in range(runs):
            started = time.perf_counter()
            result = inspector.inspect(images[i % len(images)])
            seconds.append(time.perf_counter() - started)
            if result.error is not None:
                raise ValueError(f"latency probe failed: {result.error}")
    return float(np.median(seconds)) * 1000.0
