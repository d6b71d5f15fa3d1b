"""Calibration: Platt scaling per head, fusion weights, the decision threshold.

Platt's convention (as in the bundle): ``p = 1 / (1 + exp(a * s + b))``, so a good anomaly score
(higher = more anomalous) gets ``a < 0``. :func:`fit_calibration` is what export runs: it fits
all three on the raw head scores of the calibration data and returns a
:class:`CalibrationSummary`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from autoweld.bundle import Calibration

logger = logging.getLogger(__name__)

__all__ = [
    "CalibrationSummary",
    "ThresholdChoice",
    "choose_threshold",
    "fit_calibration",
    "fit_fusion_weights",
    "fit_platt",
    "platt",
]

THRESHOLD_METHODS = ("best_f1", "target_frr")


def _check_scores_labels(scores: np.ndarray, labels: np.ndarray, name: str) -> tuple:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise ValueError(
            f"{name} and labels must have the same length, got {scores.shape} and {labels.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} holds NaN or Inf")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    labels = labels.astype(np.int64)
    if labels.min() == labels.max():
        raise ValueError("labels: calibration needs both normal (0) and anomalous (1) examples")
    return scores, labels


def platt(scores: np.ndarray, a: float, b: float) -> np.ndarray:
    """``1 / (1 + exp(a*s + b))`` in float64, computed without overflow (the bundle's
    :meth:`~autoweld.bundle.Calibration.probability`)."""
    return Calibration(a=a, b=b).probability(scores)


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Regularised Platt scaling (Platt 1999): fit (a, b) by maximum likelihood against smoothed
    targets ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)``, which keeps the fit finite on separable
    data. Scores are standardised for the optimiser and (a, b) mapped back."""
    s, y = _check_scores_labels(scores, labels, "scores")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    target = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    mu, sigma = float(s.mean()), float(s.std())
    if sigma == 0.0:
        sigma = 1.0
    z = (s - mu) / sigma

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        u = theta[0] * z + theta[1]  # p = sigmoid(-u)
        # -[t log p + (1-t) log(1-p)], log p = -logaddexp(0, u), log(1-p) = u - logaddexp(0, u)
        lse = np.logaddexp(0.0, u)
        value = float(np.sum(lse - (1.0 - target) * u))
        p = np.exp(-lse)
        grad_u = (1.0 - p) - (1.0 - target)
        return value, np.array([np.sum(grad_u * z), np.sum(grad_u)])

    prior = np.log((n_neg + 1.0) / (n_pos + 1.0))
    result = minimize(loss, np.array([0.0, prior]), jac=True, method="L-BFGS-B")
    a_z, b_z = (float(v) for v in result.x)
    a = a_z / sigma
    b = b_z - a_z * mu / sigma
    logger.debug("platt: a=%.6g b=%.6g (converged=%s)", a, b, result.success)
    return a, b


def fit_fusion_weights(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the binary cross-entropy of the fused
    probability ``sum_j w_j p_j`` (SLSQP). One model gives ``[1.0]``."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probabilities must be (N, m), got shape {p.shape}")
    _check_scores_labels(p, labels, "probabilities")
    y = np.asarray(labels, dtype=np.float64)
    m = p.shape[1]
    if m == 1:
        return np.ones(1)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    eps = 1e-12

    def bce(w: np.ndarray) -> float:
        q = np.clip(p @ w, eps, 1 - eps)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    result = minimize(
        bce,
        np.full(m, 1.0 / m),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}],
    )
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


@dataclass(frozen=True)
class ThresholdChoice:
    """The decision threshold on the fused probability (FAIL when fused >= threshold)."""

    threshold: float
    method: str
    target_frr: float | None
    f1: float
    frr: float  # normals rejected (false FAILs) on the calibration data
    far: float  # anomalies accepted (false PASSes) on the calibration data


def _rates(fused: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float, float]:
    fail = fused >= t
    tp = float(np.sum(fail & (y == 1)))
    fp = float(np.sum(fail & (y == 0)))
    fn = float(np.sum(~fail & (y == 1)))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return f1, fp / max(float(np.sum(y == 0)), 1.0), fn / max(float(np.sum(y == 1)), 1.0)


def _probability_threshold(threshold: float) -> float:
    """Keep a threshold on a probability inside (0, 1].

    Above 1 no part could ever FAIL (a fused probability never exceeds 1); at 0 every part
    would. When calibration data saturate (a normal at exactly 1.0), the threshold stays at
    1.0, so such parts are rejected rather than the threshold silently passing everything.
    """
    return float(min(max(threshold, float(np.finfo(np.float64).tiny)), 1.0))


def choose_threshold(
    fused: np.ndarray,
    labels: np.ndarray,
    method: str = "best_f1",
    target_frr: float = 0.01,
) -> ThresholdChoice:
    """Pick the threshold on calibration data.

    ``best_f1``: the threshold (midway between neighbouring distinct values) with the highest F1
    for the anomalous class. ``target_frr``: the lowest threshold whose false-reject rate on
    normals is at most ``target_frr``.
    """
    f, y = _check_scores_labels(fused, labels, "fused")
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {THRESHOLD_METHODS}, got {method!r}")
    if method == "target_frr":
        if not 0.0 <= target_frr < 1.0:
            raise ValueError(f"target_frr must be in [0, 1), got {target_frr!r}")
        normals = np.sort(f[y == 0])
        allowed = int(np.floor(target_frr * normals.size + 1e-9))
        kept = normals[normals.size - allowed - 1]  # highest normal that must still pass
        above = normals[normals > kept]
        threshold = float((kept + above[0]) / 2) if above.size else float(np.nextafter(kept, 2.0))
        threshold = _probability_threshold(threshold)
        f1, frr, far = _rates(f, y, threshold)
        return ThresholdChoice(threshold, method, float(target_frr), f1, frr, far)
    values = np.unique(f)
    candidates = np.concatenate(
        [[values[0]], (values[:-1] + values[1:]) / 2, [np.nextafter(values[-1], np.inf)]]
    )
    best: tuple[float, float] | None = None
    for t in candidates:
        t = _probability_threshold(float(t))
        f1, _, _ = _rates(f, y, t)
        if best is None or f1 > best[0]:
            best = (f1, float(t))
    assert best is not None
    f1, frr, far = _rates(f, y, best[1])
    return ThresholdChoice(best[1], method, None, f1, frr, far)


@dataclass
class CalibrationSummary:
    """What calibration found, on the calibration data (never the test split)."""

    source: str
    n_normal: int
    n_anomalous: int
    platt: dict[str, tuple[float, float]]
    fusion_weights: dict[str, float]
    threshold: float
    threshold_method: str
    f1: float
    frr: float
    far: float
    target_frr: float | None = None  # the FRR asked for with ``target_frr``, else None


def fit_calibration(
    raw_scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    method: str = "best_f1",
    target_frr: float = 0.01,
    source: str,
) -> CalibrationSummary:
    """Platt per head, fusion weights over the heads' probabilities, then the threshold on the
    fused probability, all fitted on the same calibration data.

    ``raw_scores``: head name -> raw image scores, in head order (the fusion weights are fitted
    on the probabilities stacked in this order). ``labels``: 0 normal, 1 anomalous. ``source``
    says where the calibration data came from (``"synthesised"`` or ``"val_root"``).
    """
    names = list(raw_scores)
    if not names:
        raise ValueError("raw_scores: calibration needs at least one head")
    platt_params = {name: fit_platt(raw_scores[name], labels) for name in names}
    probabilities = np.stack(
        [platt(raw_scores[name], *platt_params[name]) for name in names], axis=1
    )
    weights = fit_fusion_weights(probabilities, labels)
    choice = choose_threshold(probabilities @ weights, labels, method=method, target_frr=target_frr)
    labels = np.asarray(labels)
    return CalibrationSummary(
        source=source,
        n_normal=int(np.sum(labels == 0)),
        n_anomalous=int(np.sum(labels == 1)),
        platt=platt_params,
        fusion_weights={n: float(w) for n, w in zip(names, weights, strict=True)},
        threshold=choice.threshold,
        threshold_method=choice.method,
        f1=choice.f1,
        frr=choice.frr,
        far=choice.far,
        target_frr=choice.target_frr,
    )
