"""Evaluation of a bundle on its test split: the metrics (image AUROC, pixel AUROC, AUPRO) and
:func:`evaluate`, which ``autoweld-eval`` runs. Uses the runtime; never imports torch."""

from autoweld.evaluation.evaluate import Metrics, evaluate, format_table, spread_samples
from autoweld.evaluation.metrics import aupro, auroc, pixel_auroc, pro_curve

__all__ = [
    "Metrics",
    "aupro",
    "auroc",
    "evaluate",
    "format_table",
    "pixel_auroc",
    "pro_curve",
    "spread_samples",
]
