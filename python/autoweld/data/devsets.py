"""Development sets from real photographs, in the MVTec AD layout (``bench/build_devsets.py``).

The surfaces are texture photographs that scikit-image ships (``skimage.data``: brick, grass,
gravel), so the sets build offline and reproducibly. Each 512 px source photograph is split in
two halves: the *tune* set crops only the top half, the *held-out* set only the bottom half, so
no pixel of a held-out image was ever seen while tuning.

Defects come from sources that differ between the two sets:

* tune: ``generic`` (:func:`autoweld.data.synthesize_anomaly`: cut-paste, scratch, blob),
  ``perlin`` (:func:`autoweld.data.synthesize_perlin_anomaly`, DRAEM-style blends) and
  ``subtle`` (:func:`autoweld.data.synthesize_subtle_anomaly`: specks and hairlines). All
  three are also what export may use to make calibration anomalies.
* held-out: ``drawn`` -- written here only and used by nothing else: holes, stains, cracks and
  patches of *other* photographs pasted in. No fit, calibration or choice ever sees them.

scikit-image is a test/bench dependency; this module imports it lazily.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from autoweld.data.defects import (
    SUBTLE_KINDS,
    synthesize_anomaly,
    synthesize_perlin_anomaly,
    synthesize_subtle_anomaly,
)

logger = logging.getLogger(__name__)

__all__ = ["DEVSET_SPLITS", "DRAWN_KINDS", "SURFACES", "DevsetSpec", "build_devset", "paint_drawn"]

#: surface name -> (skimage.data function, rot90 allowed: the texture has no preferred direction)
SURFACES: dict[str, tuple[str, bool]] = {
    "brick": ("brick", False),
    "grass": ("grass", True),
    "gravel": ("gravel", True),
}
DEVSET_SPLITS = ("tune", "heldout")
DRAWN_KINDS = ("hole", "stain", "crack", "foreign")
_TUNE_KINDS = ("cut_paste", "scratch", "blob", "perlin", *SUBTLE_KINDS)
# photographs whose patches are pasted as foreign matter in the held-out set (never a surface)
_FOREIGN_SOURCES = ("camera", "coffee", "rocket", "astronaut", "chelsea", "moon")


@dataclass(frozen=True)
class DevsetSpec:
    """How many images of which size a development set holds, per surface."""

    n_train: int = 60
    n_test_good: int = 20
    n_per_defect: int = 8
    size: int = 192


def _source(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3][..., ::-1])  # RGB -> BGR


def _crop(half: np.ndarray, rng: np.random.Generator, size: int, rotate: bool) -> np.ndarray:
    h, w = half.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    crop = half[y : y + size, x : x + size]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rotate:
        crop = np.rot90(crop, int(rng.integers(0, 4)))
    return np.ascontiguousarray(crop)


def _blob_mask(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """A soft irregular region (float 0..1) somewhere inside the image."""
    cx, cy = rng.uniform(radius, size - radius, 2)
    angles = np.sort(rng.uniform(0, 2 * math.pi, 11))
    radii = radius * rng.uniform(0.5, 1.0, 11)
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [points.astype(np.int32)], 255, cv2.LINE_AA)
    return cv2.GaussianBlur(mask, (0, 0), max(1.0, radius / 6)).astype(np.float32) / 255.0


def _hole(image, rng):
    size = image.shape[0]
    alpha = _blob_mask(rng, size, rng.uniform(0.03, 0.09) * size)
    shade = rng.uniform(0.0, 0.25)
    return np.full_like(image, shade * 255.0), alpha


def _stain(image, rng):
    size = image.shape[0]
    alpha = _blob_mask(rng, size, rng.uniform(0.08, 0.2) * size) * rng.uniform(0.35, 0.7)
    tint = np.array(rng.uniform(0.3, 1.6, 3), np.float32)
    return np.clip(image * tint[None, None, :], 0, 255), alpha


def _crack(image, rng):
    size = image.shape[0]
    canvas = np.zeros((size, size), np.uint8)
    point = rng.uniform(0.2 * size, 0.8 * size, 2)
    heading = rng.uniform(0, 2 * math.pi)
    for _ in range(int(rng.integers(8, 18))):
        heading += rng.normal(0, 0.5)
        step = rng.uniform(0.02, 0.05) * size
        nxt = np.clip(point + step * np.array([math.cos(heading), math.sin(heading)]), 0, size - 1)
        cv2.line(canvas, tuple(int(v) for v in point), tuple(int(v) for v in nxt), 255, 2)
        point = nxt
    return np.full_like(image, rng.uniform(0, 40)), canvas.astype(np.float32) / 255.0


def _foreign(image, rng, foreign: list[np.ndarray]):
    size = image.shape[0]
    other = foreign[int(rng.integers(len(foreign)))]
    side = int(rng.uniform(0.12, 0.3) * size)
    y = int(rng.integers(0, other.shape[0] - side))
    x = int(rng.integers(0, other.shape[1] - side))
    ty, tx = (int(v) for v in rng.integers(0, size - side, 2))
    paint = image.copy()
    paint[ty : ty + side, tx : tx + side] = other[y : y + side, x : x + side]
    alpha = np.zeros((size, size), np.float32)
    alpha[ty : ty + side, tx : tx + side] = 1.0
    return paint, alpha


def paint_drawn(
    image: np.ndarray, kind: str, rng: np.random.Generator, foreign: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One held-out-only defect (``DRAWN_KINDS``) on a BGR uint8 image: ``(image, mask)``, the
    mask (uint8 0/255) where the painted opacity exceeds 0.3, pixels outside it unchanged."""
    painters: dict[str, Callable] = {"hole": _hole, "stain": _stain, "crack": _crack}
    base = image.astype(np.float32)
    if kind == "foreign":
        paint, alpha = _foreign(base, rng, foreign)
    else:
        paint, alpha = painters[kind](base, rng)
    alpha = np.where(alpha > 0.3, alpha, 0.0)[..., None]
    out = np.clip(base * (1 - alpha) + paint * alpha, 0, 255).round().astype(np.uint8)
    return out, ((alpha[..., 0] > 0) * 255).astype(np.uint8)


def _defect(image, kind, rng, foreign):
    if kind in DRAWN_KINDS:
        return paint_drawn(image, kind, rng, foreign)
    if kind == "perlin":
        out, mask = synthesize_perlin_anomaly(image, rng)
    elif kind in SUBTLE_KINDS:
        out, mask = synthesize_subtle_anomaly(image, rng, kind=kind)
    else:
        out, mask = synthesize_anomaly(image, rng, kind=kind)
    return out, ((mask > 0) * 255).astype(np.uint8)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def build_devset(
    out: str | Path, split: str, seed: int = 0, spec: DevsetSpec | None = None
) -> list[str]:
    """Write one development set (``split``: ``tune`` or ``heldout``) under ``OUT/SPLIT/``, one
    MVTec-layout category per surface; returns the category names. Same seed, same bytes."""
    if split not in DEVSET_SPLITS:
        raise ValueError(f"split must be one of {DEVSET_SPLITS}, got {split!r}")
    spec = spec or DevsetSpec()
    kinds = _TUNE_KINDS if split == "tune" else DRAWN_KINDS
    foreign = [_source(name) for name in _FOREIGN_SOURCES] if split == "heldout" else []
    root = Path(out) / split
    for index, (surface, (source, rotate)) in enumerate(sorted(SURFACES.items())):
        photo = _source(source)
        half = photo[: photo.shape[0] // 2] if split == "tune" else photo[photo.shape[0] // 2 :]
        rng = np.random.default_rng([seed, index, DEVSET_SPLITS.index(split)])
        folder = root / surface
        for i in range(spec.n_train):
            _write(folder / "train" / "good" / f"{i:03d}.png", _crop(half, rng, spec.size, rotate))
        for i in range(spec.n_test_good):
            _write(folder / "test" / "good" / f"{i:03d}.png", _crop(half, rng, spec.size, rotate))
        for kind in kinds:
            for i in range(spec.n_per_defect):
                image, mask = _defect(_crop(half, rng, spec.size, rotate), kind, rng, foreign)
                _write(folder / "test" / kind / f"{i:03d}.png", image)
                _write(folder / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
        logger.info("devset %s/%s written", split, surface)
    return sorted(SURFACES)
