"""Latency statistics: percentiles of samples in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["LatencySummary", "median", "percentile", "ratio", "summarize"]


def _samples(samples_ms: Sequence[float], name: str = "samples_ms") -> np.ndarray:
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite (found NaN or Inf)")
    return values


def percentile(samples_ms: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default, "type 7"): for ``1..100`` the 95th percentile is 95.05."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be a number in [0, 100], got {q!r}")
    return float(np.percentile(_samples(samples_ms), q))


def median(samples: Sequence[float]) -> float:
    """The median (the mean of the two middle values for an even count)."""
    return percentile(samples, 50.0)


@dataclass(frozen=True)
class LatencySummary:
    """One stage's latency distribution, in milliseconds (keys of ``autoweld-bench --json``)."""

    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    min_ms: float

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key] = value if key == "n" else round(float(value), 4)
        return out


def summarize(samples_ms: Sequence[float]) -> LatencySummary:
    """p50, p95, p99, max, mean and min of latency samples in ms."""
    values = _samples(samples_ms)
    p50, p95, p99 = np.percentile(values, [50.0, 95.0, 99.0])
    return LatencySummary(
        n=int(values.size),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        max_ms=float(values.max()),
        mean_ms=float(values.mean()),
        min_ms=float(values.min()),
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing, not finite or zero."""
    if numerator is None or denominator is None:
        return None
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return None
    return numerator / denominator
