"""Global-reference head: distance of each location's features from the fit set's mean there.

At fit, the head averages the backbone's aggregated patch features (PatchCore's aggregation: 3x3
local average of each tap, the deeper tap upsampled to the shallower tap's grid, concatenated)
over the normal *fit* images, per location: a reference map ``mean [C, h, w]``. With
``variant = "standardised"`` it also keeps the per-location variance (floored, see
:class:`GlobalReferenceSettings`) and scores a diagonal-Mahalanobis distance.

At inference, inside the one ONNX graph (the reference is a constant of the graph, nothing goes
into the bundle beside it), the per-location discrepancy is the anomaly map ``[N, h, w]``:

* ``l2``: ``sqrt(sum_c (f_c - mean_c)^2)`` — Euclidean, in the units of PatchCore's distances;
* ``standardised``: ``sqrt(mean_c ((f_c - mean_c) / std_c)^2)`` — RMS z-score over channels.

The image score is the maximum of the map (``kind = "map"``).

**The reference is the fit set's mean, never the test image's own mean.** Some baselines subtract
an image's own average feature (over its locations) and call the remainder anomalous; that
compares an image with itself, so a defect that covers much of the image, or a part that is
uniformly wrong (another alloy, heat tint over the whole seam), moves its own reference along and
scores low. Comparing with what normal parts look like at that location is the right comparison.

**Pose matters.** A per-location reference assumes parts sit in the same place in every image;
when a part moves or rotates, normal structure lands where the reference expects something else
and scores high. Use this head on fixtured parts (as weld seams on a jig are); for loose parts
rely on PatchCore, whose memory bank has no notion of position.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from autoweld.train.backbones import FeatureExtractor
from autoweld.train.heads import ExportHead, HeadContext, register_head, settings_from_mapping

logger = logging.getLogger(__name__)

__all__ = [
    "GLOBAL_REFERENCE_VARIANTS",
    "GlobalReferenceHead",
    "GlobalReferenceSettings",
    "aggregate_patch_features",
]

GLOBAL_REFERENCE_VARIANTS = ("l2", "standardised")


@dataclass(frozen=True)
class GlobalReferenceSettings:
    """The recipe's ``[<profile>.global_reference]`` table.

    ``variance_floor`` (standardised variant): each location's variance is raised to at least
    ``variance_floor`` times the mean variance of its channel over all locations, so a location
    where every fit image happened to agree (a flat background, few fit images) does not turn
    every tiny deviation into a huge z-score.
    """

    variant: str = "l2"
    variance_floor: float = 0.1

    def __post_init__(self) -> None:
        if self.variant not in GLOBAL_REFERENCE_VARIANTS:
            raise ValueError(
                f"variant must be one of {list(GLOBAL_REFERENCE_VARIANTS)}, got {self.variant!r}"
            )
        if (
            isinstance(self.variance_floor, bool)
            or not isinstance(self.variance_floor, (int, float))
            or not math.isfinite(self.variance_floor)
            or self.variance_floor <= 0
        ):
            raise ValueError(f"variance_floor must be a number > 0, got {self.variance_floor!r}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> GlobalReferenceSettings:
        return settings_from_mapping(cls, values, "global_reference")


def aggregate_patch_features(taps: Sequence[Tensor]) -> Tensor:
    """PatchCore's aggregation as a map: each tap 3x3-averaged (stride 1, zero padding counted),
    deeper taps bilinearly resized (half-pixel centres) to the first tap's grid, concatenated
    over channels -> ``[N, sum(C_i), h, w]``."""
    if len(taps) == 0:
        raise ValueError("taps: at least one feature map is needed")
    h, w = int(taps[0].shape[-2]), int(taps[0].shape[-1])
    parts = []
    for tap in taps:
        pooled = F.avg_pool2d(tap, kernel_size=3, stride=1, padding=1)
        if (int(pooled.shape[-2]), int(pooled.shape[-1])) != (h, w):
            pooled = F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False)
        parts.append(pooled)
    return torch.cat(parts, dim=1)


class GlobalReferenceHead(ExportHead):
    """Per-location distance from the fit set's mean feature map (see the module docstring)."""

    name = "global_reference"
    kind = "map"
    output_name = "global_reference_map"

    def __init__(
        self,
        channels: tuple[int, ...],
        feature_map: tuple[int, int],
        settings: GlobalReferenceSettings,
        stride: int = 8,
    ) -> None:
        super().__init__()
        if len(feature_map) != 2 or min(feature_map) < 1:
            raise ValueError(f"feature_map must be (h, w) with h, w >= 1, got {feature_map!r}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride!r}")
        self.settings = settings
        self.stride = int(stride)
        self.feature_dim = int(sum(channels))
        h, w = (int(v) for v in feature_map)
        # Buffers: they are the fitted state, so they travel in the ONNX graph as constants and in
        # the torch reference's state dict.
        self.register_buffer("reference_mean", torch.zeros(self.feature_dim, h, w))
        self.register_buffer("inverse_std", torch.ones(self.feature_dim, h, w))
        self.register_buffer("n_images_fitted", torch.zeros((), dtype=torch.int64))

    @property
    def fitted(self) -> bool:
        return int(self.n_images_fitted) > 0

    def feature_map_size(self, image_size: int) -> tuple[int, int]:
        side = -(-int(image_size) // self.stride)
        return (side, side)

    def features(self, features: list[Tensor]) -> Tensor:
        """Aggregated patch features [N, C, h, w], checked against the reference's shape."""
        aggregated = aggregate_patch_features(features[:2])
        expected = tuple(self.reference_mean.shape)
        if tuple(aggregated.shape[1:]) != expected:
            raise ValueError(
                f"global_reference: features {tuple(aggregated.shape[1:])} do not match the "
                f"reference {expected} (another image size or backbone than at construction?)"
            )
        return aggregated

    def forward(self, image: Tensor, features: list[Tensor]) -> Tensor:
        difference = self.features(features) - self.reference_mean
        if self.settings.variant == "standardised":
            z = difference * self.inverse_std
            return torch.sqrt((z * z).mean(dim=1))
        return torch.sqrt((difference * difference).sum(dim=1))

    @torch.no_grad()
    def fit(self, extractor: FeatureExtractor, batches: Sequence[Tensor]) -> None:
        """Per-location mean (and variance) over the normal fit images, in float64, merged batch
        by batch (Chan et al.'s parallel update, so no second pass over the backbone)."""
        count = 0
        mean: Tensor | None = None
        m2: Tensor | None = None
        for index, batch in enumerate(
            tqdm(batches, desc="global_reference: features", unit="batch", leave=False)
        ):
            if not isinstance(batch, Tensor) or batch.dim() != 4 or batch.shape[1] != 3:
                shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
                raise ValueError(f"batches[{index}] must be a [n, 3, S, S] tensor, got {shape}")
            if batch.shape[0] == 0:
                continue
            feats = self.features(extractor(batch.float())).double()
            if not torch.isfinite(feats).all():
                raise ValueError(f"batches[{index}]: backbone features hold NaN or Inf")
            n_b = int(feats.shape[0])
            mean_b = feats.mean(dim=0)
            m2_b = ((feats - mean_b) ** 2).sum(dim=0)
            if mean is None or m2 is None:
                mean, m2 = mean_b, m2_b
            else:
                delta = mean_b - mean
                total = count + n_b
                mean = mean + delta * (n_b / total)
                m2 = m2 + m2_b + delta * delta * (count * n_b / total)
            count += n_b
        if mean is None or m2 is None:
            raise ValueError("batches: no fit images")
        variance = m2 / count
        channel_mean_variance = variance.mean(dim=(1, 2), keepdim=True)
        floor = (self.settings.variance_floor * channel_mean_variance).clamp_min(1e-12)
        floored = torch.maximum(variance, floor)
        self.reference_mean.copy_(mean.float())
        self.inverse_std.copy_(floored.rsqrt().float())
        self.n_images_fitted.fill_(count)
        logger.info(
            "global_reference: %s reference [%d, %d, %d] from %d fit images; %.1f%% of variances "
            "floored",
            self.settings.variant,
            *self.reference_mean.shape,
            count,
            100.0 * float((variance < floor).double().mean()),
        )

    def manifest_entry(self) -> dict[str, Any]:
        if not self.fitted:
            raise ValueError("global_reference head is not fitted (call fit() first)")
        return {
            "variant": self.settings.variant,
            "variance_floor": self.settings.variance_floor,
            "feature_dim": self.feature_dim,
            "n_images_fitted": int(self.n_images_fitted),
        }


@register_head("global_reference")
def _build_global_reference(context: HeadContext) -> ExportHead:
    stride = int(context.strides[0])
    side = -(-int(context.image_size) // stride)
    return GlobalReferenceHead(
        context.channels,
        (side, side),
        GlobalReferenceSettings.from_mapping(dict(context.settings)),
        stride=stride,
    )
