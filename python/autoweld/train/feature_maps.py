"""Helpers the map heads share: backbone-tap aggregation and per-channel statistics.

The student-teacher and feature-autoencoder heads both work on the backbone's two taps aggregated
the way PatchCore aggregates them (3x3 local average, deeper tap upsampled to the stride-8 tap's
size, concatenated), so what they see is what PatchCore's memory bank is built from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def aggregate_taps(taps: Sequence[Tensor]) -> Tensor:
    """Aggregate backbone taps into one map at the first (stride-8) tap's size.

    Each tap gets a 3x3 local average (stride 1, zero padding counted, as PatchCore does); deeper
    taps are bilinearly upsampled (half-pixel centres) to the first tap's h x w; the results are
    concatenated over channels: ``[N, sum(C_i), h, w]``.
    """
    if len(taps) == 0:
        raise ValueError("taps must hold at least one feature map")
    for index, tap in enumerate(taps):
        if tap.dim() != 4:
            raise ValueError(f"taps[{index}] must be [N, C, h, w], got shape {tuple(tap.shape)}")
    size = taps[0].shape[-2:]
    parts = []
    for tap in taps:
        pooled = F.avg_pool2d(tap, kernel_size=3, stride=1, padding=1)
        if pooled.shape[-2:] != size:
            pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
        parts.append(pooled)
    return torch.cat(parts, dim=1)


def aggregate_in_batches(taps: Sequence[Tensor], batch_size: int = 32) -> Tensor:
    """``aggregate_taps`` over a whole data set of taps, a batch at a time, without gradients."""
    count = taps[0].shape[0]
    with torch.no_grad():
        chunks = [
            aggregate_taps([tap[start : start + batch_size] for tap in taps])
            for start in range(0, count, batch_size)
        ]
    return torch.cat(chunks, dim=0)


def channel_statistics(features: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation over images and locations of ``[N, C, h, w]``.

    Accumulated in float64 so large fit sets do not lose precision; the std is floored at ``eps``
    so a dead channel cannot divide by zero.
    """
    if features.dim() != 4 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [N, C, h, w], got {tuple(features.shape)}")
    flat = features.detach().transpose(0, 1).reshape(features.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False).clamp_min(eps)
    return mean.float(), std.float()


def check_fit_inputs(name: str, images: Tensor | None, taps: Sequence[Tensor]) -> int:
    """Check a data set handed to a head's trainer; returns its image count."""
    if len(taps) == 0:
        raise ValueError(f"{name}: taps must hold the backbone feature maps, got none")
    count = taps[0].shape[0]
    if count == 0:
        raise ValueError(f"{name}: needs at least one image, got an empty set")
    for index, tap in enumerate(taps):
        if tap.dim() != 4 or tap.shape[0] != count:
            raise ValueError(
                f"{name}: taps[{index}] must be [N={count}, C, h, w], got {tuple(tap.shape)}"
            )
        if not torch.isfinite(tap).all():
            raise ValueError(f"{name}: taps[{index}] holds NaN or Inf")
    if images is not None:
        if images.dim() != 4 or images.shape[0] != count or images.shape[1] != 3:
            raise ValueError(
                f"{name}: images must be [N={count}, 3, S, S], got {tuple(images.shape)}"
            )
        if not torch.isfinite(images).all():
            raise ValueError(f"{name}: images hold NaN or Inf")
    return count


def batch_order(count: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """Deterministic mini-batch indices for ``steps`` steps: reshuffled epochs, seeded."""
    rng = np.random.default_rng(seed)
    batches: list[np.ndarray] = []
    order = rng.permutation(count)
    position = 0
    size = min(batch_size, count)
    while len(batches) < steps:
        if position + size > count:
            order = rng.permutation(count)
            position = 0
        batches.append(order[position : position + size])
        position += size
    return batches
