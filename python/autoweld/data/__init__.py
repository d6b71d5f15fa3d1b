"""Datasets: the MVTec AD folder layout and the built-in synthetic ``weld`` category.

numpy + OpenCV only: ``autoweld-eval`` uses this package on stations without torch.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from autoweld.data.defects import (
    WELD_DEFECT_TYPES,
    BeadGeometry,
    estimate_bead,
    synthesize_anomaly,
    synthesize_defect,
    synthesize_perlin_anomaly,
    synthesize_subtle_anomaly,
)
from autoweld.data.mvtec import (
    IMAGE_SUFFIXES,
    Category,
    Sample,
    default_data_root,
    read_image,
    read_mask,
    read_mvtec,
    split_train,
)
from autoweld.data.weld import WeldParams, ensure_weld, generate_weld, render_weld

__all__ = [
    "IMAGE_SUFFIXES",
    "WELD_DEFECT_TYPES",
    "BeadGeometry",
    "Category",
    "Sample",
    "WeldParams",
    "default_data_root",
    "ensure_weld",
    "estimate_bead",
    "generate_weld",
    "load_category",
    "read_image",
    "read_mask",
    "read_mvtec",
    "render_weld",
    "split_train",
    "synthesize_anomaly",
    "synthesize_defect",
    "synthesize_perlin_anomaly",
    "synthesize_subtle_anomaly",
]

logger = logging.getLogger(__name__)

WELD = "weld"


def load_category(
    name: str,
    data_root: str | Path | None = None,
    *,
    seed: int = 0,
    weld_params: WeldParams | None = None,
) -> Category:
    """Load a dataset category.

    ``"weld"`` is the built-in synthetic category: ``DATA_ROOT/weld`` is generated first when it
    is missing or was generated with another seed, size or generator version. Any other name is
    read from ``DATA_ROOT/NAME`` in the MVTec AD layout. ``data_root`` defaults to
    ``$AUTOWELD_DATA`` or ``~/.cache/autoweld/data``. ``weld_params`` changes the generated
    sizes (default ``WeldParams()``); it is ignored for other categories.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"name must be a category folder name, got {name!r}")
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if name != WELD:
        return read_mvtec(root / name, name)
    params = weld_params if weld_params is not None else WeldParams()
    if not isinstance(params, WeldParams):
        raise ValueError(f"weld_params must be a WeldParams or None, got {params!r}")
    folder = ensure_weld(root, seed=seed, params=params)
    category = read_mvtec(folder, name)
    expected_test = params.n_test_good + params.n_test_per_defect * len(WELD_DEFECT_TYPES)
    if len(category.train) != params.n_train or len(category.test) != expected_test:
        # Files were removed or added behind the stamp's back: rebuild rather than train on it.
        logger.warning("%s does not match its stamp; regenerating", folder)
        folder = generate_weld(root, seed=seed, **asdict(params))
        category = read_mvtec(folder, name)
    return category
