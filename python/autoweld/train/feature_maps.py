"""Helpers the map heads share: backbone-tap aggregation and per-channel statistics.

The student-teacher and feature-autoencoder heads both work on the backbone's two taps aggregated
the way PatchCore aggregates them (3x3 local average, deeper tap upsampled to the stride-8 tap's
size, concatenated), so what they see is what PatchCore's memory bank is built from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm


def aggregate_taps(taps: Sequence[Tensor]) -> Tensor:
    """Aggregate backbone taps into one map at the first (shallower, by default stride-8) tap's size.

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


def collect_features(
    extractor: nn.Module,
    batches: Iterable[Tensor],
    *,
    keep_images: bool,
    desc: str,
    progress: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """Run the frozen backbone over ``batches`` once: (images or None, aggregated features).

    ``batches`` are preprocessed ``[n, 3, S, S]`` tensors; the aggregated features are
    ``[N, C, h, w]`` (see :func:`aggregate_taps`). Checks shapes and finiteness so a bad batch is
    a ``ValueError`` naming it, not a crash deep inside training.
    """
    images: list[Tensor] = []
    features: list[Tensor] = []
    with torch.no_grad():
        for index, batch in enumerate(
            tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress)
        ):
            if not isinstance(batch, Tensor) or batch.dim() != 4 or batch.shape[1] != 3:
                shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
                raise ValueError(f"batches[{index}] must be a [n, 3, S, S] tensor, got {shape}")
            if batch.shape[0] == 0:
                continue
            if not torch.isfinite(batch).all():
                raise ValueError(f"batches[{index}] holds NaN or Inf")
            batch = batch.float()
            features.append(aggregate_taps(extractor(batch)))
            if keep_images:
                images.append(batch)
    if not features:
        raise ValueError(f"batches: no images to {desc}")
    shapes = {tuple(f.shape[1:]) for f in features}
    if len(shapes) != 1:
        raise ValueError(f"batches: images of different sizes ({sorted(shapes)})")
    return (torch.cat(images) if keep_images else None), torch.cat(features)


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
