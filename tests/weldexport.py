"""A small real weld bundle for tests that need one (Lite0 at 128 px), exported from a small
generated weld category of its own name; shared so the export recipe lives in one place."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def export_small_weld(root: Path, category: str, seed: int) -> tuple[Path, Path]:
    """``(bundle_dir, data_root)``: the bundle, and the data root holding ``category`` in the
    MVTec AD layout (its test split was never used for fitting or calibration)."""
    pytest.importorskip("torch", reason="exporting a weld bundle needs the train extra")
    pipeline = pytest.importorskip("autoweld.export.pipeline")
    from autoweld.data import generate_weld

    generated = generate_weld(
        root / "gen",
        seed=seed,
        n_train=24,
        n_test_good=4,
        n_test_per_defect=1,
        image_size=128,
        progress=False,
    )
    # A category name of its own: "weld" would make the exporter regenerate the full-size set.
    data_root = root / "data"
    data_root.mkdir()
    shutil.move(str(generated), str(data_root / category))
    result = pipeline.export_category(
        pipeline.ExportOptions(
            category=category,
            data_root=data_root,
            out_dir=root / "bundles",
            recipe="weld",
            image_size=128,
            save_reference=False,
        )
    )
    return result.bundle_dir, data_root
