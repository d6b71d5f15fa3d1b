"""Feature autoencoder head: a 1x1-convolution autoencoder on the backbone's aggregated features.

Each location's feature vector (the PatchCore aggregation of the two taps, standardised with the
fit set's per-channel mean and std) is squeezed through a bottleneck and reconstructed; the
per-location mean squared reconstruction error is the anomaly map. Layout (issue 5): encoder
C -> (C+2L)/2 -> 2L -> L, each a 1x1 conv + BatchNorm + ReLU, mirrored decoder whose last layer is
a plain 1x1 conv back to C, latent L = 50 by default.

The reconstruction-error threshold (mean + 3 sigma of the image scores on held-out normal images)
is recorded in the manifest entry; the fused decision uses the calibrated probability instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoweld.train.feature_maps import (
    aggregate_taps,
    batch_order,
    channel_statistics,
    collect_features,
)
from autoweld.train.heads import ExportHead, HeadContext, register_head, settings_from_mapping

log = logging.getLogger(__name__)

THRESHOLD_RULE = "mean+3sigma"


@dataclass(frozen=True)
class FeatureAEConfig:
    """Training settings of the feature autoencoder (the recipe's ``[<profile>.feature_ae]``)."""

    latent_dim: int = 50
    steps: int = 400
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5

    def __post_init__(self) -> None:
        for field in ("latent_dim", "steps", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"feature_ae.{field} must be a positive int, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"feature_ae.learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"feature_ae.weight_decay must be >= 0, got {self.weight_decay!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FeatureAEConfig:
        return settings_from_mapping(cls, values, "feature_ae")


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FeatureAutoencoder(nn.Module):
    """The 1x1-conv autoencoder itself: ``[N, C, h, w] -> [N, C, h, w]``."""

    def __init__(self, channels: int, latent_dim: int = 50) -> None:
        super().__init__()
        if channels < 1 or latent_dim < 1:
            raise ValueError(f"channels and latent_dim must be >= 1, got {channels}, {latent_dim}")
        middle = (channels + 2 * latent_dim) // 2
        self.encoder = nn.Sequential(
            _block(channels, middle),
            _block(middle, 2 * latent_dim),
            _block(2 * latent_dim, latent_dim),
        )
        self.decoder = nn.Sequential(
            _block(latent_dim, 2 * latent_dim),
            _block(2 * latent_dim, middle),
            nn.Conv2d(middle, channels, kernel_size=1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder(self.encoder(features))


class FeatureAEHead(ExportHead):
    """Map head ``feature_ae``: per-location mean squared reconstruction error ``[N, h, w]``."""

    name = "feature_ae"
    kind = "map"
    output_name = "feature_ae_map"

    def __init__(
        self,
        channels: int | Sequence[int],
        config: FeatureAEConfig | None = None,
        seed: int = 0,
        stride: int = 8,
    ) -> None:
        super().__init__()
        self.stride = int(stride)  # of the shallower backbone tap: sets the map grid
        self.config = config or FeatureAEConfig()
        self.seed = seed
        self.channels = int(channels) if isinstance(channels, int) else int(sum(channels))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.autoencoder = FeatureAutoencoder(self.channels, self.config.latent_dim)
        self.register_buffer("feature_mean", torch.zeros(1, self.channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, self.channels, 1, 1))
        self.fitted = False
        # set by fit_validation from held-out normal images
        self.threshold: float | None = None
        self.threshold_stats: dict[str, float] = {}
        self.training_summary: dict[str, Any] = {}
        self.loss_history: list[float] = []
        self.eval()

    def standardise(self, aggregated: Tensor) -> Tensor:
        return (aggregated - self.feature_mean) / self.feature_std

    def error_map(self, standardised: Tensor) -> Tensor:
        """Per-location mean over channels of the squared reconstruction error."""
        reconstruction = self.autoencoder(standardised)
        return (standardised - reconstruction).pow(2).mean(dim=1)

    def forward(self, image: Tensor, features: list[Tensor]) -> Tensor:
        del image  # this head reads the backbone features only
        return self.error_map(self.standardise(aggregate_taps(features)))

    def feature_map_size(self, image_size: int) -> tuple[int, int]:
        side = -(-image_size // self.stride)  # the shallower tap's grid; SAME padding rounds up
        return (side, side)

    def fit(self, extractor: nn.Module, batches: Sequence[Tensor]) -> None:
        """Standardise with the fit set's channel statistics, then train with MSE (Adam,
        ``config.steps`` mini-batches of whole images, seeded)."""
        _, features = collect_features(
            extractor, batches, keep_images=False, desc="feature_ae: features"
        )
        if features.shape[1] != self.channels:
            raise ValueError(
                f"feature_ae: built for {self.channels} channels, the backbone gives "
                f"{features.shape[1]}"
            )
        count = features.shape[0]
        if count * features.shape[2] * features.shape[3] < 2:
            raise ValueError("feature_ae: batch norm needs more than one feature vector to fit")
        mean, std = channel_statistics(features)
        self.feature_mean.copy_(mean.view_as(self.feature_mean))
        self.feature_std.copy_(std.view_as(self.feature_std))
        standardised = self.standardise(features)
        del features

        config = self.config
        optimiser = torch.optim.Adam(
            self.autoencoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        batches_idx = batch_order(count, config.batch_size, config.steps, self.seed)
        self.train()
        losses: list[float] = []
        started = time.perf_counter()
        bar = tqdm(batches_idx, desc="feature_ae: training", unit="step", leave=False)
        for indices in bar:
            batch = standardised[torch.from_numpy(indices)]
            loss = (self.autoencoder(batch) - batch).pow(2).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        seconds = time.perf_counter() - started
        self.eval()
        self.loss_history = losses
        tail = max(1, len(losses) // 10)
        self.training_summary = {
            "steps": config.steps,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "seed": self.seed,
            "n_fit": int(count),
            "first_loss": losses[0],
            "final_loss": float(np.mean(losses[-tail:])),
            "seconds": round(seconds, 2),
        }
        self.fitted = True
        log.info(
            "feature_ae: %d steps in %.1f s, MSE %.4f -> %.4f",
            config.steps,
            seconds,
            losses[0],
            self.training_summary["final_loss"],
        )

    def fit_validation(self, extractor: nn.Module, batches: Sequence[Tensor]) -> None:
        """Threshold = mean + 3 sigma of the image scores (map maxima) of held-out normals."""
        if not self.fitted:
            raise ValueError("feature_ae: fit() must run before fit_validation()")
        _, features = collect_features(
            extractor, batches, keep_images=False, desc="feature_ae: validation"
        )
        scores = []
        with torch.no_grad():
            for start in range(0, features.shape[0], self.config.batch_size):
                chunk = self.standardise(features[start : start + self.config.batch_size])
                scores.append(self.error_map(chunk).flatten(1).amax(dim=1))
        values = torch.cat(scores).double().numpy()
        self.threshold = float(values.mean() + 3.0 * values.std())
        self.threshold_stats = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "n_normal": int(values.size),
        }
        log.info(
            "feature_ae: threshold %.4f (mean+3sigma on %d normals)", self.threshold, values.size
        )

    def manifest_entry(self) -> dict[str, Any]:
        if self.threshold is None:
            raise ValueError("feature_ae head has no threshold yet (run fit and fit_validation)")
        return {
            "channels": self.channels,
            "latent_dim": self.config.latent_dim,
            "threshold": self.threshold,
            "threshold_rule": THRESHOLD_RULE,
            "threshold_stats": dict(self.threshold_stats),
            "training": dict(self.training_summary),
        }

    def bundle_files(self) -> dict[str, np.ndarray]:
        return {}


@register_head("feature_ae")
def _build_feature_ae(context: HeadContext) -> ExportHead:
    return FeatureAEHead(
        context.channels,
        FeatureAEConfig.from_mapping(dict(context.settings)),
        seed=context.seed,
        stride=context.strides[0],
    )
