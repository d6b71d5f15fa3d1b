"""The development-set builder: MVTec layout, reproducible, tune and held-out kept apart."""

import hashlib

import numpy as np
import pytest

from autoweld.data import read_mvtec
from autoweld.data.devsets import DRAWN_KINDS, DevsetSpec, build_devset, paint_drawn

pytest.importorskip("skimage.data")

TINY = DevsetSpec(n_train=3, n_test_good=2, n_per_defect=1, size=64)


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def test_devsets_are_mvtec_categories_and_reproducible(tmp_path):
    names = build_devset(tmp_path / "a", "tune", seed=3, spec=TINY)
    build_devset(tmp_path / "a", "heldout", seed=3, spec=TINY)
    build_devset(tmp_path / "b", "tune", seed=3, spec=TINY)
    assert names == ["brick", "grass", "gravel"]
    assert _digest(tmp_path / "a" / "tune") == _digest(tmp_path / "b" / "tune")
    tune = read_mvtec(tmp_path / "a" / "tune" / "grass")
    held = read_mvtec(tmp_path / "a" / "heldout" / "grass")
    assert len(tune.train) == 3
    assert {s.defect_type for s in tune.test} == {
        "good",
        "cut_paste",
        "scratch",
        "blob",
        "perlin",
        "speck",
        "hairline",
    }
    assert {s.defect_type for s in held.test} == {"good", *DRAWN_KINDS}
    for sample in held.test:
        if sample.label:
            assert sample.load_mask().any()
    tune_pixels = {s.load_image().tobytes() for s in tune.train}
    assert not tune_pixels & {s.load_image().tobytes() for s in held.train}


@pytest.mark.parametrize("kind", DRAWN_KINDS)
def test_drawn_defects_change_only_their_mask(kind):
    rng = np.random.default_rng(1)
    image = rng.integers(80, 180, (96, 96, 3)).astype(np.uint8)
    foreign = [rng.integers(0, 255, (128, 128, 3)).astype(np.uint8)]
    out, mask = paint_drawn(image, kind, np.random.default_rng(2), foreign)
    assert mask.any()
    changed = (out != image).any(axis=2)
    assert not (changed & (mask == 0)).any()
