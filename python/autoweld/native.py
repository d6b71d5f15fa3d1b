"""Public face of the C++ core (``autoweld._native``).

Every function here checks its arguments once (dtype, shape, contiguity, emptiness, NaN/Inf
where they matter) and raises ``ValueError`` naming the argument, then calls the core with the
GIL released. ``threads=None`` means all hardware threads; the count is always per call, never a
process-wide setting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from autoweld import _native

__all__ = [
    "anomaly_map",
    "clahe",
    "hardware_threads",
    "has_avx2_fma",
    "preprocess",
    "preprocess_batch",
]


def has_avx2_fma() -> bool:
    """True when the kernels run their AVX2+FMA paths on this CPU."""
    return bool(_native.has_avx2_fma())


def hardware_threads() -> int:
    """Number of hardware threads the core uses when ``threads=None``."""
    return int(_native.hardware_threads())


def _threads(threads: int | None) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return threads


# ---- image kernels: clahe, preprocess, anomaly map ------------------------------------


def _image_u8(image: object, name: str = "image") -> np.ndarray:
    """Checks an 8-bit gray (HxW) or BGR (HxWx3) image; returns it C-contiguous.

    A non-contiguous array (a crop, a channel-reversed view) is copied once here.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.ndim == 3:
        if image.shape[2] != 3:
            raise ValueError(
                f"{name} must have 1 or 3 channels (gray HxW or BGR HxWx3), got {image.shape[2]}"
            )
    elif image.ndim != 2:
        raise ValueError(f"{name} must be HxW or HxWx3, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {image.shape}")
    if image.shape[0] > 2**31 - 1 or image.shape[1] > 2**31 - 1:
        raise ValueError(f"{name} is too large: {image.shape}")
    return np.ascontiguousarray(image)


def _clip_limit(clip_limit: object) -> float:
    if isinstance(clip_limit, bool) or not isinstance(clip_limit, (int, float, np.number)):
        raise ValueError(f"clip_limit must be a number, got {clip_limit!r}")
    value = float(clip_limit)
    if not math.isfinite(value):
        raise ValueError(f"clip_limit must be finite, got {clip_limit!r}")
    return value


def _tile_grid(tile_grid: object) -> tuple[int, int]:
    if isinstance(tile_grid, np.ndarray):
        tile_grid = tuple(tile_grid.tolist())
    if (
        not isinstance(tile_grid, Sequence)
        or len(tile_grid) != 2
        or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in tile_grid)
    ):
        raise ValueError(f"tile_grid must be a pair of ints (x, y), got {tile_grid!r}")
    tiles_x, tiles_y = int(tile_grid[0]), int(tile_grid[1])
    if tiles_x < 1 or tiles_y < 1:
        raise ValueError(f"tile_grid must be >= 1 in each direction, got {tile_grid!r}")
    if tiles_x * tiles_y > 2**16:
        raise ValueError(f"tile_grid is too large (at most 65536 tiles), got {tile_grid!r}")
    return tiles_x, tiles_y


def _sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)):
        raise ValueError(f"sigma must be a number, got {sigma!r}")
    value = float(sigma)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    return value


def _size(size: object, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {size!r}")
    if size < 1:
        raise ValueError(f"{name} must be >= 1, got {size!r}")
    if size > 16384:
        raise ValueError(f"{name} must be <= 16384, got {size!r}")
    return int(size)


def _triple(values: object, name: str, nonzero: bool = False) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers, got {values!r}") from None
    if len(triple) != 3 or not all(math.isfinite(v) for v in triple):
        raise ValueError(f"{name} must be three finite numbers, got {values!r}")
    if nonzero and any(v == 0 for v in triple):
        raise ValueError(f"{name} must not contain 0, got {values!r}")
    return triple  # type: ignore[return-value]


def clahe(
    image: np.ndarray, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8)
) -> np.ndarray:
    """Contrast limited adaptive histogram equalisation of an 8-bit image.

    Gray ``HxW``: bit-identical to ``cv2.createCLAHE(clip_limit, tile_grid).apply(image)`` for any
    size, clip limit (``<= 0`` means no clipping) and grid. Colour ``HxWx3`` (BGR): CLAHE on the L
    channel of OpenCV's 8-bit Lab, then back to BGR (the same bytes as the cv2 chain in all our
    tests, guaranteed within one grey level). ``tile_grid`` is ``(x, y)`` as in OpenCV.
    Non-contiguous input is copied. Returns a new uint8 array of the same shape.
    """
    array = _image_u8(image)
    tiles_x, tiles_y = _tile_grid(tile_grid)
    return _native.clahe(array, _clip_limit(clip_limit), tiles_x, tiles_y, 0)


def preprocess(
    image: np.ndarray,
    size: int,
    *,
    clahe: bool = True,
    clip_limit: float = 2.0,
    tile_grid: tuple[int, int] = (8, 8),
    sigma: float = 0.0,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    threads: int | None = None,
) -> np.ndarray:
    """Turns one 8-bit image into the engine's normalised float32 ``(3, size, size)`` input.

    Chain: CLAHE (``clahe=True``; on Lab lightness for colour) -> Gaussian smoothing
    (``sigma``, 0 = off; OpenCV's kernel for ``GaussianBlur(ksize=(0, 0), sigmaX=sigma)``,
    reflect-101 borders) -> area resize to ``size x size`` (``cv2.INTER_AREA`` semantics, also
    when upscaling) -> BGR to RGB -> ``(x / 255 - mean) / std`` -> CHW. ``image`` is BGR
    ``HxWx3`` or gray ``HxW`` (replicated to three channels). Within one grey level of the same
    chain done with OpenCV and numpy, fused into one pass over the image. Non-contiguous input
    is copied.
    """
    array = _image_u8(image)
    tiles_x, tiles_y = _tile_grid(tile_grid)
    return _native.preprocess(
        array,
        _size(size),
        bool(clahe),
        _clip_limit(clip_limit),
        tiles_x,
        tiles_y,
        _sigma(sigma),
        _triple(mean, "mean"),
        _triple(std, "std", nonzero=True),
        _threads(threads),
    )


def preprocess_batch(images: Sequence[np.ndarray], size: int, **options: object) -> np.ndarray:
    """:func:`preprocess` over a list of images; returns float32 ``(N, 3, size, size)``."""
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        raise ValueError("images must be a list of images")
    if len(images) == 0:
        raise ValueError("images must not be empty")
    batch = np.empty((len(images), 3, _size(size), _size(size)), dtype=np.float32)
    for index, image in enumerate(images):
        batch[index] = preprocess(image, size, **options)  # type: ignore[arg-type]
    return batch


def anomaly_map(
    patch_scores: np.ndarray,
    out_size: int | tuple[int, int],
    sigma: float = 4.0,
    threads: int | None = None,
) -> np.ndarray:
    """Upsamples patch scores to the input resolution and smooths them.

    Bilinear exactly as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``, then anomalib's separable Gaussian (kernel ``2*int(4*sigma+0.5)+1``,
    reflect padding; ``sigma=0`` skips it). ``patch_scores``: float32 ``(h, w)`` or
    ``(N, h, w)``, finite. ``out_size``: int or ``(H, W)``. Returns float32 ``(H, W)`` or
    ``(N, H, W)``. Non-contiguous input is copied.
    """
    if not isinstance(patch_scores, np.ndarray):
        raise ValueError(f"patch_scores must be a numpy array, got {type(patch_scores).__name__}")
    if patch_scores.dtype != np.float32:
        raise ValueError(f"patch_scores must have dtype float32, got {patch_scores.dtype}")
    if patch_scores.ndim not in (2, 3):
        raise ValueError(f"patch_scores must be (h, w) or (N, h, w), got {patch_scores.shape}")
    if patch_scores.size == 0:
        raise ValueError(f"patch_scores must not be empty, got shape {patch_scores.shape}")
    if not np.isfinite(patch_scores).all():
        raise ValueError("patch_scores must be finite (found NaN or Inf)")
    if isinstance(out_size, (int, np.integer)) and not isinstance(out_size, bool):
        out_h = out_w = _size(out_size, "out_size")
    elif isinstance(out_size, Sequence) and len(out_size) == 2:
        out_h, out_w = (_size(v, "out_size") for v in out_size)
    else:
        raise ValueError(f"out_size must be an int or (H, W), got {out_size!r}")
    scores = np.ascontiguousarray(patch_scores)
    batched = scores.reshape((-1, *scores.shape[-2:]))
    result = _native.anomaly_map(batched, out_h, out_w, _sigma(sigma), _threads(threads))
    return result if scores.ndim == 3 else result[0]


# ---- numeric kernels: knn, coreset, scoring -------------------------------------------
