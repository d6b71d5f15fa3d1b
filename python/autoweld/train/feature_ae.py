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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoweld.train.feature_maps import (
    aggregate_in_batches,
    aggregate_taps,
    batch_order,
    channel_statistics,
    check_fit_inputs,
)

log = logging.getLogger(__name__)

THRESHOLD_RULE = "mean+3sigma"


@dataclass(frozen=True)
class FeatureAEConfig:
    """Training settings of the feature autoencoder (recipe section ``[feature_ae]``)."""

    latent_dim: int = 50
    steps: int = 400
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("latent_dim", "steps", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"feature_ae.{field} must be a positive int, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"feature_ae.learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"feature_ae.weight_decay must be >= 0, got {self.weight_decay!r}")


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


class FeatureAEHead(nn.Module):
    """Map head ``feature_ae``: per-location mean squared reconstruction error ``[N, h, w]``."""

    name = "feature_ae"
    kind = "map"
    output_name = "feature_ae_map"

    def __init__(
        self,
        channels: int,
        latent_dim: int = 50,
        *,
        feature_mean: Tensor | None = None,
        feature_std: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.autoencoder = FeatureAutoencoder(channels, latent_dim)
        self.channels = channels
        self.latent_dim = latent_dim
        mean = torch.zeros(channels) if feature_mean is None else feature_mean.float()
        std = torch.ones(channels) if feature_std is None else feature_std.float()
        if mean.shape != (channels,) or std.shape != (channels,):
            raise ValueError(f"feature_mean and feature_std must have shape ({channels},)")
        self.register_buffer("feature_mean", mean.view(1, channels, 1, 1).clone())
        self.register_buffer("feature_std", std.view(1, channels, 1, 1).clone())
        # set by train_feature_ae from held-out normal images
        self.threshold: float | None = None
        self.threshold_stats: dict[str, float] = {}
        self.training_summary: dict[str, Any] = {}

    def standardise(self, aggregated: Tensor) -> Tensor:
        return (aggregated - self.feature_mean) / self.feature_std

    def error_map(self, standardised: Tensor) -> Tensor:
        """Per-location mean over channels of the squared reconstruction error."""
        reconstruction = self.autoencoder(standardised)
        return (standardised - reconstruction).pow(2).mean(dim=1)

    def forward(self, image: Tensor, features: list[Tensor]) -> Tensor:
        del image  # this head reads the backbone features only
        return self.error_map(self.standardise(aggregate_taps(features)))

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "channels": self.channels,
            "latent_dim": self.latent_dim,
            "threshold": self.threshold,
            "threshold_rule": THRESHOLD_RULE,
        }
        if self.threshold_stats:
            entry["threshold_stats"] = dict(self.threshold_stats)
        if self.training_summary:
            entry["training"] = dict(self.training_summary)
        return entry

    def bundle_files(self) -> dict[str, np.ndarray]:
        return {}


def _image_scores(head: FeatureAEHead, standardised: Tensor, batch_size: int) -> np.ndarray:
    head.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, standardised.shape[0], batch_size):
            maps = head.error_map(standardised[start : start + batch_size])
            scores.append(maps.flatten(1).amax(dim=1))
    return torch.cat(scores).double().numpy()


def train_feature_ae(
    fit_taps: Sequence[Tensor],
    val_taps: Sequence[Tensor],
    config: FeatureAEConfig | None = None,
    *,
    progress: bool = True,
) -> FeatureAEHead:
    """Fit the feature autoencoder on normal images' taps and set its mean + 3 sigma threshold.

    ``fit_taps`` / ``val_taps``: the backbone taps of the fit split and of the held-out normal
    validation images (``[N, C_i, h_i, w_i]`` each). Adam, MSE, ``config.steps`` mini-batches of
    whole images, seeded; the model's global RNG use happens inside ``torch.random.fork_rng`` so a
    caller's random state is left alone.
    """
    config = config or FeatureAEConfig()
    n_fit = check_fit_inputs("feature_ae fit set", None, fit_taps)
    n_val = check_fit_inputs("feature_ae validation set", None, val_taps)
    if n_fit < 2:
        raise ValueError(f"feature_ae needs at least 2 fit images for batch norm, got {n_fit}")
    fit_features = aggregate_in_batches(list(fit_taps))
    val_features = aggregate_in_batches(list(val_taps))
    if fit_features.shape[1:] != val_features.shape[1:]:
        raise ValueError(
            f"feature_ae: fit and validation taps differ in shape: {tuple(fit_features.shape[1:])}"
            f" vs {tuple(val_features.shape[1:])}"
        )
    mean, std = channel_statistics(fit_features)
    channels = fit_features.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = FeatureAEHead(channels, config.latent_dim, feature_mean=mean, feature_std=std)
    fit_std = head.standardise(fit_features)
    val_std = head.standardise(val_features)

    optimiser = torch.optim.Adam(
        head.autoencoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    batches = batch_order(n_fit, config.batch_size, config.steps, config.seed)
    # batch norm cannot train on a single sample at a 1x1 map; whole images give h*w samples
    head.train()
    losses: list[float] = []
    started = time.perf_counter()
    for indices in tqdm(batches, desc="feature_ae", unit="step", disable=not progress):
        batch = fit_std[torch.from_numpy(indices)]
        loss = (head.autoencoder(batch) - batch).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - started
    head.eval()

    scores = _image_scores(head, val_std, config.batch_size)
    head.threshold = float(scores.mean() + 3.0 * scores.std())
    head.threshold_stats = {
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "n_normal": int(n_val),
    }
    head.training_summary = {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-max(1, len(losses) // 10) :])),
        "seconds": round(seconds, 2),
    }
    log.info(
        "feature_ae: %d steps in %.1f s, loss %.4f -> %.4f, threshold %.4f (mean+3sigma on %d)",
        config.steps,
        seconds,
        losses[0],
        head.training_summary["final_loss"],
        head.threshold,
        n_val,
    )
    return head
