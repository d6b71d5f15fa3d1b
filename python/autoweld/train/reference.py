"""The torch reference pipeline: the plain PyTorch way of scoring a bundle's model.

Eager model, ``torch.cdist`` + ``topk`` for kNN, PatchCore re-weighting, ``F.interpolate``
(bilinear) + a separable Gaussian blur with reflect padding for the maps, Platt scaling and
fusion — step for step what docs/bundle.md ("From head outputs to a decision") prescribes.

It is used (a) to score calibration images during export, (b) by the runtime's parity test (the
runtime must agree within 1e-4) and (c) by the benchmark as "the torch way".

Build it from a fitted :class:`~autoweld.train.heads.InspectionGraph` plus a bundle directory
(:meth:`TorchReference.from_bundle`), or from the ``*.reference.pt`` file that export writes beside
a bundle (:func:`load_reference`). The bundle itself never needs torch; the reference file is a
torch state dict (``weights_only`` loadable) plus the JSON-able settings to rebuild the graph.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from autoweld.bundle import Bundle, KnnHeadSpec, load_bundle
from autoweld.train.backbones import assemble_backbone
from autoweld.train.heads import HeadContext, InspectionGraph, build_head

__all__ = [
    "REFERENCE_FORMAT_VERSION",
    "ReferenceScores",
    "ScoringSettings",
    "TorchReference",
    "anomaly_maps",
    "gaussian_kernel",
    "load_reference",
    "patchcore_scores",
    "platt",
    "save_reference",
]

REFERENCE_FORMAT_VERSION = 1


@dataclass
class ScoringSettings:
    """What scoring needs beyond the graph: banks of knn heads, map blur, calibration, fusion.

    ``platt`` and ``fusion_weights`` may be empty before calibration; then only raw scores and
    maps are produced.
    """

    banks: dict[str, tuple[np.ndarray, np.ndarray]]  # head -> (memory_bank, bank_neighbours)
    map_sigma: float = 4.0
    platt: dict[str, tuple[float, float]] = field(default_factory=dict)
    fusion_weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ScoringSettings:
        """Banks (hash-checked: :meth:`~autoweld.bundle.Bundle.load_array`), calibration and
        fusion of a loaded bundle."""
        banks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, head in bundle.heads.items():
            if isinstance(head, KnnHeadSpec):
                if head.memory_bank is None or head.bank_neighbours is None:
                    raise ValueError(f"{bundle.root}: head {name!r} names no memory bank")
                banks[name] = (
                    bundle.load_array(head.memory_bank),
                    bundle.load_array(head.bank_neighbours),
                )
        return cls(
            banks=banks,
            map_sigma=bundle.map_sigma,
            platt={name: (head.platt_a, head.platt_b) for name, head in bundle.heads.items()},
            fusion_weights=bundle.fusion_weights,
        )


@dataclass
class ReferenceScores:
    """Per-head image scores ``(N,)`` and anomaly maps ``(N,S,S)``; with calibration also per-head
    probabilities, the fused probability ``(N,)`` and the fused map ``(N,S,S)``."""

    scores: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray] | None = None
    fused: np.ndarray | None = None
    fused_map: np.ndarray | None = None


def gaussian_kernel(sigma: float) -> Tensor:
    """1-D Gaussian of size 2*floor(4*sigma + 0.5) + 1, normalised to sum 1 (float64)."""
    radius = int(math.floor(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(x**2) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def platt(values: Tensor, a: float, b: float) -> Tensor:
    """The torch Platt: p = 1 / (1 + exp(a·s + b)) = sigmoid(-(a·s + b)), in the dtype of
    ``values`` (the numpy one is :meth:`autoweld.bundle.Calibration.probability`)."""
    return torch.sigmoid(-(a * values + b))


def anomaly_maps(patch_scores: Tensor, size: int, sigma: float) -> Tensor:
    """[N,h,w] -> [N,S,S]: bilinear (half-pixel centres) then separable Gaussian, reflect-101."""
    maps = F.interpolate(
        patch_scores[:, None].float(), size=(size, size), mode="bilinear", align_corners=False
    )
    if sigma > 0:
        kernel = gaussian_kernel(sigma).to(maps.dtype)
        r = kernel.numel() // 2
        maps = F.conv2d(F.pad(maps, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        maps = F.conv2d(F.pad(maps, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1))
    return maps[:, 0]


def patchcore_scores(
    embeddings: Tensor, memory_bank: Tensor, bank_neighbours: Tensor
) -> tuple[Tensor, Tensor]:
    """PatchCore for one image: ``embeddings`` [P,D] -> (patch scores [P], image score []).

    Patch score: distance to the nearest bank row. Image score: the maximum patch score s* (at
    patch p*, nearest bank row m*) times ``1 - softmax(d)[0]``, where d are the distances from
    p* to m*'s ``b`` nearest bank rows (m* itself first) — the paper's re-weighting.
    """
    distances = torch.cdist(embeddings[None], memory_bank[None])[0]  # [P, M]
    nearest, index = distances.topk(1, dim=1, largest=False)
    patch = nearest[:, 0]
    p_star = int(torch.argmax(patch))
    m_star = int(index[p_star, 0])
    support = memory_bank[bank_neighbours[m_star]]  # [b, D]
    d = torch.linalg.vector_norm(embeddings[p_star][None] - support, dim=1)
    weight = 1.0 - torch.softmax(d, dim=0)[0]
    return patch, weight * patch[p_star]


class TorchReference:
    """Score preprocessed batches the plain torch way: docs/bundle.md's steps, in torch.

    The one torch scoring path: :meth:`score` (export's calibration, the parity tests) and the
    benchmark's torch way (:class:`autoweld.bench.torch_way.TorchWay`, which times the steps)
    both run :meth:`head_scores` (steps 1-2), :meth:`anomaly_maps` (3) and :meth:`calibrate`
    (4-6).
    """

    def __init__(self, graph: InspectionGraph, settings: ScoringSettings) -> None:
        self.graph = graph.eval()
        self.settings = settings
        self._banks: dict[str, tuple[Tensor, Tensor]] = {}
        for head in graph.heads:
            if head.kind == "knn":
                if head.name not in settings.banks:
                    raise ValueError(f"settings: no memory bank for knn head {head.name!r}")
                bank, neighbours = settings.banks[head.name]
                self._banks[head.name] = (
                    torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32)),
                    torch.from_numpy(np.ascontiguousarray(neighbours, dtype=np.int64)),
                )

    @classmethod
    def from_graph(
        cls, graph: InspectionGraph, map_sigma: float = 4.0, **calibration: Any
    ) -> TorchReference:
        """From a freshly fitted graph whose knn heads hold their banks."""
        banks = {}
        for head in graph.heads:
            if head.kind == "knn":
                files = head.bundle_files()
                entry = head.manifest_entry()
                banks[head.name] = (files[entry["memory_bank"]], files[entry["bank_neighbours"]])
        return cls(graph, ScoringSettings(banks=banks, map_sigma=map_sigma, **calibration))

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, graph: InspectionGraph) -> TorchReference:
        """Graph + the bank, calibration and fusion of a bundle (a loaded one, or its directory,
        which is loaded and checked here)."""
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        return cls(graph, ScoringSettings.from_bundle(bundle))

    @torch.no_grad()
    def head_scores(
        self, outputs: Mapping[str, Tensor], size: int, kind: str | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Steps 1-2 from the graph's outputs for a batch of S x S images (``size`` = S), for
        every head or those of ``kind``: (image scores [N], patch score maps [N,h,w]) per head."""
        scores: dict[str, Tensor] = {}
        maps: dict[str, Tensor] = {}
        for head in self.graph.heads:
            if kind is not None and head.kind != kind:
                continue
            out = outputs[head.name]
            if head.kind == "knn":
                h, w = head.feature_map_size(size)
                bank, neighbours = self._banks[head.name]
                per_image = [patchcore_scores(e, bank, neighbours) for e in out]
                maps[head.name] = torch.stack([p for p, _ in per_image]).view(-1, h, w)
                scores[head.name] = torch.stack([s for _, s in per_image])
            else:
                maps[head.name] = out
                scores[head.name] = out.flatten(1).amax(dim=1)
        return scores, maps

    def anomaly_maps(self, patch_maps: Mapping[str, Tensor], size: int) -> dict[str, Tensor]:
        """Step 3: each head's patch score map at S x S ([N,S,S] float32)."""
        return {k: anomaly_maps(v, size, self.settings.map_sigma) for k, v in patch_maps.items()}

    @torch.no_grad()
    def calibrate(
        self,
        scores: Mapping[str, Tensor],
        maps: Mapping[str, Tensor],
        map_dtype: torch.dtype = torch.float64,
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Steps 4-6: (Platt probability [N] per head, fused probability [N], fused map
        [N,S,S]). Probabilities are float64; the maps' Platt and weighted sum are computed in
        ``map_dtype`` and the fused map returned as float32. A head of weight 0 gets its
        probability but enters neither fused value."""
        first = next(iter(maps.values()))
        probabilities: dict[str, Tensor] = {}
        fused = torch.zeros(first.shape[0], dtype=torch.float64)
        fused_map = torch.zeros(first.shape, dtype=map_dtype)
        for name, values in scores.items():
            a, b = self.settings.platt[name]
            probabilities[name] = platt(values.double(), a, b)
            weight = self.settings.fusion_weights.get(name, 0.0)
            if weight > 0:
                fused += weight * probabilities[name]
                fused_map += weight * platt(maps[name].to(map_dtype), a, b)
        return probabilities, fused, fused_map.float()

    @torch.no_grad()
    def patch_scores(self, batch: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(image scores [N], patch score maps [N,h,w]) per head."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"batch must be [N,3,S,S], got {tuple(batch.shape)}")
        outputs = self.graph.run(batch.float())
        return self.head_scores(outputs, int(batch.shape[-1]))

    @torch.no_grad()
    def score(self, batch: Tensor | np.ndarray) -> ReferenceScores:
        """Scores, maps and (when calibrated) probabilities and the fused decision value."""
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if batch.ndim == 3:
            batch = batch[None]
        size = int(batch.shape[-1])
        scores, patch_maps = self.patch_scores(batch)
        maps = self.anomaly_maps(patch_maps, size)
        result = ReferenceScores(
            scores={k: v.numpy() for k, v in scores.items()},
            maps={k: v.numpy() for k, v in maps.items()},
        )
        if not self.settings.platt:
            return result
        probabilities, fused, fused_map = self.calibrate(scores, maps)
        result.probabilities = {k: v.numpy() for k, v in probabilities.items()}
        result.fused = fused.numpy()
        result.fused_map = fused_map.numpy()
        return result


def save_reference(
    path: str | Path, graph: InspectionGraph, image_size: int, head_settings: Mapping[str, Any]
) -> Path:
    """Save the torch model of a bundle: state dict + what is needed to rebuild the graph."""
    path = Path(path)
    config = {
        "format_version": REFERENCE_FORMAT_VERSION,
        "backbone": graph.extractor.name,
        "layers": list(graph.extractor.layers),
        "weights": graph.extractor.weights,
        "weights_sha256": graph.extractor.weights_sha256,
        "image_size": int(image_size),
        "heads": {h.name: dict(head_settings.get(h.name, {})) for h in graph.heads},
        "seed": 0,
    }
    torch.save({"config": json.dumps(config), "state_dict": graph.state_dict()}, path)
    return path


def load_reference(path: str | Path, bundle: Bundle | str | Path) -> TorchReference:
    """Rebuild the torch reference of a bundle (a loaded one, or its directory) from the file
    :func:`save_reference` wrote."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference: {path} is not a file")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    try:
        config = json.loads(saved["config"])
        state = saved["state_dict"]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"reference: {path} is not an autoweld reference file ({error})") from None
    if config.get("format_version") != REFERENCE_FORMAT_VERSION:
        raise ValueError(
            f"reference: {path} has format_version {config.get('format_version')!r}, "
            f"expected {REFERENCE_FORMAT_VERSION}"
        )
    extractor = assemble_backbone(
        config["backbone"], config["weights"], config["weights_sha256"], config["layers"]
    )
    heads = [
        build_head(name, HeadContext(extractor, config["image_size"], settings, config["seed"]))
        for name, settings in config["heads"].items()
    ]
    graph = InspectionGraph(extractor, heads)
    graph.load_state_dict(state, strict=True)
    return TorchReference.from_bundle(bundle, graph)
