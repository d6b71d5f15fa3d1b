"""Reader for the MVTec AD folder layout.

```
NAME/train/good/*.png
NAME/test/good/*
NAME/test/<defect>/*
NAME/ground_truth/<defect>/<stem>_mask.png      (mask > 0 = defect)
```

Images may be PNG, JPEG, BMP or TIFF (any letter case); gray files come back as three channels.
Everything is returned in sorted order so that two runs over the same tree agree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "Category",
    "Sample",
    "default_data_root",
    "read_image",
    "read_mask",
    "read_mvtec",
    "split_train",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
GOOD = "good"


def default_data_root() -> Path:
    """Where datasets live when no ``data_root`` is given: ``$AUTOWELD_DATA`` or
    ``~/.cache/autoweld/data``."""
    env = os.environ.get("AUTOWELD_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "autoweld" / "data"


def _decode(path: Path, flags: int) -> np.ndarray:
    # np.fromfile + imdecode instead of imread: imread cannot open non-ASCII paths on Windows and
    # returns None silently for a missing file.
    try:
        buffer = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise FileNotFoundError(f"cannot read image file {path}: {error}") from error
    image = cv2.imdecode(buffer, flags) if buffer.size else None
    if image is None:
        raise ValueError(f"cannot decode image file {path} (corrupt or unsupported format)")
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 ``(H, W, 3)``; gray, 16-bit and alpha files are converted."""
    image = _decode(Path(path), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(image)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask file as bool ``(H, W)``: any value > 0 is defect."""
    mask = _decode(Path(path), cv2.IMREAD_GRAYSCALE)
    return mask > 0


@dataclass(frozen=True)
class Sample:
    """One image of a category and, for a defective one, its ground-truth mask."""

    path: Path
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" or the defect folder name
    mask_path: Path | None = None

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {self.label!r}")
        if (self.label == 0) != (self.defect_type == GOOD):
            raise ValueError(
                f"label {self.label} does not fit defect_type {self.defect_type!r} for {self.path}"
            )

    def load_image(self) -> np.ndarray:
        """The image as BGR uint8 ``(H, W, 3)``."""
        return read_image(self.path)

    def load_mask(self) -> np.ndarray:
        """The defect mask as bool ``(H, W)``, all False for a good image."""
        if self.mask_path is None:
            if self.label == 1:
                raise ValueError(f"defective sample {self.path} has no mask_path")
            return np.zeros(_image_hw(self.path), dtype=bool)
        mask = read_mask(self.mask_path)
        expected = _image_hw(self.path)
        if mask.shape != expected:
            raise ValueError(
                f"mask {self.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{self.path} is {expected[1]}x{expected[0]}"
            )
        return mask


def _image_hw(path: Path) -> tuple[int, int]:
    image = _decode(path, cv2.IMREAD_GRAYSCALE)
    return int(image.shape[0]), int(image.shape[1])


@dataclass(frozen=True)
class Category:
    """A dataset category: normal training images and the labelled test split."""

    name: str
    root: Path
    train: list[Sample] = field(repr=False)
    test: list[Sample] = field(repr=False)

    @property
    def defect_types(self) -> list[str]:
        """Sorted names of the defect types present in the test split."""
        return sorted({s.defect_type for s in self.test if s.defect_type != GOOD})

    def __repr__(self) -> str:
        return (
            f"Category(name={self.name!r}, root={str(self.root)!r}, train={len(self.train)}, "
            f"test={len(self.test)}, defect_types={self.defect_types})"
        )


def _is_image(path: Path) -> bool:
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    )


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _find_mask(gt_folder: Path, stem: str) -> Path | None:
    """``<stem>_mask.<ext>`` (the MVTec AD name), else ``<stem>.<ext>``; PNG preferred."""
    if not gt_folder.is_dir():
        return None
    by_name = {p.name.lower(): p for p in gt_folder.iterdir() if _is_image(p)}
    for base in (f"{stem}_mask", stem):
        for suffix in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"):
            hit = by_name.get((base + suffix).lower())
            if hit is not None:
                return hit
    return None


def read_mvtec(root: str | Path, name: str | None = None) -> Category:
    """Read one category folder in the MVTec AD layout.

    Raises ``FileNotFoundError`` (with the path) when the folder, ``train/good`` or ``test`` is
    missing or a defect image has no mask, and ``ValueError`` when a folder that must hold images
    holds none.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    name = name or root.name

    train_dir = root / "train" / GOOD
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{train_dir} does not exist (MVTec AD layout: NAME/train/good/)")
    train = [Sample(p, 0, GOOD, None) for p in _images_in(train_dir)]
    if not train:
        raise ValueError(
            f"{train_dir} holds no images (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )

    test_dir = root / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir} does not exist (MVTec AD layout: NAME/test/<type>/)")
    test: list[Sample] = []
    good_dir = test_dir / GOOD
    if good_dir.is_dir():
        test += [Sample(p, 0, GOOD, None) for p in _images_in(good_dir)]
    defect_dirs = sorted(
        (d for d in test_dir.iterdir() if d.is_dir() and d.name != GOOD and d.name[0] != "."),
        key=lambda d: d.name,
    )
    for defect_dir in defect_dirs:
        images = _images_in(defect_dir)
        if not images:
            logger.warning("defect folder %s holds no images; skipped", defect_dir)
            continue
        gt_dir = root / "ground_truth" / defect_dir.name
        for image_path in images:
            mask_path = _find_mask(gt_dir, image_path.stem)
            if mask_path is None:
                raise FileNotFoundError(
                    f"defect image {image_path} has no mask: expected "
                    f"{gt_dir / (image_path.stem + '_mask.png')}"
                )
            test.append(Sample(image_path, 1, defect_dir.name, mask_path))
    if not test:
        raise ValueError(f"{test_dir} holds no images in good/ or any defect folder")
    logger.debug("read %s: %d train, %d test images", root, len(train), len(test))
    return Category(name=name, root=root, train=train, test=test)


def split_train(
    samples: Sequence[Sample], val_fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split normal images into a fit part and a held-out validation part, deterministically.

    The result depends only on the set of samples (not their order), ``val_fraction`` and
    ``seed``; both parts come back sorted by path. With ``val_fraction > 0`` the validation part
    holds at least one image and the fit part keeps at least one.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    ordered = sorted(samples, key=lambda s: str(s.path))
    if len({str(s.path) for s in ordered}) != len(ordered):
        raise ValueError("samples contains the same image more than once")
    bad = [s.path for s in ordered if s.label != 0]
    if bad:
        raise ValueError(f"split_train takes normal images only; {bad[0]} is labelled defective")
    n = len(ordered)
    if val_fraction == 0:
        return list(ordered), []
    if n < 2:
        raise ValueError(f"need at least 2 samples to hold some out, got {n}")
    n_val = min(max(1, round(n * float(val_fraction))), n - 1)
    order = np.random.default_rng(int(seed)).permutation(n)
    val_idx = set(order[:n_val].tolist())
    fit = [s for i, s in enumerate(ordered) if i not in val_idx]
    val = [s for i, s in enumerate(ordered) if i in val_idx]
    return fit, val
