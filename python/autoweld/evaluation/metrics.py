"""Evaluation metrics: image AUROC, pixel AUROC and AUPRO (numpy + cv2 only, no scikit-learn).

- AUROC is the probability that a randomly drawn anomalous sample scores higher than a randomly
  drawn normal one, ties counting one half (the Mann-Whitney U statistic); this equals the area
  under the ROC curve with ties handled as one step.
- AUPRO follows the MVTec AD definition (Bergmann et al., IJCV 2021): ground-truth regions are the
  8-connected components of every mask; at each threshold the per-region overlap (PRO) is the mean,
  over all regions of all images, of the fraction of the region's pixels at or above the threshold,
  and the false-positive rate is the fraction of all normal pixels at or above it. PRO is
  integrated over FPR from 0 to ``max_fpr`` (0.3) with the trapezoid rule, interpolating at
  ``max_fpr``, and divided by ``max_fpr`` so a perfect result is 1. Every distinct score is a
  threshold, so the curve is exact, not sampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["aupro", "auroc", "pixel_auroc", "pro_curve"]


def _as_labels(labels: np.ndarray | Sequence[int], name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.dtype == bool:
        return array
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be 0/1 or boolean")
    return array.astype(bool)


def auroc(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]) -> float:
    """Area under the ROC curve; ``labels`` are 1/True for anomalous. Ties count one half.

    Raises ``ValueError`` when the inputs differ in length, hold NaN, or only one class occurs.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = _as_labels(labels, "labels").ravel()
    if scores.shape != truth.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({truth.size}) differ in length")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or Inf")
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both normal and anomalous samples")
    # Average ranks (1-based) with ties sharing the mean rank; U = sum of positive ranks - min.
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _stack(maps: np.ndarray | Sequence[np.ndarray], masks: np.ndarray | Sequence[np.ndarray]):
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} anomaly maps but {len(masks)} masks")
    if len(maps) == 0:
        raise ValueError("no anomaly maps given")
    for i, (m, g) in enumerate(zip(maps, masks, strict=True)):
        if np.shape(m) != np.shape(g) or np.ndim(m) != 2:
            raise ValueError(
                f"anomaly map {i} has shape {np.shape(m)}, its mask {np.shape(g)} (need equal 2-D)"
            )
    return maps, masks


def pixel_auroc(
    maps: np.ndarray | Sequence[np.ndarray], masks: np.ndarray | Sequence[np.ndarray]
) -> float:
    """AUROC over all pixels of all images (mask > 0 is anomalous). Maps may differ in size."""
    maps, masks = _stack(maps, masks)
    scores = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])
    truth = np.concatenate([(np.asarray(g) > 0).ravel() for g in masks])
    return auroc(scores, truth)


def pro_curve(
    maps: np.ndarray | Sequence[np.ndarray], masks: np.ndarray | Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct score, fpr ascending, starting at (0, 0). See module doc."""
    maps, masks = _stack(maps, masks)
    scores_list, fp_list, pro_list = [], [], []
    n_regions = 0
    n_normal = 0
    for anomaly_map, mask in zip(maps, masks, strict=True):
        truth = (np.asarray(mask) > 0).astype(np.uint8)
        count, labels = cv2.connectedComponents(truth, connectivity=8)
        pro_change = np.zeros(truth.shape, dtype=np.float64)
        if count > 1:
            sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
            inverse = np.zeros(count, dtype=np.float64)
            inverse[1:] = 1.0 / sizes[1:]
            pro_change = inverse[labels]
        n_regions += count - 1
        n_normal += int((truth == 0).sum())
        scores_list.append(np.asarray(anomaly_map, dtype=np.float64).ravel())
        fp_list.append((truth == 0).ravel())
        pro_list.append(pro_change.ravel())
    if n_regions == 0:
        raise ValueError("AUPRO needs at least one anomalous region in the masks")
    if n_normal == 0:
        raise ValueError("AUPRO needs normal pixels in the masks")
    scores = np.concatenate(scores_list)
    if not np.isfinite(scores).all():
        raise ValueError("anomaly maps contain NaN or Inf")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    fpr = np.cumsum(np.concatenate(fp_list)[order]) / n_normal
    pro = np.cumsum(np.concatenate(pro_list)[order]) / n_regions
    # A threshold admits every pixel with that score at once: keep the last of each tied block.
    keep = np.append(np.diff(sorted_scores) != 0, True)
    fpr = np.clip(np.concatenate(([0.0], fpr[keep])), 0.0, 1.0)
    pro = np.clip(np.concatenate(([0.0], pro[keep])), 0.0, 1.0)
    return fpr, pro


def aupro(
    maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    max_fpr: float = 0.3,
) -> float:
    """Area under the PRO curve up to ``max_fpr``, normalised by ``max_fpr`` (MVTec AD)."""
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(maps, masks)
    inside = fpr <= max_fpr
    x = fpr[inside]
    y = pro[inside]
    if x[-1] < max_fpr:
        # interpolate PRO at max_fpr between the last point inside and the first one beyond
        beyond = np.flatnonzero(~inside)
        if beyond.size:
            j = beyond[0]
            x0, y0, x1, y1 = fpr[j - 1], pro[j - 1], fpr[j], pro[j]
            y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x = np.append(x, max_fpr)
            y = np.append(y, y_end)
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / max_fpr
