"""Painted defects: exact masks, untouched surroundings, placement, and bead estimation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoweld.data import (
    WELD_DEFECT_TYPES,
    estimate_bead,
    render_weld,
    synthesize_anomaly,
    synthesize_defect,
)


def _weld(seed: int, size: int = 256):
    return render_weld(np.random.default_rng(seed), size)


def _gray_delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)


@pytest.mark.parametrize("kind", WELD_DEFECT_TYPES)
@pytest.mark.parametrize("given_bead", [True, False])
def test_mask_is_exactly_where_pixels_changed(kind: str, given_bead: bool) -> None:
    for seed in range(3):
        image, geom = _weld(seed)
        before = image.copy()
        out, mask = synthesize_defect(
            image, kind, np.random.default_rng(100 + seed), bead=geom if given_bead else None
        )
        np.testing.assert_array_equal(image, before)  # the input is not modified
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.dtype == bool and mask.shape == image.shape[:2]
        assert mask.sum() >= 8, kind
        changed = (out != image).any(axis=2)
        assert not (changed & ~mask).any(), "pixels outside the mask changed"
        # The defect is visible: most masked pixels changed, and clearly so on average.
        assert changed[mask].mean() > 0.7, kind
        assert _gray_delta(out, image)[mask].mean() > 20, kind


@pytest.mark.parametrize("kind", WELD_DEFECT_TYPES)
def test_defects_sit_where_they_belong_on_the_weld(kind: str) -> None:
    """Pores and burn-through on the bead, spatter beside it, grooves at its toe."""
    for seed in range(4):
        image, geom = _weld(seed)
        _, mask = synthesize_defect(image, kind, np.random.default_rng(seed), bead=geom)
        s, d = geom.frame(*image.shape[:2])
        rel = np.abs(d[mask]) / geom.half_width  # 0 on the centre line, 1 at the toes
        if kind in ("porosity", "burn_through"):
            assert np.median(rel) < 0.9, (kind, np.median(rel))
        elif kind == "spatter":
            assert np.median(rel) > 1.05, (kind, np.median(rel))
        elif kind in ("undercut", "lack_of_fusion"):
            assert 0.65 < np.median(rel) < 1.5, (kind, np.median(rel))
        # Every defect is mostly inside the image and not the whole image.
        assert mask.mean() < 0.1


def test_same_rng_same_defect() -> None:
    image, geom = _weld(0)
    for kind in WELD_DEFECT_TYPES:
        a = synthesize_defect(image, kind, np.random.default_rng(7), bead=geom)
        b = synthesize_defect(image, kind, np.random.default_rng(7), bead=geom)
        c = synthesize_defect(image, kind, np.random.default_rng(8), bead=geom)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[1], c[1])


def test_bead_estimate_is_close_to_truth() -> None:
    for seed in range(12):
        image, truth = _weld(seed)
        guess = estimate_bead(image)
        assert abs(guess.center_y - truth.center_y) < 0.3 * truth.half_width, seed
        assert abs(guess.angle - truth.angle) < math.radians(3), seed
        assert 0.6 < guess.half_width / truth.half_width < 1.5, seed


def test_featureless_image_still_gets_a_defect_in_view() -> None:
    blank = np.full((64, 96, 3), 128, np.uint8)
    guess = estimate_bead(blank)
    assert abs(guess.center_y - 31.5) < 1 and abs(guess.angle) < 1e-6
    for kind in WELD_DEFECT_TYPES:
        out, mask = synthesize_defect(blank, kind, np.random.default_rng(1))
        assert mask.sum() >= 4 and not (out[~mask] != blank[~mask]).any()


@pytest.mark.parametrize("kind", ["cut_paste", "scratch", "blob", None])
def test_generic_anomaly_on_any_surface(kind) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    surface = np.stack([xx % 40 * 6, yy % 30 * 8, (xx + yy) % 50 * 5], -1).astype(np.uint8)
    surface = np.clip(surface + rng.integers(0, 20, surface.shape), 0, 255).astype(np.uint8)
    for seed in range(4):
        out, mask = synthesize_anomaly(surface, np.random.default_rng(seed), kind=kind)
        assert mask.any() and mask.mean() < 0.2
        changed = (out != surface).any(axis=2)
        assert not (changed & ~mask).any()
        assert changed[mask].mean() > 0.5


def test_bad_arguments_are_named() -> None:
    image, _ = _weld(0, 128)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind"):
        synthesize_defect(image, "rust", rng)
    with pytest.raises(ValueError, match="rng"):
        synthesize_defect(image, "crack", 0)
    with pytest.raises(ValueError, match="image"):
        synthesize_defect(image[..., 0], "crack", rng)
    with pytest.raises(ValueError, match="image"):
        synthesize_defect(image.astype(np.float32), "crack", rng)
    with pytest.raises(ValueError, match="image"):
        synthesize_defect(image[:16, :16], "crack", rng)
    with pytest.raises(ValueError, match="bead"):
        synthesize_defect(image, "crack", rng, bead=(1, 2, 3))
    with pytest.raises(ValueError, match="kind"):
        synthesize_anomaly(image, rng, kind="smudge")
    with pytest.raises(ValueError, match="image"):
        synthesize_anomaly([[1, 2]], rng)


def test_perlin_anomaly_changes_only_its_mask_and_varies() -> None:
    from autoweld.data import synthesize_perlin_anomaly

    rng = np.random.default_rng(0)
    surface = rng.integers(60, 200, (96, 96, 3)).astype(np.uint8)
    areas = []
    for seed in range(6):
        out, mask = synthesize_perlin_anomaly(surface, np.random.default_rng(seed))
        assert mask.dtype == bool and mask.sum() >= 16 and mask.mean() < 0.4
        changed = (out != surface).any(axis=2)
        assert not (changed & ~mask).any()
        assert changed[mask].mean() > 0.5
        areas.append(int(mask.sum()))
    assert len(set(areas)) > 3  # several sizes, not one stamp
    again, _ = synthesize_perlin_anomaly(surface, np.random.default_rng(5))
    assert (again == out).all()


@pytest.mark.parametrize("kind", ["speck", "hairline"])
def test_subtle_anomaly_is_small_in_the_surfaces_tones_and_only_in_its_mask(kind) -> None:
    from autoweld.data import synthesize_subtle_anomaly

    rng = np.random.default_rng(0)
    surface = rng.integers(90, 170, (128, 128, 3)).astype(np.uint8)
    areas = []
    for seed in range(6):
        out, mask = synthesize_subtle_anomaly(surface, np.random.default_rng(seed), kind=kind)
        assert mask.dtype == bool and mask.sum() >= 4
        assert mask.mean() < 0.05  # small or thin: the hard end, not another blob
        changed = (out != surface).any(axis=2)
        assert not (changed & ~mask).any()
        assert changed[mask].mean() > 0.5
        # a grey surface stays grey: the tone is the surface's own, darker or brighter
        spread = out[mask].astype(int).max(axis=1) - out[mask].astype(int).min(axis=1)
        assert np.median(spread) <= 40
        areas.append(int(mask.sum()))
    assert len(set(areas)) > 3
    again, _ = synthesize_subtle_anomaly(surface, np.random.default_rng(5), kind=kind)
    assert (again == out).all()
    with pytest.raises(ValueError, match="kind"):
        synthesize_subtle_anomaly(surface, rng, kind="faint")
